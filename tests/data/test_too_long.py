"""Examples longer than data.seq_len: counted from the records' token counts when a split is
opened, reported in one warning line, and a ConfigError when nothing would be left."""

import numpy as np
import pytest

from mta.config import ConfigError, load_config
from mta.data import pipeline, tfds_common

# bAbI QA1 without filler: 98 to ~360 tokens, so some seq_len drops part of the examples.
BABI = "data.babi={task: 1, length: 0, num_train: 300, num_validation: 20, num_test: 20}"


def babi_config(data_dir, seq_len, *extra):
    overrides = ["data.task=babi", BABI, f"data.seq_len={seq_len}", f"data.data_dir={data_dir}"]
    return load_config(None, [*overrides, *extra]).data


@pytest.fixture(scope="module")
def babi(data_dir):
    """([builder], token count of every train record, read by decoding each record)."""
    builders = pipeline.prepare(babi_config(data_dir, 200))
    source = builders[0].as_data_source()["train"]
    return builders, np.array([len(source[i]["tokens"]) for i in range(len(source))])


def test_token_lengths_are_exact_and_cached(babi, monkeypatch):
    (builder,), lengths = babi
    np.testing.assert_array_equal(tfds_common.token_lengths(builder, "train"), lengths)
    monkeypatch.setattr(tfds_common, "_count_tokens", lambda source: 1 / 0)  # not counted again
    np.testing.assert_array_equal(tfds_common.token_lengths(builder, "train"), lengths)


@pytest.mark.parametrize("too_long, action", [("drop", "skipped"), ("truncate", "cut")])
def test_too_long_examples_are_counted_in_one_warning_line(
    babi, data_dir, capsys, too_long, action
):
    builder, lengths = babi
    cfg = babi_config(data_dir, 200, f"data.too_long={too_long}")
    source = pipeline.split_source(builder, cfg, "train", 200)
    count = int(np.sum(lengths - 1 > 200))
    assert 0 < count < len(lengths)
    # the count is what the pipeline then drops (or cuts)
    dropped = sum(pipeline.to_example(source[i], 200, "drop") is None for i in range(len(source)))
    assert dropped == count
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    percent = f"{100 * count / len(lengths):.1f}%"
    assert lines[0].startswith(f"warning: data.too_long={too_long}: {count} of 300 train examples")
    assert f"({percent}) are longer than data.seq_len=200 tokens and are {action}" in lines[0]


def test_no_warning_when_everything_fits_or_from_other_processes(
    babi, data_dir, capsys, monkeypatch
):
    builder, lengths = babi
    longest = int(lengths.max()) - 1
    pipeline.split_source(builder, babi_config(data_dir, longest), "train", longest)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(pipeline.jax, "process_index", lambda: 1)
    pipeline.split_source(builder, babi_config(data_dir, 200), "train", 200)
    assert capsys.readouterr().err == ""


def test_dropping_every_example_is_a_config_error(babi, data_dir):
    builder, lengths = babi
    cfg = babi_config(data_dir, 50)
    with pytest.raises(ConfigError) as error:
        pipeline.split_source(builder, cfg, "train", 50)
    message = str(error.value)
    assert message.startswith("data.seq_len: every train example of babi/qa1_len0")
    assert f"the shortest has {int(lengths.min()) - 1}" in message
    assert f"data.seq_len >= {int(lengths.max()) - 1} or data.too_long=truncate" in message
    assert "\n" not in message
    truncated = babi_config(data_dir, 50, "data.too_long=truncate")
    assert len(pipeline.split_source(builder, truncated, "train", 50)) == len(lengths)


def test_a_mixture_member_that_would_be_dropped_whole_is_named(data_dir, capsys):
    mixture = (
        "data.mixture=[{task: mqar, mqar: {num_pairs: 4, key_len: 2, value_len: 2, length: 64,"
        " num_train: 500, num_validation: 20, num_test: 20}}, {task: niah, niah: {num_needles:"
        " 1, length: 200, num_train: 300, num_validation: 20, num_test: 20}}]"
    )
    overrides = ["data.task=mix", mixture, "data.seq_len=100", f"data.data_dir={data_dir}"]
    cfg = load_config(None, overrides).data
    builders = pipeline.prepare(cfg)
    with pytest.raises(ConfigError, match=r"every train example of niah/\S+ \(data.mixture\[1\]\)"):
        pipeline.split_source(builders, cfg, "train", 100)
    cfg = load_config(None, [*overrides, "data.too_long=truncate"]).data
    pipeline.split_source(builders, cfg, "train", 100)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "300 of 800 train examples (37.5%)" in line and line.endswith(
        "niah/n1_r1_len200_noise_train300_val20_test20 300/300"
    )
