"""One run per workdir: WORKDIR/run.lock, taken when training starts and removed when it ends.

The lock file says who holds it (host, pid, start time). A second launch on the same workdir
refuses with one line naming the holder (ConfigError: exit code 2). A lock whose holder no
longer exists on this host (killed, crashed) is taken over with a warning; a lock held from
another host is never taken over (its process cannot be checked from here): the message says
to remove the file if that run is gone. Only process 0 of a multi-process run takes it.

    with WorkdirLock(workdir):
        train(cfg, workdir)
"""

import datetime
import json
import os
import socket
import sys
from pathlib import Path

from mta.config import ConfigError

NAME = "run.lock"


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} "
        f"(started {holder.get('started', '?')})"
    )


class WorkdirLock:
    """Holds WORKDIR/run.lock while active (a no-op when `enabled` is false)."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.path = Path(workdir) / NAME
        self.enabled = enabled
        self.held = False

    def acquire(self) -> None:
        """Takes the lock; ConfigError naming the holder if a live run has it."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        # Written whole beside it, then hard-linked into place: the link fails if the lock
        # exists, and a lock file is never seen half-written.
        partial = self.path.with_name(f"{NAME}.{me['host']}.{me['pid']}")
        partial.write_text(json.dumps(me))
        try:
            for _ in range(3):  # a stale lock removed by a racing launch: try again
                try:
                    os.link(partial, self.path)
                except FileExistsError:
                    self._check_holder(me["host"])
                    continue
                self.held = True
                return
        finally:
            partial.unlink()
        raise ConfigError(f"could not take the lock {self.path}; another launch is racing for it")

    def _check_holder(self, host: str) -> None:
        """Raises ConfigError if the lock's holder may be alive; else removes the stale lock."""
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError):
            holder = {}
        if holder.get("host") != host or not isinstance(holder.get("pid"), int):
            raise ConfigError(
                f"{self.path.parent} is in use by {_describe(holder)}; if that run is gone, "
                f"remove {self.path}"
            )
        if _alive(holder["pid"]):
            raise ConfigError(
                f"{self.path.parent} is in use by {_describe(holder)}; wait for it to end or "
                "use another workdir"
            )
        print(
            f"warning: taking over the stale lock {self.path} of {_describe(holder)}, which no "
            "longer runs",
            file=sys.stderr,
        )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Removes the lock file if this process holds it (safe to call twice)."""
        if self.held:
            self.held = False
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
