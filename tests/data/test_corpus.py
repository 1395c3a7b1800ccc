"""data.task: corpus on real files: jsonl (plain, gz, zst), parquet, txt and a TFDS dataset are
built into ArrayRecord shards whose records are the documents tokenized directly; the validation
split is disjoint from training; weights give the proportions; resume is bitwise; a changed
source is built again; a killed build is never read as complete."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mta.config import load_config
from mta.data import pipeline, tfds_corpus
from mta.data.tokenizer import BOS, EOS, encode

ROOT = Path(__file__).resolve().parents[2]


def texts(tag: str, count: int) -> list[str]:
    return [f"{tag} document {i}: " + "é lorem ipsum " * (i % 9 + 1) for i in range(count)]


def write_jsonl(path: Path, docs: list[str], opener=open):
    with opener(path, "wb") as f:
        f.write(b"".join(json.dumps({"text": d, "n": 1}).encode() + b"\n" for d in docs))


def write_corpus(root: Path) -> list[str]:
    """Files of every format under root/shards; returns their documents in file order."""
    (root / "shards" / "b").mkdir(parents=True)
    docs = {name: texts(name, 40) for name in ("a", "b", "c", "d")}
    write_jsonl(root / "shards" / "a.jsonl", docs["a"])
    write_jsonl(root / "shards" / "b" / "b.jsonl.gz", docs["b"], gzip.open)
    zst = zstandard.ZstdCompressor().compress
    (root / "shards" / "c.jsonl.zst").write_bytes(
        zst(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs["c"]))
    )
    pq.write_table(pa.table({"text": docs["d"]}), root / "shards" / "d.parquet", row_group_size=7)
    (root / "shards" / "e.txt").write_text("a whole file, one document ünïcode\n" * 50)
    order = ["a", "b", "c", "d"]  # sorted paths: a.jsonl, b/b.jsonl.gz, c..., d..., e.txt
    return [d for name in order for d in docs[name]] + [(root / "shards" / "e.txt").read_text()]


def config(root: Path, data_dir: Path, *extra: str):
    return load_config(
        None,
        [
            "data.task=corpus",
            f"data.data_dir={data_dir}",
            "data.seq_len=64",
            "data.corpus.validation_fraction=0.2",
            *extra,
        ],
    )


def sources(*entries: str) -> str:
    return "data.sources=[" + ", ".join(entries) + "]"


def records(builder, split: str) -> list[np.ndarray]:
    source = builder.as_data_source()[split]
    return [np.asarray(source[i]["tokens"]) for i in range(len(source))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


def test_records_equal_the_documents_tokenized_directly(corpus, tmp_path):
    root, docs = corpus
    glob = sources(f"{{path: '{root}/shards/**/*.*'}}")
    built = {}
    for workers in (1, 2):
        cfg = config(root, tmp_path / f"w{workers}", glob, f"data.corpus.workers={workers}")
        (builder,) = pipeline.prepare(cfg.data)
        built[workers] = {split: records(builder, split) for split in ("train", "validation")}
    expected = [np.concatenate([[BOS], encode(d), [EOS]]) for d in docs]
    train, validation = built[2]["train"], built[2]["validation"]
    assert len(train) + len(validation) == len(expected) and len(validation) >= 10
    merged = sorted(train + validation, key=lambda r: r.tobytes())
    for got, want in zip(merged, sorted(expected, key=lambda r: r.tobytes()), strict=True):
        np.testing.assert_array_equal(got, want)
    in_train = [any(np.array_equal(e, t) for t in train) for e in expected]
    kept = [e for e, keep in zip(expected, in_train, strict=True) if keep]
    for got, want in zip(train, kept, strict=True):  # in file order
        np.testing.assert_array_equal(got, want)
    # the validation split is disjoint from training, and the same whatever the workers
    assert not {r.tobytes() for r in train} & {r.tobytes() for r in validation}
    for split in ("train", "validation"):
        assert [r.tobytes() for r in built[1][split]] == [r.tobytes() for r in built[2][split]]


def test_split_is_a_hash_of_the_document_id():
    ids = [f"f.jsonl:{i}" for i in range(20000)]
    held = [tfds_corpus.held_out(i, 0, 0.1) for i in ids]
    assert 0.09 < np.mean(held) < 0.11
    assert held == [tfds_corpus.held_out(i, 0, 0.1) for i in ids]
    assert held != [tfds_corpus.held_out(i, 1, 0.1) for i in ids]


def test_long_documents_are_cut_into_records(monkeypatch):
    monkeypatch.setattr(tfds_corpus, "RECORD_TOKENS", 10)
    tok = tfds_corpus.load_tokenizer("byte", "")
    parts = list(tfds_corpus.document_records(["abcdefgh", "ijklmnopqrstu"], tok))
    assert [len(p) for p in parts] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate(parts), encode("abcdefghijklmnopqrstu", 1, 1))
    assert list(tfds_corpus.document_records(["", ""], tok)) == []


def two_sources(tmp_path) -> str:
    for name, letter in (("x", "x"), ("y", "y")):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "docs.jsonl", [letter * 40 + str(i) for i in range(300)])
    return sources(
        f"{{path: '{tmp_path}/x/*.jsonl', weight: 0.3}}",
        f"{{path: '{tmp_path}/y/*.jsonl', weight: 0.7}}",
    )


def test_weights_give_the_configured_proportions(tmp_path):
    cfg = config(tmp_path, tmp_path / "tfds", two_sources(tmp_path), "train.batch_size=8")
    builders = pipeline.prepare(cfg.data)
    iterator = pipeline.train_iterator(builders, cfg.data, 64, 32, seed=3)
    first = np.concatenate([next(iterator)["inputs"][:, 1] for _ in range(40)])
    share = np.mean(first == ord("x"))
    assert set(np.unique(first)) == {ord("x"), ord("y")}
    assert abs(share - 0.3) < 0.04, share


def test_resume_is_bitwise(tmp_path):
    cfg = config(tmp_path, tmp_path / "tfds", two_sources(tmp_path), "data.packing=pack")
    builders = pipeline.prepare(cfg.data)
    source = pipeline.split_source(builders, cfg.data, "train", 64)
    dataset = pipeline.train_dataset(source, cfg.data, 64, 8, seed=5)
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()
    iterator = iter(dataset)
    for _ in range(4):
        next(iterator)
    state = iterator.get_state()
    after = [next(iterator) for _ in range(4)]
    resumed = iter(dataset)
    resumed.set_state(state)
    for a, b in zip(after, [next(resumed) for _ in range(4)], strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_a_changed_source_is_built_again(tmp_path):
    (tmp_path / "s").mkdir()
    write_jsonl(tmp_path / "s" / "a.jsonl", texts("a", 30))
    args = (sources(f"{{path: '{tmp_path}/s/*.jsonl'}}"),)

    def build():
        (builder,) = pipeline.prepare(config(tmp_path, tmp_path / "tfds", *args).data)
        count = sum(len(builder.as_data_source()[s]) for s in ("train", "validation"))
        return builder.builder_config.name, count

    first = build()
    assert build() == first  # unchanged: the same build
    write_jsonl(tmp_path / "s" / "b.jsonl", texts("b", 5))  # a file added
    added = build()
    assert added[0] != first[0] and added[1] == 35
    write_jsonl(tmp_path / "s" / "b.jsonl", texts("c", 7))  # a file modified
    modified = build()
    assert modified[0] not in (first[0], added[0]) and modified[1] == 37
    (tmp_path / "s" / "b.jsonl").unlink()  # removed: back to the first files, but newer mtime
    assert build()[1] == 30


def test_a_prepared_tfds_dataset_by_name(tmp_path):
    import tensorflow_datasets as tfds

    from mta.data import tfds_common

    docs = texts("tfds", 60)

    class TinyText(tfds_common.Builder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def features(self):
            return tfds.features.FeaturesDict({"text": tfds.features.Text()})

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(enumerate({"text": d} for d in docs))}

    builder = TinyText(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    cfg = config(tmp_path, tmp_path / "tfds", sources("{path: 'tfds:tiny_text'}"))
    (built,) = pipeline.prepare(cfg.data)
    got = sorted(r.tobytes() for s in ("train", "validation") for r in records(built, s))
    want = sorted(
        np.concatenate([[BOS], encode(d), [EOS]]).astype(np.int32).tobytes() for d in docs
    )
    assert got == want


KILLED_BUILD = """
import sys, time
from mta.config import load_config
from mta.data import pipeline, tfds_corpus
real = tfds_corpus.ingest_unit
def slow(task):
    result = real(task)
    if task[0] == 1:
        open(sys.argv[1], "w").close()
        time.sleep(600)
    return result
tfds_corpus.ingest_unit = slow
pipeline.prepare(load_config(None, sys.argv[2:]).data)
"""


def test_a_killed_build_is_never_read_as_complete(tmp_path):
    (tmp_path / "s").mkdir()
    for i in range(3):
        write_jsonl(tmp_path / "s" / f"{i}.jsonl", texts(str(i), 30))
    args = [
        "data.task=corpus",
        f"data.data_dir={tmp_path / 'tfds'}",
        "data.corpus.workers=1",
        "data.corpus.validation_fraction=0.2",
        sources(f"{{path: '{tmp_path}/s/*.jsonl'}}"),
    ]
    marker = tmp_path / "two-units-written"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(marker), *args], env=env)
    deadline = time.time() + 120
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the build never reached its second unit"
    written = list((tmp_path / "tfds").rglob("unit*-train.tmp"))
    assert len(written) >= 2  # shards were half-written when it was killed
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
    cfg = load_config(None, args)
    (builder,) = pipeline.prepare(cfg.data)  # builds again, and completely
    assert sum(len(builder.as_data_source()[s]) for s in ("train", "validation")) == 90
