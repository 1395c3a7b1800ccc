"""Evaluate checkpoints on a long-context suite (block task, NIAH, bAbI, MQAR, variable tracking,
perplexity by position, log-likelihood NIAH).

    mta eval --workdir runs/x --suite configs/eval/long_context.yaml
    mta eval --workdir runs/x --step 2000 --suite configs/eval/tiny.yaml --data-dir d
    mta eval --workdir runs/x --suite configs/eval/long_context.yaml --rope-theta 5e5
    mta eval --workdir runs/base --workdir runs/mta --suite configs/eval/tiny.yaml

(`python scripts/eval.py ...` in a checkout is the same command.)

Each workdir's results go to WORKDIR/eval/NAME/ (NAME: --out-name, else the step, plus
_rope{theta} with --rope-theta): results.json (every aggregate number and a summary),
results.md, samples/<task>.jsonl (one line per example) and PNG heatmaps (NIAH length x depth,
bAbI length x task). With several workdirs, comparison.md and comparison.png go to
--compare-dir (default: FIRST_WORKDIR/eval/compare).

Exit codes: 0 success; 2 user error (one line: missing workdir or checkpoint, bad step, bad
suite file, unknown task or key).
"""

import json
import sys
from pathlib import Path

from mta.cli.args import command_parser, user_error
from mta.config import ConfigError
from mta.eval.suite import SuiteError, load_suite


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    parser.add_argument(
        "--workdir", action="append", required=True, help="training workdir (repeat to compare)"
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--suite", required=True, help="suite YAML, e.g. configs/eval/tiny.yaml")
    parser.add_argument(
        "--rope-theta", type=float, help="override model.rope_theta (length extrapolation)"
    )
    parser.add_argument("--out-name", help="name of the output dir under WORKDIR/eval/")
    parser.add_argument(
        "--data-dir", help="where the suite's datasets are built (overrides the suite's data_dir)"
    )
    parser.add_argument("--compare-dir", help="where the comparison of several workdirs goes")
    parser.add_argument(
        "--tokenizer",
        help="the tokenizer file, if it moved (it must be the one the workdir was trained with)",
    )
    args = parser.parse_args(argv)
    if args.rope_theta is not None and not args.rope_theta > 0:
        parser.error(f"--rope-theta must be > 0, got {args.rope_theta}")
    if args.out_name is not None and (not args.out_name or "/" in args.out_name):
        parser.error(f"--out-name must be a non-empty name without '/', got {args.out_name!r}")
    return args


def out_name(args, step: int) -> str:
    if args.out_name:
        return args.out_name
    return f"{step}_rope{args.rope_theta:g}" if args.rope_theta is not None else str(step)


def data_dir(args, suite, first_workdir: Path) -> str:
    """--data-dir, else the suite's data_dir, else the first workdir's data.data_dir."""
    import os

    import yaml

    if args.data_dir or suite.data_dir:
        return os.path.expanduser(args.data_dir or suite.data_dir)
    saved = yaml.safe_load((first_workdir / "config.yaml").read_text())
    return os.path.expanduser(saved.get("data", {}).get("data_dir", "~/tensorflow_datasets"))


def evaluate(args, suite, workdir: Path, step: int, where: str) -> dict:
    """Restores, runs the suite, writes WORKDIR/eval/NAME; returns the results.json content."""
    from mta.eval import report, restore, tasks
    from mta.eval.runner import Runner

    loaded = restore.load_model(workdir, step, args.rope_theta, args.tokenizer)
    runner = Runner(loaded.graphdef, loaded.params, loaded.mesh, suite.batch_size, loaded.tok)
    rows, samples = tasks.run_suite(runner, suite, where)
    meta = {
        "workdir": str(workdir),
        "step": step,
        "suite": suite.name,
        "suite_file": str(args.suite),
        "rope_theta": loaded.cfg.model.rope_theta,
        "rope_theta_override": args.rope_theta is not None,
        "data_dir": where,
    }
    out_dir = workdir / "eval" / out_name(args, step)
    report.write_run(out_dir, meta, rows, samples)
    results = json.loads((out_dir / "results.json").read_text())
    summary = ", ".join(f"{k}={v:.4g}" for k, v in results["summary"].items() if v is not None)
    print(f"{workdir} step {step}: {summary}; results in {out_dir}", file=sys.stderr)
    return results


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    try:
        suite = load_suite(args.suite)
        from mta.eval import report, restore

        workdirs = [Path(w) for w in args.workdir]
        steps = [restore.find_step(w, args.step) for w in workdirs]  # all checked before compute
        for workdir in workdirs:
            restore.workdir_tokenizer(workdir, args.tokenizer)
        where = data_dir(args, suite, workdirs[0])
        runs = [evaluate(args, suite, w, s, where) for w, s in zip(workdirs, steps, strict=True)]
        if len(runs) > 1:
            compare = Path(args.compare_dir or workdirs[0] / "eval" / "compare")
            report.write_comparison(compare, runs)
            print(f"comparison in {compare}", file=sys.stderr)
        print(json.dumps({r["workdir"]: r["summary"] for r in runs}))
        return 0
    except (ConfigError, SuiteError) as err:
        return user_error(err)


if __name__ == "__main__":
    sys.exit(main())
