"""The report of a sweep, in the layout of the paper's Table 5: one row per variant, a column per
axis with its setting, then each final evaluation metric as mean +- std over the finished seeds.

Writes under ROOT: report.md, report.csv, loss_curves.png (mean loss over seeds per variant) and
final_metric.png (a bar chart of the sweep's `metric`).
"""

import csv
import math
from pathlib import Path

import numpy as np

from mta.ablate.plan import Run, read_metrics, status
from mta.ablate.spec import Sweep

FIRST_METRICS = ("eval/loss", "eval/exact_match_error")
SKIPPED = ("eval/examples",)


def final_record(run: Run) -> dict | None:
    """The last evaluated record at or before train.steps of a finished run, else None."""
    if status(run) != "done":
        return None
    records = [r for r in read_metrics(run.workdir) if r.get("step", 0) <= run.cfg.train.steps]
    evaluated = [r for r in records if any(k.startswith("eval/") for k in r)]
    return (evaluated or records or [None])[-1]


def metric_keys(records: list[dict]) -> list[str]:
    """The eval/ metrics found in any record: loss and exact-match error first, then by name."""
    found = {k for r in records for k, v in r.items() if k.startswith("eval/") and k not in SKIPPED}
    found = {k for k in found if any(isinstance(r.get(k), int | float) for r in records)}
    return [k for k in FIRST_METRICS if k in found] + sorted(found - set(FIRST_METRICS))


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else None


def label(key: str, split: str) -> str:
    """A column heading for a metric key."""
    return {"eval/loss": f"{split} loss", "eval/exact_match_error": "exact-match error (%)"}.get(
        key, key.removeprefix("eval/")
    )


def fmt(key: str, stat: tuple[float, float | None] | None) -> str:
    """'mean ± std' with digits suited to the metric ('-' when no seed finished)."""
    if stat is None:
        return "-"
    spec = ".4f" if "loss" in key else ".1f" if "error" in key else ".4g"
    mean, std = stat
    return format(mean, spec) + ("" if std is None else f" ± {format(std, spec)}")


def aggregate(sweep: Sweep, runs: list[Run]) -> tuple[list[str], list[dict]]:
    """(metric keys, one row per variant: name, settings, stats {key: (mean, std)}, seeds)."""
    finals = {run.label: final_record(run) for run in runs}
    keys = metric_keys([r for r in finals.values() if r])
    rows = []
    for variant in sweep.variants:
        done = [finals[r.label] for r in runs if r.variant == variant and finals[r.label]]
        stats = {}
        for key in keys:
            values = [r[key] for r in done if isinstance(r.get(key), int | float)]
            stats[key] = mean_std(values) if values else None
        row = {"variant": variant.name, "settings": dict(variant.settings), "stats": stats}
        rows.append(row | {"finished": len(done), "seeds": len(sweep.seeds)})
    return keys, rows


def markdown_table(sweep: Sweep, keys: list[str], rows: list[dict], split: str) -> str:
    """The rows as a markdown table."""
    head = ["variant", *sweep.columns, *(label(k, split) for k in keys), "seeds finished"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["variant"], *(row["settings"].get(c, "") for c in sweep.columns)]
        cells += [fmt(k, row["stats"][k]) for k in keys]
        lines.append("| " + " | ".join([*cells, f"{row['finished']}/{row['seeds']}"]) + " |")
    return "\n".join(lines)


def write_csv(path: Path, sweep: Sweep, keys: list[str], rows: list[dict]) -> None:
    """The rows as CSV: settings, then <metric>_mean and <metric>_std per metric."""
    stat_cols = [f"{k}_{part}" for k in keys for part in ("mean", "std")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", *sweep.columns, *stat_cols, "seeds_finished", "seeds"])
        for row in rows:
            cells = [row["variant"], *(row["settings"].get(c, "") for c in sweep.columns)]
            for key in keys:
                mean, std = row["stats"][key] or (None, None)
                cells += ["" if mean is None else mean, "" if std is None else std]
            writer.writerow([*cells, row["finished"], row["seeds"]])


def mean_curve(runs: list[Run], key: str) -> tuple[list[int], list[float]]:
    """(steps, mean of `key` over the runs that logged it at that step)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for record in read_metrics(run.workdir):
            value = record.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                by_step.setdefault(record["step"], []).append(value)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]


def plot_curves(path: Path, sweep: Sweep, runs: list[Run], split: str) -> None:
    """Training loss and evaluation loss against steps, one line per variant (mean over seeds)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.get_cmap("tab10")
    for i, variant in enumerate(sweep.variants):
        mine = [r for r in runs if r.variant == variant]
        style = {"color": colours(i % 10), "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}
        axes[0].plot(*mean_curve(mine, "loss"), label=variant.name, **style)
        axes[1].plot(*mean_curve(mine, "eval/loss"), marker="o", label=variant.name, **style)
    for ax, title in zip(axes, ("training loss", f"{split} loss"), strict=True):
        ax.set(title=f"{title} (mean over seeds)", xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"{sweep.path.name}: loss curves")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(path: Path, sweep: Sweep, rows: list[dict], key: str, split: str) -> None:
    """A bar per variant of the final `key` (mean, with the std over seeds as error bar)."""
    import matplotlib.pyplot as plt

    names = [row["variant"] for row in rows]
    stats = [row["stats"].get(key) or (math.nan, None) for row in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 2), 4.5))
    ax.bar(names, [m for m, _ in stats], yerr=[s or 0.0 for _, s in stats], capsize=4)
    ax.set(title=f"{sweep.path.name}: final {label(key, split)}", ylabel=label(key, split))
    ax.set_xlabel("variant (mean ± std over finished seeds)")
    plt.setp(ax.get_xticklabels(), rotation=45, horizontalalignment="right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(sweep: Sweep, runs: list[Run], root: str | Path) -> tuple[str, list[Path]]:
    """Writes report.md, report.csv, loss_curves.png, final_metric.png under root; returns the
    markdown table and the paths."""
    import matplotlib

    matplotlib.use("Agg")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    split = runs[0].cfg.eval.split if runs else "validation"
    keys, rows = aggregate(sweep, runs)
    metric = sweep.metric or next((k for k in FIRST_METRICS[::-1] if k in keys), None)
    table = markdown_table(sweep, keys, rows, split)
    paths = [root / name for name in ("report.md", "report.csv", "loss_curves.png")]
    text = [
        f"# Ablation: {sweep.path}",
        "",
        "Final evaluation of each variant: mean ± sample std over the seeds that finished "
        f"(evaluated on the {split} split).",
        "",
        table,
        "",
        "![loss curves](loss_curves.png)",
    ]
    plot_curves(paths[2], sweep, runs, split)
    if metric is not None:
        paths.append(root / "final_metric.png")
        plot_bars(paths[3], sweep, rows, metric, split)
        text += ["", f"![final {label(metric, split)}](final_metric.png)"]
    paths[0].write_text("\n".join(text) + "\n")
    write_csv(paths[1], sweep, keys, rows)
    return table, paths
