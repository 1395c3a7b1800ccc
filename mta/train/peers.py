"""Peers that die or hang: a multi-process run stops instead of waiting in a collective forever.

Every process publishes a heartbeat (a counter, its host and pid) to the JAX distributed
service's key-value store every `timeout / 5` seconds from a daemon thread, and reads everyone
else's. A peer whose heartbeat has not changed for `timeout` seconds (killed, out of memory,
SIGSTOPped, its host gone), a coordinator (process 0) that has not answered for that long, or a
peer that ended with an error makes every other process print one line naming it and the newest
checkpoint and exit with code 5 at once, from a second thread that never waits on the network
(so a main thread blocked in a collective does not matter). Relaunching every process resumes
from that checkpoint.

The JAX service's own heartbeat (which aborts with a long C++ log) is set well beyond
`timeout` by `jax_heartbeat_seconds`, so this one line is what the user sees.
"""

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mta.train.faults import EXIT_PEER_LOST

KEY = "mta/heartbeat/"


def jax_heartbeat_seconds(timeout: float) -> int:
    """The distributed service's heartbeat timeout for jax.distributed.initialize: JAX's
    default (100 s), or longer so that the watchdog's `timeout` always comes first."""
    return max(100, int(2 * timeout + 30))


def last_checkpoint(workdir: Path) -> str:
    """The newest complete checkpoint of the workdir, or a sentence saying there is none."""
    directory = Path(workdir).absolute() / "checkpoints"
    steps = sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())
    return str(directory / str(steps[-1])) if steps else f"none yet in {directory}"


def _end(peer: dict) -> str | None:
    """How a peer ended ("done", "failed"), or None while it runs."""
    return json.loads(peer["value"])["end"] if peer["value"] else None


class PeerWatchdog:
    """Publishes this process's heartbeat and exits the process when a peer goes silent.

    `cleanup` runs just before the exit (e.g. releasing the workdir lock). Call `stop()` when
    the run ends normally: peers then know this process finished rather than died.
    """

    def __init__(self, timeout: float, workdir: str | Path, cleanup: Callable[[], None] = None):
        import jax
        from jax._src import distributed

        self.client = distributed.global_state.client
        self.me, self.count = jax.process_index(), jax.process_count()
        self.timeout = float(timeout)
        self.interval = max(0.2, min(self.timeout / 5, 10.0))
        self.workdir = Path(workdir)
        self.cleanup = cleanup
        now = time.monotonic()
        self.peers = {p: {"changed": now, "value": None} for p in range(self.count) if p != self.me}
        self.contact = now  # when the store last answered
        self.beats = 0
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._beat, name="mta-heartbeat", daemon=True),
            threading.Thread(target=self._judge, name="mta-peer-watchdog", daemon=True),
        ]

    def start(self) -> "PeerWatchdog":
        for thread in self.threads:
            thread.start()
        return self

    def _publish(self, end: str | None = None) -> None:
        self.beats += 1
        value = {"beat": self.beats, "host": socket.gethostname(), "pid": os.getpid(), "end": end}
        self.client.key_value_set(f"{KEY}{self.me}", json.dumps(value), True)

    def _beat(self) -> None:
        while not self.stopped.is_set():
            try:
                self._publish()
                entries = self.client.key_value_dir_get(KEY)
            except Exception:  # the coordinator is gone: the judge tells when it is too long
                entries = None
            now = time.monotonic()
            if entries is not None:
                self.contact = now
                for key, value in entries:
                    peer = self.peers.get(int(key.rsplit("/", 1)[-1]))
                    if peer is not None and peer["value"] != value:
                        peer.update(value=value, changed=now)
            self.stopped.wait(self.interval)

    def _judge(self) -> None:
        while not self.stopped.wait(self.interval / 2):
            now = time.monotonic()
            if now - self.contact > self.timeout:
                self._exit(0, f"has not answered for {self.timeout:g} s (train.peer_timeout)")
            for process, peer in self.peers.items():
                end = _end(peer)
                if end == "failed":
                    self._exit(process, "stopped with an error (see its output)")
                if end is None and now - peer["changed"] > self.timeout:
                    self._exit(
                        process,
                        f"has sent no heartbeat for {self.timeout:g} s (train.peer_timeout)",
                    )

    def _exit(self, process: int, what: str) -> None:
        peer = self.peers.get(process, {"value": None})
        info = json.loads(peer["value"]) if peer["value"] else {}
        where = f"host {info.get('host', '?')}, pid {info.get('pid', '?')}"
        print(
            f"error: process {process} ({where}) {what}; last checkpoint: "
            f"{last_checkpoint(self.workdir)}; relaunch every process to resume from it",
            file=sys.stderr,
            flush=True,
        )
        if self.cleanup is not None:
            self.cleanup()
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST)

    def settle(self) -> None:
        """After an error that a lost peer may have caused (a failed collective): waits until
        every peer has beaten since (they live: the error is this process's own) or until the
        silent one is noticed (the process then exits here, naming it)."""
        since = time.monotonic()
        fresh = since + 1.5 * self.interval  # later than a dead peer's last beat can be read
        while time.monotonic() - since < self.timeout + 2 * self.interval:
            if all(peer["changed"] > fresh or _end(peer) for peer in self.peers.values()):
                return
            self.stopped.wait(self.interval / 4)

    def stop(self, failed: bool = False) -> None:
        """Tells the peers that this process finished (or `failed`: they stop too, at once);
        stops the threads."""
        self.stopped.set()
        try:
            self._publish("failed" if failed else "done")
        except Exception:
            pass
