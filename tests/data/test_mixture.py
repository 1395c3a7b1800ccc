"""Weighted mixtures of tasks (data.task: mix): config checks, realised proportions, determinism,
exact resume, per-process shares, packing and evaluation."""

import grain
import numpy as np
import pytest

from mta.config import ConfigError, load_config
from mta.data import mixture, pipeline
from mta.train.loop import train
from mta.train.metrics import read_metrics

SEQ = 256
WEIGHTS = (0.5, 0.3, 0.2)
SPLITS = "num_validation: 20, num_test: 20"
MIXTURE = (
    "data.mixture=["
    f"{{task: mqar, weight: {WEIGHTS[0]}, mqar: {{num_pairs: 4, key_len: 2, value_len: 2, "
    f"length: 64, num_train: 500, {SPLITS}}}}}, "
    f"{{task: niah, weight: {WEIGHTS[1]}, niah: {{num_needles: 1, length: 200, num_train: 300, "
    f"{SPLITS}}}}}, "
    f"{{task: block, weight: {WEIGHTS[2]}, block: {{num_blocks: 4, num_train: 2000, "
    "num_validation: 64, num_test: 64}}]"
)


def mix_config(data_dir, *extra):
    overrides = ["data.task=mix", f"data.seq_len={SEQ}", f"data.data_dir={data_dir}", MIXTURE]
    return load_config(None, [*overrides, *extra]).data


@pytest.fixture(scope="module")
def mix(data_dir):
    """(data config, builders, train source) of a three-task mixture."""
    cfg = mix_config(data_dir)
    builders = pipeline.prepare(cfg)
    return cfg, builders, pipeline.split_source(builders, cfg, "train", SEQ)


def take(dataset, count, state=None):
    """The first `count` elements of a dataset (from iterator state `state`) and the state
    after them."""
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()
    iterator = iter(dataset)
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator.get_state()


def assert_batches_equal(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def segments(batch):
    """inputs of every packed document of a batch, as bytes."""
    out = []
    for row in range(batch["inputs"].shape[0]):
        ids = batch["segment_ids"][row]
        out += [batch["inputs"][row][ids == seg].tobytes() for seg in np.unique(ids[ids > 0])]
    return out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.mixture=[{task: mqar}, {task: nope}]"],
            "data.mixture[1].task: got 'nope'; allowed",
        ),
        (["data.mixture=[{task: mqar, weight: 0}]"], "data.mixture[0].weight: got 0.0; must be"),
        (["data.mixture=[{task: mqar, weight: -1}]"], "data.mixture[0].weight: got -1.0; must be"),
        (["data.mixture=[]"], "data.mixture: empty; data.task: mix needs a list of members"),
        (["data.mixture=[{task: mqar, wieght: 1}]"], "data.mixture[0]: unknown key 'wieght'"),
        (["data.mixture=[{task: mqar, params: {n: 3}}]"], "[0].params of task mqar: unknown param"),
        (["data.mixture=[{task: niah, block: {n: 3}}]"], "[0].block: set, but this member's task"),
        (["data.mixture=[{task: niah, niah: {bogus: 3}}]"], "[0].niah: unknown key 'bogus'"),
        (["data.mixture=[{task: niah, niah: {length: 9}}]"], "[0].niah: length=9 is too short"),
        (["data.mixture=[{task: babi, params: {task: 9}}]"], "[0].babi: task must be between 1"),
        (["data.mixture=mqar"], "data.mixture must be a list of members"),
        (["data.mixture=[{task: mqar}]", "data.mixture.3.weight=1"], "data.mixture[3]: no such"),
        (["data.task=mqar", "data.mixture=[{task: mqar}]"], "data.mixture: set, but data.task"),
    ],
)
def test_bad_mixtures_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["data.task=mix", *overrides])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_override_changes_one_member(data_dir):
    cfg = mix_config(data_dir, "data.mixture.1.weight=2", "data.mixture.2.block.num_blocks=3")
    assert [m.weight for m in cfg.mixture] == [0.5, 2.0, 0.2]
    assert cfg.mixture[2].block.num_blocks == 3 and cfg.mixture[2].block.num_train == 2000
    assert cfg.mixture[0].mqar.length == 64
    legacy = mix_config(data_dir, "data.mixture.0.params.length=80")  # a pre-registry override
    assert legacy.mixture[0].mqar.length == 80 and legacy.mixture[0].mqar.num_pairs == 4


