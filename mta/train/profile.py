"""A jax.profiler trace of a window of training steps (log.profile_steps = [A, B], set by
`mta train --profile-steps A:B`): steps A to B inclusive, in metrics.jsonl's numbering.

The trace goes to WORKDIR/profile/plugins/profile/<time>/: an .xplane.pb for TensorBoard's
profile plugin (or XProf) and a perfetto_trace.json.gz for https://ui.perfetto.dev (recipe in
docs/scaling.md).
"""

from pathlib import Path

import jax


class ProfileWindow:
    """Starts a trace before step `first` is dispatched and stops it once step `last` is done."""

    def __init__(self, steps: list[int], workdir: Path):
        self.window = tuple(steps) or None
        self.directory = Path(workdir) / "profile"
        self.active = False

    def before(self, step: int) -> None:
        """Called before dispatching the update that makes `step`."""
        if self.window and step == self.window[0] and not self.active:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self.active = True

    def after(self, step: int, state) -> None:
        """Called after dispatching it: at `last`, waits for the device and writes the trace."""
        if self.active and step >= self.window[1]:
            self.close(state)

    def close(self, state=None) -> None:
        if self.active:
            if state is not None:
                jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
