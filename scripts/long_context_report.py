"""Seed-averaged long-context results of a sweep: ROOT/<variant>/seed*/eval/<name>/results.json
(written by `mta eval --suite ...`) -> markdown tables (mean +- sample std over seeds) and figures
(NIAH recall heatmaps length x depth per needle count and variant, bAbI accuracy by story
length, perplexity by position).

    python scripts/long_context_report.py --root runs/long_context --eval-name 1200 \
        --figures docs/figures --prefix long_context

The tables go to stdout (docs/results.md takes them as they are).
"""

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mta.eval.report import _pyplot, markdown_table


def load(root: Path, eval_name: str) -> dict[str, list[dict]]:
    """{variant: [results.json of each seed, in seed order]}."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(root.glob(f"*/seed*/eval/{eval_name}/results.json")):
        runs.setdefault(path.parts[-5], []).append(json.loads(path.read_text()))
    if not runs:
        raise SystemExit(
            f"no {root}/*/seed*/eval/{eval_name}/results.json: evaluate the runs first"
        )
    return runs


def per_seed(results: list[dict], task: str, keys: tuple[str, ...], value: str) -> dict:
    """{cell (values of keys): [per-seed mean of value over the rows of the cell]}."""
    cells: dict = defaultdict(list)
    for seed_result in results:
        sums: dict = defaultdict(list)
        for row in seed_result["results"].get(task, []):
            sums[tuple(row[k] for k in keys)].append(row[value])
        for cell, values in sums.items():
            cells[cell].append(float(np.mean(values)))
    return cells


def _order(cell: tuple):
    """Sort key of a cell: perplexity buckets ("128-256", "all") by their first position."""
    return tuple(_position(v) if isinstance(v, str) else v for v in cell)


def _position(bucket: str) -> float:
    return math.inf if bucket == "all" else float(bucket.split("-")[0])


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = scale * float(np.mean(values))
    std = scale * float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def table(runs: dict, task: str, keys: tuple[str, ...], value: str, **fmt) -> str:
    """Rows: the cells (keys); columns: the variants (mean +- std over seeds)."""
    by_variant = {v: per_seed(results, task, keys, value) for v, results in runs.items()}
    cells = sorted({c for cells in by_variant.values() for c in cells}, key=_order)
    body = [
        [
            *cell,
            *(mean_std(by_variant[v][cell], **fmt) if cell in by_variant[v] else "-" for v in runs),
        ]
        for cell in cells
    ]
    seeds = {v: len(results) for v, results in runs.items()}
    header = [*keys, *(f"{v} ({seeds[v]} seeds)" for v in runs)]
    return markdown_table(header, body)


def niah_figure(runs: dict, path: Path) -> None:
    """Recall heatmaps (length x depth), one per variant (rows) and needle count (columns)."""
    plt = _pyplot()
    cells = {
        v: per_seed(r, "niah", ("num_needles", "length", "depth"), "recall")
        for v, r in runs.items()
    }
    needles = sorted({c[0] for cs in cells.values() for c in cs})
    lengths = sorted({c[1] for cs in cells.values() for c in cs})
    depths = sorted({c[2] for cs in cells.values() for c in cs})
    fig, axes = plt.subplots(
        len(runs),
        len(needles),
        figsize=(3.2 * len(needles), 2.4 * len(runs)),
        squeeze=False,
        layout="constrained",
    )
    for i, variant in enumerate(runs):
        for j, n in enumerate(needles):
            grid = np.array(
                [
                    [np.mean(cells[variant].get((n, L, d), [np.nan])) for d in depths]
                    for L in lengths
                ]
            )
            ax = axes[i][j]
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            for (y, x), value in np.ndenumerate(grid):
                ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(depths)), [str(d) for d in depths])
            ax.set_yticks(range(len(lengths)), [str(L) for L in lengths])
            ax.set_title(f"{variant}: {n} needles", fontsize=9)
            ax.set_xlabel("depth (%)") if i == len(runs) - 1 else None
            ax.set_ylabel("length (bytes)") if j == 0 else None
    fig.colorbar(image, ax=axes, label="recall (mean over seeds)", shrink=0.8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_figure(runs: dict, path: Path) -> None:
    """bAbI accuracy against story length (QA1, QA2) and perplexity by position bucket: the
    panels of the tasks the results have."""
    plt = _pyplot()
    panels = [("babi", 1), ("babi", 2)] if has(runs, "babi") else []
    panels += [("perplexity", None)] if has(runs, "perplexity") else []
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False, layout="constrained"
    )
    for ax, (task, qa) in zip(axes[0], panels, strict=True):
        for variant, results in runs.items():
            if task == "babi":
                babi = per_seed(results, "babi", ("qa", "length"), "accuracy")
                xs = sorted(L for q, L in babi if q == qa)
                ys = [np.mean(babi[(qa, L)]) for L in xs]
                err = [np.std(babi[(qa, L)]) for L in xs]
                ax.errorbar(
                    [str(x) for x in xs], ys, yerr=err, marker="o", capsize=3, label=variant
                )
            else:
                ppl = per_seed(results, "perplexity", ("bucket",), "perplexity")
                buckets = sorted((b for b in ppl if b[0] != "all"), key=_order)
                xs = [_position(b[0]) for b in buckets]
                ax.plot(xs, [np.mean(ppl[b]) for b in buckets], marker="o", label=variant)
        if task == "babi":
            ax.set_title(f"bAbI QA{qa}: accuracy by story length", fontsize=10)
            ax.set_xlabel("story length (bytes; 0 = the facts alone)")
            ax.set_ylim(0, 1)
        else:
            ax.set_title("perplexity by position (held-out text)", fontsize=10)
            ax.set_xlabel("position (bucket start)")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# (title, task, cell keys, value): the tables printed for the tasks a suite has
TABLES = (
    (
        "NIAH recall (mean over depths), by needles and length",
        "niah",
        ("num_needles", "length"),
        "recall",
    ),
    (
        "bAbI accuracy, by task and story length (bytes; 0 = the facts alone)",
        "babi",
        ("qa", "length"),
        "accuracy",
    ),
    (
        "NIAH log-likelihood top-1 among the candidates",
        "niah_loglik",
        ("num_needles", "length"),
        "top1",
    ),
    ("Perplexity (per byte) by position bucket", "perplexity", ("bucket",), "perplexity"),
    (
        "MQAR accuracy (values right), by key length and length",
        "mqar",
        ("key_len", "length"),
        "accuracy",
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="the sweep's root directory")
    parser.add_argument("--eval-name", required=True, help="eval output name (e.g. the step)")
    parser.add_argument("--figures", type=Path, help="directory for the PNG figures")
    parser.add_argument("--prefix", default="long_context", help="figure file name prefix")
    args = parser.parse_args()
    runs = load(args.root, args.eval_name)
    for title, task, keys, value in TABLES:
        if has(runs, task):
            print(f"{title}:\n\n{table(runs, task, keys, value)}\n")
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        niah_figure(runs, args.figures / f"{args.prefix}_niah.png")
        if has(runs, "babi") or has(runs, "perplexity"):
            curves_figure(runs, args.figures / f"{args.prefix}_babi_ppl.png")


def has(runs: dict, task: str) -> bool:
    """Whether any seed of any variant has results of `task`."""
    return any(task in result["results"] for results in runs.values() for result in results)


if __name__ == "__main__":
    main()
