"""The documentation stays true: docs/configs.md matches mta/config.py, and every relative link in
README.md and docs/*.md points to a file that exists."""

import dataclasses
import importlib.util
import re
import typing
from pathlib import Path

import pytest

from mta.config import TASKS, Config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "config_docs.py"
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


@pytest.fixture(scope="module")
def config_docs():
    """scripts/config_docs.py as a module."""
    spec = importlib.util.spec_from_file_location("config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        "docs/configs.md is out of date with mta/config.py; regenerate it with: "
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
    source = Path(config_docs.config_module.__file__).read_text()
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
