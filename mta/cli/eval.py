"""Evaluate checkpoints on a long-context suite (block task, NIAH, bAbI, MQAR, variable tracking,
perplexity by position, log-likelihood NIAH) and/or lm-evaluation-harness tasks.

    mta eval --workdir runs/x --suite configs/eval/long_context.yaml
    mta eval --workdir runs/x --harness hellaswag,arc_easy --harness-limit 200
    mta eval --workdir runs/x --harness my_task --harness-include path/to/task_yamls
    mta eval --workdir runs/x --step 2000 --suite configs/eval/tiny.yaml --data-dir d
    mta eval --workdir runs/x --suite configs/eval/long_context.yaml --rope-theta 5e5
    mta eval --workdir runs/base --workdir runs/mta --suite configs/eval/tiny.yaml

(`python scripts/eval.py ...` in a checkout is the same command.)

Each workdir's results go to WORKDIR/eval/NAME/ (NAME: --out-name, else the step, plus
_rope{theta} with --rope-theta): results.json (every aggregate number and a summary),
results.md, samples/<task>.jsonl (one line per example) and PNG heatmaps (NIAH length x depth,
bAbI length x task). With several workdirs, comparison.md and comparison.png go to
--compare-dir (default: FIRST_WORKDIR/eval/compare).

--harness runs lm-eval tasks (comma-separated names or globs; lm-eval's own or YAMLs in
--harness-include directories) through lm-eval's evaluator with the checkpoint as lm-eval's
`mta` model (mta/harness/); results go to WORKDIR/eval/NAME/harness/: results.json, results.md
and samples/<task>.jsonl. It needs lm-eval (the [harness] or [dev] extra).

Exit codes: 0 success; 2 user error (one line: missing workdir or checkpoint, bad step, bad
suite file, unknown task or key, unknown lm-eval task, lm-eval not installed).
"""

import contextlib
import json
import sys
from pathlib import Path

from mta.cli.args import command_parser, non_negative_int, positive_int, user_error
from mta.config import ConfigError
from mta.eval.suite import SuiteError, load_suite
from mta.harness.errors import ModelArgError


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    parser.add_argument(
        "--workdir", action="append", required=True, help="training workdir (repeat to compare)"
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--suite", help="suite YAML, e.g. configs/eval/tiny.yaml")
    harness = parser.add_argument_group("lm-evaluation-harness")
    harness.add_argument("--harness", metavar="TASKS", help="lm-eval tasks, comma-separated")
    harness.add_argument(
        "--harness-include", action="append", metavar="DIR", help="a dir of task YAMLs (repeat)"
    )
    harness.add_argument("--harness-limit", type=positive_int, help="documents per task")
    harness.add_argument("--harness-fewshot", type=non_negative_int, help="few-shot examples")
    harness.add_argument(
        "--harness-batch-size", type=positive_int, default=8, help="rows per call (default 8)"
    )
    harness.add_argument(
        "--harness-max-length", type=positive_int, help="context tokens (default data.seq_len)"
    )
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
    if args.suite is None and args.harness is None:
        parser.error("give --suite SUITE_YAML and/or --harness TASKS")
    if args.harness is not None:
        args.harness = [task.strip() for task in args.harness.split(",") if task.strip()]
        if not args.harness:
            parser.error("--harness needs at least one task name (comma-separated)")
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


def evaluate_harness(args, manager, workdir: Path, step: int) -> dict:
    """Runs the --harness tasks on one checkpoint, writes WORKDIR/eval/NAME/harness; returns
    {"harness/task/metric": value}."""
    from mta.harness import run
    from mta.harness.model import HarnessLM

    model_args = {"batch_size": args.harness_batch_size, "max_length": args.harness_max_length}
    lm = HarnessLM(
        workdir, step, rope_theta=args.rope_theta, tokenizer=args.tokenizer, **model_args
    )
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the final JSON
        results = run.evaluate(lm, args.harness, manager, args.harness_limit, args.harness_fewshot)
    meta = {
        "workdir": str(workdir),
        "step": step,
        "tasks": args.harness,
        "include": args.harness_include or [],
        "limit": args.harness_limit,
        "num_fewshot": args.harness_fewshot,
        "batch_size": lm.batch_size,
        "max_length": lm.max_length,
        "rope_theta_override": args.rope_theta,
    }
    out_dir = workdir / "eval" / out_name(args, step) / "harness"
    run.write_results(out_dir, meta, results)
    summary = {f"harness/{k}": v for k, v in run.summary(results).items()}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in summary.items())
    print(f"{workdir} step {step}: {shown}; lm-eval results in {out_dir}", file=sys.stderr)
    return summary


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    try:
        suite = load_suite(args.suite) if args.suite else None
        from mta.eval import report, restore

        workdirs = [Path(w) for w in args.workdir]
        steps = [restore.find_step(w, args.step) for w in workdirs]  # all checked before compute
        for workdir in workdirs:
            restore.workdir_tokenizer(workdir, args.tokenizer)
        manager = None
        if args.harness:
            from mta.harness import require_lm_eval

            require_lm_eval()
            from mta.harness.run import task_manager

            manager = task_manager(args.harness, args.harness_include)
        summaries = {str(w): {} for w in workdirs}
        if suite is not None:
            where = data_dir(args, suite, workdirs[0])
            pairs = zip(workdirs, steps, strict=True)
            runs = [evaluate(args, suite, w, s, where) for w, s in pairs]
            if len(runs) > 1:
                compare = Path(args.compare_dir or workdirs[0] / "eval" / "compare")
                report.write_comparison(compare, runs)
                print(f"comparison in {compare}", file=sys.stderr)
            for run in runs:
                summaries[run["workdir"]].update(run["summary"])
        if manager is not None:
            for workdir, step in zip(workdirs, steps, strict=True):
                summaries[str(workdir)].update(evaluate_harness(args, manager, workdir, step))
        print(json.dumps(summaries))
        return 0
    except (ConfigError, SuiteError, ModelArgError) as err:
        return user_error(err)


if __name__ == "__main__":
    sys.exit(main())
