"""lm-eval tasks on one checkpoint through lm-eval's own evaluator, written beside the suite's
results (what `mta eval --harness TASKS` runs).

    manager = task_manager(["hellaswag"], include=None)    # ConfigError for an unknown task
    results = evaluate(lm, ["hellaswag"], manager, limit=100)
    paths = write_results(Path("runs/x/eval/2000/harness"), meta, results)

WORKDIR/eval/NAME/harness/ gets results.json (lm-eval's results, group results, task configs,
versions, n-shot and sample counts, with our meta: workdir, step, tasks, model args),
results.md (lm-eval's table) and samples/<task>.jsonl (one line per document: its arguments,
responses, filtered responses and metrics). Every file is written beside its name and renamed
into place, like the suite's.
"""

import json
from pathlib import Path

from mta.config import ConfigError
from mta.eval.report import write_text

SAMPLE_KEYS = ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter")


def task_manager(tasks: list[str], include: list[str] | None = None):
    """An lm-eval TaskManager that knows every task in `tasks` (names or glob patterns): the
    include directories alone when they hold them all (indexing lm-eval's ~15k built-in tasks
    takes seconds), else those and the built-ins. ConfigError naming unknown tasks or a missing
    include directory."""
    from lm_eval.tasks import TaskManager

    include = list(include or [])
    for directory in include:
        if not Path(directory).is_dir():
            raise ConfigError(f"--harness-include {directory}: no such directory of task YAMLs")
    if include:
        manager = TaskManager(include_path=include, include_defaults=False)
        if all(manager.match_tasks([task]) for task in tasks):
            return manager
    manager = TaskManager(include_path=include or None)
    unknown = [task for task in tasks if not manager.match_tasks([task])]
    if unknown:
        where = f" in lm-eval or {', '.join(include)}" if include else " in lm-eval"
        raise ConfigError(
            f"unknown lm-eval task {', '.join(map(repr, unknown))}{where} (list them with "
            "`lm_eval ls tasks`; tasks of your own: --harness-include DIR of task YAMLs)"
        )
    return manager


def evaluate(lm, tasks: list[str], manager, limit=None, num_fewshot=None) -> dict:
    """lm-eval's simple_evaluate of the model `lm` on `tasks` (samples kept)."""
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=True,
    )


def summary(results: dict) -> dict[str, float]:
    """{"task/metric": value} of every numeric, non-stderr result (filter "none" dropped)."""
    out = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or isinstance(value, str | bool):
                continue
            name = metric if filter_name == "none" else f"{metric},{filter_name}"
            if isinstance(value, int | float) or hasattr(value, "item"):
                out[f"{task}/{name}"] = float(value)
    return out


def write_results(out_dir: Path, meta: dict, results: dict) -> list[Path]:
    """Writes results.json, results.md and samples/<task>.jsonl into out_dir; their paths."""
    from lm_eval.utils import handle_non_serializable, make_table

    def dumps(value, indent=None) -> str:
        return json.dumps(value, indent=indent, default=handle_non_serializable)

    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    kept = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
            "higher_is_better", "n-samples", "lm_eval_version")  # fmt: skip
    document = {**meta, "summary": summary(results)}
    document.update({key: results[key] for key in kept if key in results})
    paths = [out_dir / "results.json", out_dir / "results.md"]
    write_text(paths[0], dumps(document, indent=1) + "\n")
    table = make_table(results) + (
        "\n" + make_table(results, "groups") if "groups" in results else ""
    )
    lines = [f"# lm-eval: {meta.get('workdir', '')} step {meta.get('step', '')}\n"]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    write_text(paths[1], "\n".join(lines) + "\n\n" + table)
    for task, samples in results.get("samples", {}).items():
        path = out_dir / "samples" / f"{task}.jsonl"
        rows = [{k: s[k] for k in (*SAMPLE_KEYS, *s.get("metrics", [])) if k in s} for s in samples]
        write_text(path, "".join(dumps(row) + "\n" for row in rows))
        paths.append(path)
    return paths
