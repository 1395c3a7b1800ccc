"""Two real JAX processes (CPU, gloo over 127.0.0.1) build the training pipeline of one config:
their rows are disjoint and together the batches one process reads alone (pad), or their packed
records are disjoint (pack)."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from two_process_worker import first_batches  # beside this file

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("two_process_worker.py")
STEPS = 3
MIXTURE = (
    "data.mixture=[{task: mqar, weight: 0.6, mqar: {num_pairs: 4, key_len: 2, value_len: 2, "
    "length: 64, num_train: 500, num_validation: 20, num_test: 20}}, {task: block, weight: 0.4, "
    "block: {num_blocks: 4, num_train: 2000, num_validation: 64, num_test: 64}}]"
)


def overrides(data_dir, packing):
    return [
        "data.task=mix",
        MIXTURE,
        "data.seq_len=96",
        f"data.packing={packing}",
        f"data.data_dir={data_dir}",
        "train.batch_size=8",
        "train.seed=7",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path, args) -> list[list[dict]]:
    """Each process's batches (a list of STEPS dicts) for the overrides `args`."""
    port = free_port()
    outs = [tmp_path / f"process{pid}.npz" for pid in (0, 1)]
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(pid), str(out), str(STEPS), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid, out in enumerate(outs)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    parts = []
    for out in outs:
        arrays = np.load(out)
        steps = [{} for _ in range(STEPS)]
        for name in arrays.files:
            step, key = name.split("/")
            steps[int(step)][key] = arrays[name]
        parts.append(steps)
    return parts


def documents(batch) -> set[bytes]:
    """inputs of every packed document of a batch, as bytes."""
    out = set()
    for row in range(batch["inputs"].shape[0]):
        ids = batch["segment_ids"][row]
        out |= {batch["inputs"][row][ids == seg].tobytes() for seg in np.unique(ids[ids > 0])}
    return out


@pytest.mark.parametrize("packing", ["pad", "pack"])
def test_two_processes_read_disjoint_shares_of_one_stream(data_dir, tmp_path, packing):
    args = overrides(data_dir, packing)
    alone = first_batches(args, STEPS)  # also builds the datasets before the processes start
    parts = run_two_processes(tmp_path, args)
    for step in range(STEPS):
        for part in parts:
            assert part[step]["inputs"].shape == (4, 96)
        if packing == "pad":
            # rows p, p + 2, ... of the global batch that one process reads alone
            for pid, part in enumerate(parts):
                for key, value in alone[step].items():
                    np.testing.assert_array_equal(part[step][key], value[pid::2])
        rows = [r.tobytes() for part in parts for r in part[step]["inputs"]]
        assert len(set(rows)) == len(rows)
    if packing == "pack":
        shares = [set().union(*(documents(b) for b in part)) for part in parts]
        assert len(shares[0]) > 4 and len(shares[1]) > 4
        assert not shares[0] & shares[1]


def test_two_processes_read_disjoint_shares_of_a_corpus(tmp_path):
    (tmp_path / "s").mkdir()
    for name in ("a", "b"):
        # more records than a member's share of mixture.WINDOW: no record twice in a window
        lines = [f'{{"text": "{name} document {i} {"x" * (i % 50)}"}}' for i in range(1200)]
        (tmp_path / "s" / f"{name}.jsonl").write_text("\n".join(lines))
    args = [
        "data.task=corpus",
        f"data.sources=[{{path: '{tmp_path}/s/a.jsonl', weight: 2}}, {{path: '{tmp_path}/s/b*'}}]",
        "data.seq_len=96",
        "data.packing=pack",
        "data.corpus.validation_fraction=0.1",
        f"data.data_dir={tmp_path / 'tfds'}",
        "train.batch_size=8",
    ]
    first_batches(args, 1)  # builds the corpus before the processes start
    parts = run_two_processes(tmp_path, args)
    shares = [set().union(*(documents(b) for b in part)) for part in parts]
    assert len(shares[0]) > 4 and len(shares[1]) > 4
    assert not shares[0] & shares[1]
