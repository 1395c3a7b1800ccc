"""Writing suite results: JSON, per-sample JSONL, markdown tables and PNG heatmaps, and the
comparison of several runs.

    paths = write_run(out_dir, meta, rows, samples)     # one checkpoint's results
    paths = write_comparison(out_dir, [results, ...])   # several runs' results.json contents

`rows` and `samples` map a task to lists of flat dicts (see mta.eval.tasks): a row's keys are its
grid coordinates (ints and strings) followed by its metrics (floats) and `examples`.

Every file is written beside its name and renamed into place, so evaluations of the same step
running at once each leave whole files (the last one's) and a reader never sees half a file.
"""

import contextlib
import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mta.eval.suite import PRIMARY


@contextlib.contextmanager
def _replacing(path: Path):
    """Yields a temporary name beside `path`; renames it to `path` when the block succeeds."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Writes text to a temporary file beside path and renames it into place (atomic)."""
    with _replacing(path) as partial:
        partial.write_text(text)


def _save_figure(fig, path: Path) -> None:
    with _replacing(path) as partial:
        fig.savefig(partial, dpi=100, format="png")


HEATMAPS = {  # task -> (grouping keys, y key, x key): one heatmap per group
    "niah": (("num_needles", "num_asked"), "length", "depth"),
    "niah_loglik": (("num_needles", "num_asked"), "length", "depth"),
    "babi": ((), "length", "qa"),
}
COORDS = {  # the grid coordinates of each task's rows, in table order
    "block": ("n", "l", "variant", "length"),
    "niah": ("num_needles", "num_asked", "depth", "length"),
    "niah_loglik": ("num_needles", "num_asked", "depth", "length"),
    "babi": ("qa", "length"),
    "mqar": ("num_pairs", "length"),
    "vartrack": ("num_chains", "num_hops", "length"),
    "perplexity": ("seq_len", "bucket"),
}


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary(rows: dict[str, list[dict]]) -> dict[str, float]:
    """{"task/metric": value}: the mean of each task's primary metric over its grid points
    (perplexity: the overall perplexity, i.e. the "all" bucket)."""
    out = {}
    for task, task_rows in rows.items():
        key = PRIMARY[task]
        if task == "perplexity":
            task_rows = [r for r in task_rows if r.get("bucket") == "all"]
        values = [r[key] for r in task_rows if r.get(key) is not None and math.isfinite(r[key])]
        out[f"{task}/{key}"] = sum(values) / len(values) if values else math.nan
    return out


