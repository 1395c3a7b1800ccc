"""The markdown of a benchmark run: a section per benchmark (command, machine, note, a table of
its records, its target checks) between markers, rewritten in place in a file such as
docs/benchmarks.md, so hand-written text around the sections stays.

    write_markdown("docs/benchmarks.md", "decode", records, decode.COLUMNS)
"""

import json
from pathlib import Path


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return str(value).replace("|", "/")


def markdown_section(bench: str, records: list[dict], columns: list) -> str:
    """The section of one run: command, machine, note, then the table (and target checks)."""
    first, machine = records[0], records[0]["machine"]
    lines = [
        f"## {bench}",
        "",
        f"Command: `{first['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; "
        f"jax {machine['jax']} ({machine['backend']}, {machine['devices']} device(s)); "
        f"load average {machine['load_avg_1m']} at start; {machine['date']}.",
    ]
    if first.get("note"):
        lines += ["", f"Note: {first['note']}"]
    lines += ["", "| " + " | ".join(h for h, _ in columns) + " |"]
    lines += ["|" + "---|" * len(columns)]
    rows = [r for r in records if r.get("kind") != "target"]
    lines += ["| " + " | ".join(_cell(r.get(key)) for _, key in columns) + " |" for r in rows]
    targets = [r for r in records if r.get("kind") == "target"]
    if targets:
        lines += [""] + [f"- context {t['context']}: {_target_text(t)}" for t in targets]
    return "\n".join(lines) + "\n"


def _target_text(check: dict) -> str:
    """'metric = value (target ...: met)' or '(info)' for a ratio without a target."""
    if check["met"] is None:
        return f"{check['metric']} = {check['value']} (info)"
    verdict = "met" if check["met"] else "NOT met"
    return f"{check['metric']} = {check['value']} (target {check['target']}: {verdict})"


def write_markdown(path: str, bench: str, records: list[dict], columns: list) -> None:
    """Replaces (or appends) the marked section of `bench` in the markdown file."""
    begin, end = f"<!-- bench:{bench} begin -->", f"<!-- bench:{bench} end -->"
    block = f"{begin}\n{markdown_section(bench, records, columns)}{end}\n"
    file = Path(path)
    text = (
        file.read_text()
        if file.exists()
        else (
            "# Benchmarks\n\nWritten by `scripts/bench.py --markdown`; each section is "
            "rewritten by the command it shows. Raw records: the JSONL file given with `--out`.\n\n"
        )
    )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def newest_run(jsonl: str, bench: str) -> list[dict]:
    """The records of the newest run of `bench` in a JSONL file."""
    records = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("bench") == bench]
    return [r for r in records if r["run_id"] == records[-1]["run_id"]] if records else []
