"""Dataset integrity on real builds and real processes: every shard's size and hash recorded at
build time, a damaged shard named in one line (exit 2) with how to rebuild it, and an interrupted
build that leaves nothing that reads as complete."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mta.data import integrity

ROOT = Path(__file__).resolve().parents[2]


def train(data_dir, workdir, overrides, *extra, **popen):
    command = [
        sys.executable,
        "scripts/train.py",
        "--config",
        "configs/toy/block_baseline_cpu.yaml",
    ]
    command += ["--workdir", str(workdir), *overrides, f"data.data_dir={data_dir}", *extra]
    command += ["train.steps=2", "eval.every=0"]
    if popen:
        return subprocess.Popen(command, cwd=ROOT, **popen)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def build_dir(data_dir) -> Path:
    (manifest,) = Path(data_dir).rglob(integrity.CHECKSUMS)
    return manifest.parent


@pytest.fixture
def built(tiny_overrides, tmp_path):
    done = train(tmp_path / "tfds", tmp_path / "run", tiny_overrides)
    assert done.returncode == 0, done.stderr
    directory = build_dir(tmp_path / "tfds")
    shards = json.loads((directory / integrity.CHECKSUMS).read_text())
    assert {name.split(".")[0].rsplit("-", 1)[1] for name in shards} == {
        "train",
        "validation",
        "test",
    }
    return directory


def test_a_modified_shard_is_named_with_the_command_that_rebuilds_it(
    built, tiny_overrides, tmp_path
):
    (shard,) = built.glob("*-train.array_record-*")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern in the middle: same size, other content
    shard.write_bytes(bytes(data))
    damaged = train(tmp_path / "tfds", tmp_path / "run2", tiny_overrides)
    assert damaged.returncode == 2
    assert damaged.stderr.splitlines() == [
        f"error: data.block: dataset shard {shard} was modified after it was built (its hash "
        f"differs); rebuild it with `rm -r {built}` and run this command again"
    ]
    subprocess.run(["rm", "-r", str(built)], check=True)  # as the message says
    rebuilt = train(tmp_path / "tfds", tmp_path / "run3", tiny_overrides)
    assert rebuilt.returncode == 0, rebuilt.stderr


def test_a_cut_short_or_missing_shard_is_named(built):
    integrity.verify_checksums(built)  # intact: opening is fine (sizes, unchanged times)
    (shard,) = built.glob("*-test.array_record-*")
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(integrity.DamagedDatasetError, match=f"has {size - 10} bytes, {size} when"):
        integrity.verify_checksums(built)
    shard.unlink()
    with pytest.raises(integrity.DamagedDatasetError, match=f"shard {shard} is missing;"):
        integrity.verify_checksums(built)


def test_an_interrupted_build_leaves_nothing_that_reads_as_complete(tiny_overrides, tmp_path):
    big = [*tiny_overrides, "data.block.num_blocks=8", "data.block.num_train=200000"]
    process = train(tmp_path / "tfds", tmp_path / "run", big, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any("incomplete" in p.name for p in (tmp_path / "tfds").rglob("*")):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # some shards written
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [p for p in (tmp_path / "tfds").rglob("*") if "incomplete" in p.name]  # left as such
    assert not list((tmp_path / "tfds").rglob(integrity.CHECKSUMS))
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
