"""The loop that runs ahead of the devices gives the results of one that waits for every step;
a NaN stops it before anything of the bad step is written; the profiler hook; prefetching."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mta.cli.train import parse_args
from mta.train.faults import NonFiniteError
from mta.train.feed import Prefetcher, pad_rows
from mta.train.loop import train
from mta.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"step_time_s", "tokens_per_s", "host_peak_rss_mb", "device_peak_mb"}
WAITING = ["train.run_ahead=false", "data.prefetch=0"]  # the loop as it was: a sync per step


def computed(workdir) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(workdir)]


def saved_state(workdir, step):
    path = Path(workdir) / "checkpoints" / str(step) / "state"
    return ocp.PyTreeCheckpointer().restore(path.absolute())


def checkpoint_steps(workdir) -> list[int]:
    return sorted(
        int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()
    )


def test_running_ahead_is_bitwise_equal_to_waiting(tiny_config, tmp_path):
    common = ["train.steps=7", "log.every=2", "checkpoint.every=3", "checkpoint.keep=5"]
    train(tiny_config(*common), tmp_path / "ahead")
    train(tiny_config(*common, *WAITING), tmp_path / "waiting")
    ahead, waiting = computed(tmp_path / "ahead"), computed(tmp_path / "waiting")
    assert [r["step"] for r in ahead] == [2, 3, 4, 6, 7] and ahead == waiting  # bitwise floats
    assert (
        checkpoint_steps(tmp_path / "ahead") == checkpoint_steps(tmp_path / "waiting") == [3, 6, 7]
    )
    for step in (3, 6, 7):
        a, w = saved_state(tmp_path / "ahead", step), saved_state(tmp_path / "waiting", step)
        leaves_a, leaves_w = jax_leaves(a), jax_leaves(w)
        assert len(leaves_a) == len(leaves_w) > 0
        for x, y in zip(leaves_a, leaves_w, strict=True):
            np.testing.assert_array_equal(x, y)
        data = Path("checkpoints", str(step), "data")
        assert json.loads((tmp_path / "ahead" / data / "process_0-of-1.json").read_text()) == {
            "next_index": step
        }
        for f in (tmp_path / "ahead" / data).glob("process_*.json"):  # not read-ahead's position
            assert json.loads(f.read_text()) == json.loads(
                (tmp_path / "waiting" / data / f.name).read_text()
            )


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.parametrize("mode", ["ahead", "waiting"])
def test_nan_stops_before_its_step_is_checkpointed(tiny_config, tmp_path, mode):
    # lr 0 at step 1, then 1e29, ...: the first steps are finite, a later one is not
    exploding = ["train.lr=1e30", "train.warmup_steps=10", "checkpoint.every=2", "log.every=100"]
    cfg = tiny_config(*exploding, "train.steps=12", *(WAITING if mode == "waiting" else []))
    with pytest.raises(NonFiniteError) as err:
        train(cfg, tmp_path)
    bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
    assert bad_step > 2, err.value
    assert checkpoint_steps(tmp_path) == list(range(2, bad_step, 2))  # all before the bad step


def test_profile_steps_write_a_trace(tiny_config, tmp_path):
    train(tiny_config("train.steps=4", "log.profile_steps=[2,3]", "eval.every=0"), tmp_path)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
    assert list((tmp_path / "profile").rglob("perfetto_trace.json.gz"))


def test_profile_steps_flag_sets_the_config_key():
    args = parse_args(["--config", "c.yaml", "--workdir", "w", "--profile-steps", "10:15"])
    assert args.overrides == ["log.profile_steps=[10,15]"]
    with pytest.raises(SystemExit):
        parse_args(["--config", "c.yaml", "--workdir", "w", "--profile-steps", "10"])


class _Counting:
    """A stand-in grain iterator: batch i is [i]; its state is how many were read."""

    def __init__(self):
        self.read = 0

    def __next__(self):
        self.read += 1
        return {"x": np.array([self.read])}

    def get_state(self):
        return {"read": self.read}


@pytest.mark.parametrize("depth", [0, 3])
def test_prefetcher_positions_follow_the_batches_taken(depth):
    source = _Counting()
    batches = Prefetcher(source, put=lambda local: local, depth=depth)
    try:
        assert [int(next(batches)["x"][0]) for _ in range(4)] == [1, 2, 3, 4]
        assert json.loads(batches.position().get_state()) == {"read": 4}
    finally:
        batches.close()


def test_pad_rows_keeps_the_batch_and_adds_zero_weight_rows():
    batch = {"inputs": np.ones((3, 2), np.int32), "weights": np.ones((3, 2), np.float32)}
    padded = pad_rows(batch, multiple=4, rows=5)
    assert padded["inputs"].shape == (8, 2) and padded["weights"][3:].sum() == 0
    assert pad_rows(batch, multiple=3) is batch


EVAL_SCRIPT = """
import json, sys
import jax, numpy as np
from mta.config import load_config
from mta.train.evaluation import Evaluator
from mta.train.mesh import make_mesh
from mta.train.state import TrainSetup

cfg = load_config(None, sys.argv[1:])
setup = TrainSetup(cfg, make_mesh(cfg.mesh))
params = setup.init_state()["params"]
rng = np.random.default_rng(0)
def batch(rows):
    tokens = rng.integers(0, cfg.model.vocab_size, (rows, 17), dtype=np.int32)
    weights = (rng.random((rows, 16)) < 0.3).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}
batches = [batch(16), batch(16), batch(5)]  # the last one short, as eval_batches makes it
evaluate = Evaluator(setup)
first, again = evaluate(params, batches), evaluate(params, batches)
print(json.dumps({"result": first, "again": again, "compiles": evaluate.compiles(),
                  "devices": jax.device_count()}))
"""


def test_eval_on_four_devices_equals_one_and_compiles_once(tiny_overrides):
    def run(devices):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(
            [sys.executable, "-c", EVAL_SCRIPT, *tiny_overrides],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    one, four = run(1), run(4)
    assert (one["devices"], four["devices"]) == (1, 4)
    for out in (one, four):
        assert out["compiles"] == 1 and out["again"] == out["result"]
    assert one["result"]["eval/examples"] == four["result"]["eval/examples"] > 0
    assert one["result"]["eval/exact_match_error"] == four["result"]["eval/exact_match_error"]
    assert four["result"]["eval/loss"] == pytest.approx(one["result"]["eval/loss"], rel=1e-6)
