"""What can go wrong in a long run, as exceptions the CLI turns into exit codes, and the signal
handling that makes pre-emption save a checkpoint instead of losing work."""

import signal
import sys

EXIT_USER_ERROR = 2  # bad config, nothing restorable, refused config change
EXIT_NONFINITE = 3  # NaN or Inf in the loss or gradients
EXIT_SAVE_FAILED = 4  # a checkpoint could not be written (disk full, unwritable workdir)
EXIT_PEER_LOST = 5  # another process of a multi-process run died or hangs (mta/train/peers.py)
EXIT_SIGINT = 130


class NonFiniteError(RuntimeError):
    """The loss or gradients became NaN/Inf; the update was not checkpointed."""


class CheckpointWriteError(RuntimeError):
    """Saving a checkpoint failed; the earlier checkpoints are untouched."""


class StopRequest:
    """Catches SIGTERM and SIGINT while active: the loop finishes its step, saves and exits.

    A second SIGINT raises KeyboardInterrupt at once (for a user who really wants out).
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"received {signal.Signals(signum).name}: saving a checkpoint after this step",
            file=sys.stderr,
        )

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def signal_name(self) -> str:
        """SIGTERM or SIGINT, or 'another process' (it stops because a peer was signalled)."""
        return signal.Signals(self.signum).name if self.signum else "another process"