def test_bad_member_parameters_name_the_member_and_what_is_allowed(data_dir):
    with pytest.raises(
        ConfigError, match=r"data.mixture\[1\].params of task niah: unknown "
    ) as err:
        mix_config(data_dir, "data.mixture.1.params.bogus=1")
    assert "allowed: num_train, num_validation, num_test, seed, num_needles, num_asked" in str(
        err.value
    )
    with pytest.raises(ConfigError, match=r"data.mixture\[1\].niah: unknown key 'bogus'"):
        mix_config(data_dir, "data.mixture.1.niah.bogus=1")


def test_realised_proportions_match_the_weights(mix):
    _, _, source = mix
    count = 2 * mixture.WINDOW  # whole shuffle windows
    keys = np.array([pipeline.index_stream(source, 0)[i] for i in range(count)])
    members = source.member_of(keys)
    fractions = np.bincount(members, minlength=3) / count
    np.testing.assert_allclose(fractions, WEIGHTS, atol=0.02)
    for member in range(3):
        start, stop = source.offsets[member], source.offsets[member + 1]
        mine = keys[members == member]
        assert np.all((start <= mine) & (mine < stop))
        # every record of the member once per epoch (mqar and niah go round twice)
        times = np.bincount(mine - start, minlength=stop - start)
        assert times.max() - times.min() <= 1
        assert not np.array_equal(mine[:50], np.sort(mine[:50]))  # shuffled
    # mixed in random order, not a fixed pattern of members
    assert len({tuple(members[i : i + 10]) for i in range(0, count, 10)}) > 150


def test_the_stream_is_a_function_of_the_seed(mix):
    _, _, source = mix

    def first(seed):
        return [pipeline.index_stream(source, seed)[i] for i in range(300)]

    assert first(3) == first(3)
    assert first(3) != first(4)


def test_padded_batches_read_the_mixed_stream(mix):
    cfg, _, source = mix
    batches, _ = take(pipeline.train_dataset(source, cfg, SEQ, 8, seed=1), 5)
    stream = pipeline.index_stream(source, 1)
    keys = [stream[i] for i in range(40)]
    expected = [pipeline.read_batch(source, keys[i : i + 8], SEQ) for i in range(0, 40, 8)]
    assert_batches_equal(batches, expected)
    assert set(source.member_of(keys)) == {0, 1, 2}


@pytest.mark.parametrize("packing", ["pad", "pack"])
def test_resuming_from_iterator_state_gives_the_same_batches(mix, data_dir, packing):
    _, _, source = mix
    cfg = mix_config(data_dir, f"data.packing={packing}")
    dataset = pipeline.train_dataset(source, cfg, SEQ, 4, seed=2)
    _, state = take(dataset, 7)
    after, _ = take(dataset, 5, state)
    fresh = pipeline.train_dataset(source, cfg, SEQ, 4, seed=2)
    uninterrupted, _ = take(fresh, 12)
    assert_batches_equal(after, uninterrupted[7:])
    other_seed, _ = take(pipeline.train_dataset(source, cfg, SEQ, 4, seed=3), 12)
    assert not np.array_equal(other_seed[7]["inputs"], uninterrupted[7]["inputs"])


