"""When the training loop stops: a signal (SIGTERM/SIGINT) to any process, or a step whose loss
or gradients are NaN/Inf; decided the same on every process without a host round trip per step.

    votes = Votes(mesh)                     # several processes only
    state, metrics = step_fn(state, batch, votes(signalled))
    checks.push(step, state["params"], metrics)   # reads the step before (train.run_ahead)
    if checks.stopping(signalled): ...            # the same answer on every process

Several processes: each hands its own signal flag to the train step as votes, one per device of
the mesh, and the step returns metrics["stop"] (any vote set) and metrics["finite"], both
replicated. Every process reads its own copy of them, so no collective runs on the host: a host
collective started while a step's own collectives are in flight deadlocked gloo on CPU, and
waiting for the step before one (as the loop once did) kept the host from running ahead. Which
steps' values have been read at each point of the loop is the same on every process (they
follow the step count), so all stop at the same step: the one after the step whose votes
carried the signal with train.run_ahead (that step was dispatched before the read), that step
itself without. One process decides on its own flag at once, as it always did.
"""

import jax
import numpy as np

from mta.config import Config
from mta.train.faults import NonFiniteError
from mta.train.mesh import vote_sharding


class Votes:
    """`votes(flag)`: this process's stop flag as the train step's `votes` input, a global
    [num_devices] int32 array (vote_sharding: one element per device, this process's devices
    set to `flag`). The two possible arrays are made once and reused (they are not donated)."""

    def __init__(self, mesh):
        self.sharding = vote_sharding(mesh)
        self.shape = (mesh.size,)
        self.made = {}

    def __call__(self, flag: bool) -> jax.Array:
        flag = bool(flag)
        if flag not in self.made:
            values = np.full(self.shape, flag, np.int32)
            self.made[flag] = jax.make_array_from_callback(
                self.shape, self.sharding, lambda index: values[index]
            )
        return self.made[flag]


class StepChecks:
    """Reads each step's metrics["finite"] (and, with `votes`, metrics["stop"]). With
    train.run_ahead a step is read when the next one has been dispatched (`push`), or at once
    by `flush` (before anything of it is written); without, at once. A non-finite step raises
    NonFiniteError, unless train.skip_nonfinite."""

    def __init__(self, cfg: Config, votes: bool):
        self.enabled = not cfg.train.skip_nonfinite
        self.lag = cfg.train.run_ahead
        self.votes = votes
        self.pending = None
        self.voted_stop = False

    def push(self, step: int, params: dict, metrics: dict) -> None:
        """Step `step` was dispatched: reads the step before it (or this one, without lag)."""
        previous, self.pending = self.pending, (step, params, metrics)
        if previous is not None:
            self._check(*previous)
        if not self.lag:
            self.flush()

    def flush(self) -> None:
        """Reads the step pushed last, if it was not read yet."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._check(*pending)

    def stopping(self, signalled: bool) -> bool:
        """Whether the loop stops after the step pushed last: with votes, whether a step read so
        far had a vote set (the same on every process); without, `signalled` (this process's
        own flag)."""
        return self.voted_stop if self.votes else signalled

    def _check(self, step: int, params: dict, metrics: dict) -> None:
        if self.enabled and not bool(metrics["finite"]):
            raise NonFiniteError(_nonfinite_message(step, params, metrics["finite_by_param"]))
        if self.votes and bool(metrics["stop"]):
            self.voted_stop = True


def _nonfinite_message(step: int, params: dict, finite_by_param) -> str:
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    bad = [path for path, ok in zip(paths, np.asarray(finite_by_param), strict=True) if not ok]
    where = f"; first non-finite gradient: params{bad[0]}" if bad else " (gradients finite)"
    return f"loss or gradients are NaN/Inf at step {step}{where}; not checkpointed"
