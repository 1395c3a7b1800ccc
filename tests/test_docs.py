"""The documentation stays true: docs/configs.md matches mta/config/schema.py, every relative link
in README.md and docs/*.md points to a file that exists, and no tracked file refers to anything
outside the repository."""

import dataclasses
import re
import subprocess
import typing
from pathlib import Path

import pytest

from mta.cli import config_docs as config_docs_cli
from mta.config import TASKS, Config

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


@pytest.fixture(scope="module")
def config_docs():
    """The config_docs command (scripts/config_docs.py)."""
    return config_docs_cli


def leaf_keys(cls, prefix: str = "", seen: set | None = None) -> list[str]:
    """Every dotted key of a config dataclass whose value is not itself a dataclass, lists of
    dataclasses last; the fields of the dataclass X of a `list[X]` field as `key[i].field`,
    but for a section whose dataclass was listed before (a task's, listed under data.<task>)."""
    keys, seen = [], set() if seen is None else seen
    fields = dataclasses.fields(cls)
    lists = [
        f
        for f in fields
        if typing.get_origin(f.type) is list
        and dataclasses.is_dataclass(typing.get_args(f.type)[0])
    ]
    for f in [f for f in fields if f not in lists] + lists:
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            if "[i]" not in prefix or type(value) not in seen:
                seen.add(type(value))
                keys += leaf_keys(type(value), f"{prefix}{f.name}.", seen)
            continue
        keys.append(f"{prefix}{f.name}")
        if f in lists:
            keys += leaf_keys(typing.get_args(f.type)[0], f"{prefix}{f.name}[i].", seen)
    return keys


def test_configs_md_is_up_to_date(config_docs):
    current = config_docs.OUTPUT.read_text() if config_docs.OUTPUT.is_file() else ""
    assert current == config_docs.render(), (
        "docs/configs.md is out of date with mta/config/schema.py; regenerate it with: "
        "python scripts/config_docs.py"
    )


def test_configs_md_lists_every_key_with_its_default(config_docs):
    text = config_docs.render()
    assert config_docs.keys_of(text) == leaf_keys(Config)
    assert "| `model.attention.kq_pre.c_k` | `int` | `11` | > 0 | key taps" in text
    assert "| `mesh.rules` | `dict[str, Any]` | `{embed: fsdp, " in text
    assert "| `data.block.l` | `int` | `2` | between 1 and 5 | query letters |" in text  # no noqa
    for task in TASKS:  # every task's settings, once: a mixture member's section names them
        assert f"| `data.{task}.seed` | `int` | `0` | >= 0 |" in text
        assert (
            f"| `data.mixture[i].{task}` |" in text and f"`data.mixture[i].{task}.seed`" not in text
        )
    assert "| `data.niah.haystack` | `str` | `noise` | one of noise, distractors, text |" in text


def test_a_field_without_a_comment_is_an_error(config_docs, capsys, monkeypatch):
    source = Path(config_docs.schema_module.__file__).read_text()
    stripped, count = re.subn(r"(\n    num_layers: int = \d+)  #[^\n]*", r"\1", source)
    assert count == 1
    with pytest.raises(config_docs.MissingComment, match=r"ModelConfig\.num_layers"):
        config_docs.render(stripped)
    render = config_docs.render
    monkeypatch.setattr(config_docs, "render", lambda: render(stripped))
    assert config_docs.main(["--check"]) == 2
    assert "model.num_layers" in capsys.readouterr().err


def test_check_mode_exits_1_when_stale(config_docs, tmp_path, capsys):
    out = tmp_path / "configs.md"
    assert config_docs.main(["--check", "--output", str(out)]) == 1
    assert "python scripts/config_docs.py" in capsys.readouterr().err
    assert config_docs.main(["--output", str(out)]) == 0
    assert config_docs.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("key taps", "kee taps"))
    assert config_docs.main(["--check", "--output", str(out)]) == 1


def relative_links(markdown: str) -> list[str]:
    """Targets of the markdown links and images that point into the repository (no URL, no
    pure #anchor), outside code blocks and inline code; the #fragment removed."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE) or target[0] == "#":
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_relative_links_are_found():
    text = (
        "See [a](docs/a.md#part), ![plot](img/p.png), [web](https://x.org), [anchor](#top),\n"
        '`[not](code.md)` and\n```\n[not](fenced.md)\n```\n[b](b/) [d](d.md "title")\n'
    )
    assert relative_links(text) == ["docs/a.md", "img/p.png", "b/", "d.md"]


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(document):
    broken = [
        target
        for target in relative_links(document.read_text())
        if not (document.parent / target).exists()
    ]
    assert not broken, f"{document.relative_to(ROOT)} links to missing files: {broken}"


# Tracked files checked for references outside the repository: by suffix, plus these names.
SCANNED_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".ipynb", ".toml", ".cfg", ".txt", ".sh")
SCANNED_NAMES = ("Makefile", ".ci/run")
# The names are assembled so that this file does not itself mention them.
SHARED, SPEC, DESIGN = "../" + "shared", "MTA" + "_SPEC", "DESIGN" + ".md"
OUTSIDE = re.compile("|".join(re.escape(name) for name in (SHARED, SPEC, DESIGN)))


def outside_references(path: str, text: str) -> list[str]:
    """What in `text` (the file `path`, relative to the repository root) refers outside the
    repository: any mention of SHARED, SPEC or DESIGN, and in a markdown file any
    relative link whose target resolves above the repository root. One 'path:line: what' each."""
    found = [
        f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for m in OUTSIDE.finditer(text)
    ]
    if path.endswith(".md"):
        depth = len(Path(path).parts) - 1  # directories between the file and the root
        for target in relative_links(text):
            parts = [p for p in Path(target).parts if p not in ("", ".")]
            level = depth
            for part in parts:
                level += -1 if part == ".." else 1
                if level < 0 or Path(target).is_absolute():
                    found.append(f"{path}: link to {target}, outside the repository")
                    break
    return found


def tracked_text_files() -> list[str]:
    """The tracked files scanned by test_nothing_refers_outside_the_repository."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [p for p in listed if p.endswith(SCANNED_SUFFIXES) or p in SCANNED_NAMES]


def test_outside_references_are_found():
    text = f"intro\nThe math is in `{SHARED}/{SPEC}.md`."
    assert outside_references("README.md", text) == [
        f"README.md:2: {SHARED}",
        f"README.md:2: {SPEC}",
    ]
    assert outside_references("mta/x.py", f'"""See {DESIGN}."""') == [f"mta/x.py:1: {DESIGN}"]
    assert outside_references("docs/a.md", "[up](../README.md) [in](mta.md)") == []
    assert outside_references("docs/a.md", "[out](../../notes.md)") == [
        "docs/a.md: link to ../../notes.md, outside the repository"
    ]
    assert outside_references("README.md", "[out](docs/../../x.md) [abs](/etc/x.md)") == [
        "README.md: link to docs/../../x.md, outside the repository",
        "README.md: link to /etc/x.md, outside the repository",
    ]
    # an NFS path or a word that merely contains "shared" is fine
    assert outside_references("docs/s.md", "--workdir /nfs/runs/x, shared file system") == []


def test_nothing_refers_outside_the_repository():
    files = tracked_text_files()
    assert "README.md" in files and "Makefile" in files and "tests/test_docs.py" in files
    found = [
        hit
        for path in files
        for hit in outside_references(path, (ROOT / path).read_text(errors="replace"))
    ]
    assert not found, "references outside the repository:\n" + "\n".join(found)
