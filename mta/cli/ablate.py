"""Run an ablation sweep: every (variant, seed) of a sweep file as its own training workdir.

    mta ablate --sweep configs/sweeps/pre_vs_post.yaml --root runs/pre_vs_post
    mta ablate --sweep SWEEP --root ROOT --dry-run [--json]   # the plan, no runs
    mta ablate --sweep SWEEP --root ROOT --report             # tables and plots only

(`python scripts/ablate.py ...` in a checkout is the same command.)

Runs go to ROOT/<variant>/seed<k> (each a `python -m mta.cli.train` process, its output in
train.log there). Finished runs are
skipped, interrupted ones resumed, so relaunching the same command continues a sweep. At the end
(and with --report) ROOT gets report.md, report.csv, loss_curves.png and final_metric.png. The
sweep file format is described in mta/ablate/spec.py.

Exit codes: 0 every run finished; 1 some run failed (its exit code and last log line are
printed); 2 a user error in the sweep file or a config (one line, nothing launched); 130 after
Ctrl-C, 143 after SIGTERM (the running runs saved a checkpoint; relaunch to continue).
"""

import json
import shlex
import sys

from mta.ablate import SweepError, execute, load_sweep, plan, status, write_report
from mta.ablate.runner import prepare_data
from mta.cli import train
from mta.cli.args import command_parser, positive_int, user_error


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    parser.add_argument("--sweep", required=True, help="sweep YAML file")
    parser.add_argument("--root", required=True, help="directory of the sweep's workdirs")
    parser.add_argument("--parallel", type=positive_int, default=1, help="runs at once (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    parser.add_argument("--report", action="store_true", help="only write the report")
    return parser.parse_args(argv)


def plan_rows(runs) -> list[dict]:
    """The plan as JSON-able rows."""
    return [
        {
            "variant": run.variant.name,
            "seed": run.seed,
            "status": status(run),
            "steps": run.cfg.train.steps,
            "workdir": str(run.workdir),
            "command": list(run.command),
        }
        for run in runs
    ]


def print_plan(runs, as_json: bool) -> None:
    """A table of the runs and their exact command lines (or one JSON object)."""
    rows = plan_rows(runs)
    if as_json:
        print(json.dumps({"runs": rows}, indent=1))
        return
    width = max(len(r["variant"]) for r in rows)
    print(f"{'variant':<{width}}  seed  status  steps  workdir")
    for r in rows:
        line = f"{r['variant']:<{width}}  {r['seed']:>4}  {r['status']:<6}  {r['steps']:>5}"
        print(f"{line}  {r['workdir']}")
    todo = [r for r in rows if r["status"] != "done"]
    print(f"\n{len(todo)} of {len(rows)} runs to launch:")
    for r in todo:
        print(shlex.join(r["command"]))


def run_sweep(runs, parallel: int) -> int:
    """Launches the unfinished runs; the sweep's exit code."""
    todo = [run for run in runs if status(run) != "done"]
    print(f"ablate: {len(runs) - len(todo)} of {len(runs)} runs already finished", file=sys.stderr)
    if todo and parallel > 1:
        prepare_data(todo)
    codes, signum = execute(todo, parallel)
    if signum is not None:
        return 128 + signum
    failed = [label for label, code in codes.items() if code != 0]
    if failed:
        print(f"ablate: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    try:
        sweep = load_sweep(args.sweep)
        runs = plan(sweep, args.root, check=train.load)  # validated as `mta train` does
    except SweepError as err:
        return user_error(err)
    if args.dry_run:
        print_plan(runs, args.json)
        return 0
    code = 0 if args.report else run_sweep(runs, args.parallel)
    table, paths = write_report(sweep, runs, args.root)
    print(table)
    print(f"ablate: report in {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
