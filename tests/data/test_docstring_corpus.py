"""The docstring corpus: each module's docstrings in source order, duplicates once, shards that
the corpus reader takes."""

import json

import zstandard

from mta.data.docstring_corpus import documents, main, module_docstrings

SOURCE = '''"""Module doc."""


class Thing:
    """Class doc.

        Indented detail."""

    def method(self):
        """Method doc."""


async def later():
    """Async doc."""


def bare():
    return 1
'''


def write_package(root, name, files):
    package = root / name
    package.mkdir()
    for file, text in files.items():
        (package / file).write_text(text)


def test_module_docstrings_in_source_order_and_cleaned():
    got = module_docstrings(SOURCE.encode())
    assert got == "Module doc.\n\nClass doc.\n\nIndented detail.\n\nMethod doc.\n\nAsync doc."
    assert module_docstrings(b"def broken(:\n") == ""


def test_documents_skip_short_and_duplicate_modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    short = '"""Tiny."""\n'
    write_package(tmp_path, "pkg_a", {"__init__.py": short, "one.py": SOURCE, "two.py": SOURCE})
    write_package(tmp_path, "pkg_b", {"__init__.py": "", "three.py": SOURCE + "x = 1\n"})
    docs = list(documents(["pkg_a", "pkg_b"], min_chars=20))
    assert [d["source"] for d in docs] == ["pkg_a/one.py"]  # two.py and three.py repeat its text


def test_main_writes_shards_the_corpus_reader_can_read(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    files = {"__init__.py": ""}
    files.update({f"m{i}.py": SOURCE.replace("Module doc.", f"Module {i}.") for i in range(5)})
    write_package(tmp_path, "pkg_c", files)
    out = tmp_path / "out"
    assert (
        main(["--out", str(out), "--packages", "pkg_c", "--shards", "2", "--min-chars", "1"]) == 0
    )
    shards = sorted(out.iterdir())
    assert [s.name for s in shards] == ["docstrings-00000.jsonl.zst", "docstrings-00001.jsonl.zst"]
    lines = []
    for shard in shards:
        raw = zstandard.ZstdDecompressor().stream_reader(shard.open("rb")).read()
        lines += [json.loads(line) for line in raw.decode().splitlines()]
    assert sorted(d["source"] for d in lines) == [f"pkg_c/m{i}.py" for i in range(5)]
    assert json.loads(capsys.readouterr().out)["shards"] == 2