def _format(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(header: Sequence[str], body: Sequence[Sequence]) -> str:
    """A GitHub markdown table; floats with 4 significant digits."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(v) for v in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _task_table(task: str, task_rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in task_rows for k in r))
    return markdown_table(keys, [[r.get(k) for k in keys] for r in task_rows])


def _grid(rows: list[dict], y_key: str, x_key: str, value_key: str):
    """(ys, xs, matrix [len(ys)][len(xs)] of the mean value per cell, NaN where missing)."""
    ys = sorted({r[y_key] for r in rows})
    xs = sorted({r[x_key] for r in rows})
    cells: dict = {}
    for r in rows:
        if r.get(value_key) is not None:
            cells.setdefault((r[y_key], r[x_key]), []).append(r[value_key])
    matrix = [[math.nan] * len(xs) for _ in ys]
    for (y, x), values in cells.items():
        matrix[ys.index(y)][xs.index(x)] = sum(values) / len(values)
    return ys, xs, matrix


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(rows: list[dict], y_key: str, x_key: str, value_key: str, title: str, path: Path):
    """Saves a PNG heatmap of value_key (a fraction in [0, 1]) over y_key x x_key."""
    plt = _pyplot()
    ys, xs, matrix = _grid(rows, y_key, x_key, value_key)
    fig, ax = plt.subplots(
        figsize=(max(5.0, 1.6 + 0.9 * len(xs)), 2.0 + 0.5 * len(ys)), layout="tight"
    )
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="lower")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, _format(value), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=value_key)
    _save_figure(fig, path)
    plt.close(fig)


def write_heatmaps(out_dir: Path, rows: dict[str, list[dict]], label: str) -> list[Path]:
    """The NIAH (length x depth, one per needle setting) and bAbI (length x task) heatmaps."""
    paths = []
    for task, (group_keys, y_key, x_key) in HEATMAPS.items():
        groups: dict = {}
        for r in rows.get(task, []):
            groups.setdefault(tuple(r[k] for k in group_keys), []).append(r)
        for group, group_rows in groups.items():
            tags = zip(("n", "r"), group, strict=False)  # as in the TFDS config names
            suffix = "".join(f"_{tag}{value}" for tag, value in tags)
            path = out_dir / f"{task}{suffix}.png"
            what = ", ".join(f"{k}={v}" for k, v in zip(group_keys, group, strict=True))
            title = f"{task}: {PRIMARY[task]}{(' (' + what + ')') if what else ''}\n{label}"
            heatmap(group_rows, y_key, x_key, PRIMARY[task], title, path)
            paths.append(path)
    return paths


def write_run(
    out_dir: str | Path, meta: dict, rows: dict[str, list[dict]], samples: dict[str, list[dict]]
) -> list[Path]:
    """Writes results.json (meta, summary, rows), samples/<task>.jsonl, results.md and the
    heatmaps into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    results = {**meta, "summary": summary(rows), "results": rows}
    paths = [out_dir / "results.json", out_dir / "results.md"]
    write_text(paths[0], json.dumps(_clean(results), indent=1) + "\n")
    for task, task_samples in samples.items():
        path = out_dir / "samples" / f"{task}.jsonl"
        write_text(path, "".join(json.dumps(_clean(s)) + "\n" for s in task_samples))
        paths.append(path)
    label = f"{meta.get('workdir', '')} step {meta.get('step', '')}"
    text = [f"# Evaluation: {label}\n", _meta_lines(meta), "## Summary\n"]
    text.append(markdown_table(["metric", "value"], list(results["summary"].items())))
    for task, task_rows in rows.items():
        text += [f"\n## {task}\n", _task_table(task, task_rows)]
    write_text(paths[1], "\n".join(text))
    return paths + write_heatmaps(out_dir, rows, label)


def _meta_lines(meta: dict) -> str:
    return "".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n"


def run_label(results: dict) -> str:
    """How a run is named in comparisons: its workdir's name and step."""
    return f"{Path(results['workdir']).name}@{results['step']}"


def write_comparison(out_dir: str | Path, runs: Sequence[dict]) -> list[Path]:
    """Writes comparison.md (each task's primary metric per grid point, one column per run) and
    comparison.png (primary metric against length, or position bucket, one line per run) into
    out_dir. runs: the contents of each run's results.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [run_label(r) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r['workdir']}@{r['step']}" for r in runs]
    tasks = list(dict.fromkeys(t for r in runs for t in r["results"]))
    text = [
        "# Comparison\n",
        "".join(f"- {a}: {r['workdir']}\n" for a, r in zip(labels, runs, strict=True)),
    ]
    text += ["\n## Summary\n"]
    keys = list(dict.fromkeys(k for r in runs for k in r["summary"]))
    text.append(
        markdown_table(
            ["metric", *labels], [[k] + [r["summary"].get(k) for r in runs] for k in keys]
        )
    )
    for task in tasks:
        coords = COORDS[task]
        index = {}
        for column, run in enumerate(runs):
            for row in run["results"].get(task, []):
                point = tuple(row.get(k) for k in coords)
                index.setdefault(point, [None] * len(runs))[column] = row.get(PRIMARY[task])
        body = [list(point) + values for point, values in index.items()]
        text += [f"\n## {task}: {PRIMARY[task]}\n", markdown_table([*coords, *labels], body)]
    md, png = out_dir / "comparison.md", out_dir / "comparison.png"
    write_text(md, "\n".join(text))
    _comparison_plot(png, runs, labels, tasks)
    return [md, png]


def _comparison_plot(path: Path, runs: Sequence[dict], labels: list[str], tasks: list[str]):
    plt = _pyplot()
    cols = min(len(tasks), 4)
    rows = -(-len(tasks) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), layout="tight")
    axes = list(np.ravel(grid))
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    for ax, task in zip(axes, tasks, strict=False):
        x_key = "bucket" if task == "perplexity" else "length"
        metric = PRIMARY[task]
        points = [
            (label, row[x_key], row[metric])
            for label, run in zip(labels, runs, strict=True)
            for row in run["results"].get(task, [])
            if row.get(metric) is not None and row.get(x_key) != "all"
        ]
        xs = list(dict.fromkeys(x for _, x, _ in points))  # lengths ascending, buckets in order
        xs = sorted(xs) if all(isinstance(x, int) for x in xs) else xs
        for label in labels:
            by_x: dict = {}
            for _, x, value in (p for p in points if p[0] == label):
                by_x.setdefault(x, []).append(value)
            at = [x for x in xs if x in by_x]
            means = [sum(by_x[x]) / len(by_x[x]) for x in at]
            ax.plot([xs.index(x) for x in at], means, "o-", label=label)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=45, fontsize=7)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(x_key)
        ax.set_ylabel(metric)
    axes[0].legend(fontsize=7)
    fig.suptitle("primary metric by length (mean over the other grid coordinates)", fontsize=10)
    _save_figure(fig, path)
    plt.close(fig)
