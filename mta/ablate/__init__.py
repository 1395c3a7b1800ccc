"""Ablation sweeps: a sweep file -> a grid of ordinary training runs -> a Table-5-style report.

    sweep = load_sweep("configs/sweeps/pre_vs_post.yaml")   # spec.py: parse, validate, expand
    runs = plan(sweep, "runs/ablate")                       # plan.py: one Run per (variant, seed)
    execute([r for r in runs if status(r) != "done"], 2)   # runner.py: `mta train` subprocesses
    write_report(sweep, runs, "runs/ablate")                # report.py: markdown, CSV, plots

`mta ablate` (mta/cli/ablate.py, or `python scripts/ablate.py`) is the command line over these.
"""

from mta.ablate.plan import Run, plan, status
from mta.ablate.report import write_report
from mta.ablate.runner import execute
from mta.ablate.spec import Sweep, SweepError, Variant, expand_grid, load_sweep, variant_name

__all__ = [
    "Run",
    "Sweep",
    "SweepError",
    "Variant",
    "execute",
    "expand_grid",
    "load_sweep",
    "plan",
    "status",
    "variant_name",
    "write_report",
]