def test_processes_read_disjoint_shares(mix, data_dir):
    cfg, _, source = mix
    whole, _ = take(pipeline.train_dataset(source, cfg, SEQ, 4, seed=5), 3)
    parts = [take(pipeline.train_dataset(source, cfg, SEQ, 4, 5, p, 2), 3)[0] for p in (0, 1)]
    for step in range(3):
        np.testing.assert_array_equal(parts[0][step]["inputs"], whole[step]["inputs"][0::2])
        np.testing.assert_array_equal(parts[1][step]["inputs"], whole[step]["inputs"][1::2])
    packed = mix_config(data_dir, "data.packing=pack")
    shares = [
        {
            s
            for b in take(pipeline.train_dataset(source, packed, SEQ, 4, 5, p, 2), 3)[0]
            for s in segments(b)
        }
        for p in (0, 1)
    ]
    assert shares[0] and shares[1] and not shares[0] & shares[1]


def test_packed_rows_hold_whole_examples_of_every_member(mix, data_dir):
    _, _, source = mix
    cfg = mix_config(data_dir, "data.packing=pack")
    batches, _ = take(pipeline.train_dataset(source, cfg, SEQ, 4, seed=0), 8)
    stream = pipeline.index_stream(source, 0)
    keys = [stream[i] for i in range(400)]
    examples = {pipeline.to_example(source[k], SEQ, "drop")["inputs"].tobytes(): k for k in keys}
    packed = [s for b in batches for s in segments(b)]
    assert all(s in examples for s in packed)  # whole examples, read from the stream
    members = source.member_of([examples[s] for s in packed])
    assert set(members) == {0, 1, 2}
    assert all(b["inputs"].shape == (4, SEQ) for b in batches)


def test_evaluation_reads_each_member_by_weight(mix):
    cfg, builders, _ = mix
    source = pipeline.split_source(builders, cfg, "validation", SEQ)
    batches = pipeline.eval_batches(source, SEQ, 20, batch_size=4)
    rows = np.concatenate([b["inputs"] for b in batches])
    counts = [10, 6, 4]  # 20 x the weights
    expected = [
        member[i]
        for member, count in zip(source.sources, counts, strict=True)
        for i in range(count)
    ]
    assert len(rows) == 20
    for row, record in zip(rows, expected, strict=True):
        example = pipeline.to_example(record, SEQ, "drop")
        np.testing.assert_array_equal(row[: len(example["inputs"])], example["inputs"])
    assert [len(b["inputs"]) for b in batches] == [4, 4, 2, 4, 2, 4]  # never two members
    assert mixture.eval_ranges(source, 20) == [range(0, 10), range(20, 26), range(40, 44)]


def test_evaluation_leaves_text_out_unless_every_member_is_text():
    def source(tasks, sizes, weights):
        return mixture.MixtureSource([list(range(n)) for n in sizes], tasks, tasks, weights)

    mixed = source(["mqar", "text", "niah"], [30, 50, 40], [1.0, 2.0, 3.0])
    assert mixture.eval_ranges(mixed, 8) == [range(0, 2), range(80, 86)]
    text_only = source(["text", "text"], [30, 50], [1.0, 3.0])
    assert mixture.eval_ranges(text_only, 8) == [range(0, 2), range(30, 36)]
    assert mixture.eval_ranges(text_only, 1000) == [range(0, 30), range(30, 80)]  # all there is


def test_training_on_a_mixture_resumes_bitwise(tiny_config, tmp_path):
    two_tasks = (
        "data.mixture=[{task: mqar, weight: 0.6, mqar: {num_pairs: 4, key_len: 2, value_len: 2,"
        f" length: 64, num_train: 500, {SPLITS}}}}}, {{task: block, weight: 0.4, block: "
        "{num_blocks: 4, num_train: 2000, num_validation: 64, num_test: 64}}]"
    )
    mix_run = ["data.task=mix", two_tasks, "data.seq_len=64", "data.packing=pack"]
    cfg = tiny_config("checkpoint.every=100", *mix_run)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", until_step=3)
    train(cfg, tmp_path / "resumed")
    straight, resumed = (
        {r["step"]: r["loss"] for r in read_metrics(tmp_path / run)}
        for run in ("straight", "resumed")
    )
    assert list(straight) == list(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(4, 7):
        assert straight[step] == resumed[step], step  # the same batches after the restore
    assert read_metrics(tmp_path / "straight")[-1]["eval/examples"] == 32  # 19 mqar + 13 block
