"""The grain pipeline: padding, first-fit packing, per-process shares, and packed == unpacked
through the MTA model."""

import grain
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mta.config import ConfigError, load_config
from mta.data import mixture, pipeline
from mta.model import Transformer
from mta.resolve import resolve_model

SEQ = 48


@pytest.fixture(scope="module")
def text(data_dir):
    cfg = load_config(None, ["data.task=text", f"data.seq_len={SEQ}", f"data.data_dir={data_dir}"])
    builders = pipeline.prepare(cfg.data)
    source = pipeline.split_source(builders, cfg.data, "train", SEQ)  # a mixture of one
    assert len(source.sources) == 1 and len(source) == len(source.sources[0])
    return cfg, source.sources[0]


def take(dataset, count):
    iterator = iter(dataset.to_iter_dataset() if hasattr(dataset, "to_iter_dataset") else dataset)
    return [next(iterator) for _ in range(count)]


def segments(batch):
    """(inputs, targets, weights, positions) of every packed document in a batch."""
    out = []
    for row in range(batch["inputs"].shape[0]):
        ids = batch["segment_ids"][row]
        for seg in np.unique(ids[ids > 0]):
            where = ids == seg
            out.append(tuple(batch[k][row][where] for k in (*pipeline.FIELDS, "positions")))
    return out


def test_text_chunks_cover_every_document_exactly(text):
    _, chunks = text
    by_record = {}
    for i in range(len(chunks)):
        record = int(chunks.records[i])
        piece = chunks[i]["tokens"]
        assert 2 <= len(piece) <= SEQ + 1
        by_record.setdefault(record, []).append(piece)
    for record, pieces in list(by_record.items())[:20]:
        whole = chunks.source[record]["tokens"]
        # consecutive chunks overlap by one token: the last target is the next input
        rebuilt = np.concatenate([pieces[0]] + [p[1:] for p in pieces[1:]])
        np.testing.assert_array_equal(rebuilt, whole)


def test_packing_keeps_whole_examples_with_restarting_positions(text):
    cfg, chunks = text
    packed_cfg = load_config(None, ["data.task=text", f"data.seq_len={SEQ}", "data.packing=pack"])
    batches = take(pipeline.train_dataset(chunks, packed_cfg.data, SEQ, 4, seed=3), 6)
    examples = [pipeline.to_example(chunks[i], SEQ, "drop") for i in range(len(chunks))]
    known = {e["inputs"].tobytes(): e for e in examples}
    seen = []
    for batch in batches:
        assert batch["inputs"].shape == (4, SEQ) and batch["segment_ids"].shape == (4, SEQ)
        for inputs, targets, weights, positions in segments(batch):
            example = known[inputs.tobytes()]  # a whole example, never a piece of one
            np.testing.assert_array_equal(targets, example["targets"])
            np.testing.assert_array_equal(weights, example["weights"])
            np.testing.assert_array_equal(positions, np.arange(len(inputs)))
            seen.append(inputs.tobytes())
        assert np.all(batch["weights"][batch["segment_ids"] == 0] == 0)
    # the shuffled stream the packer consumes, in order
    order = grain.MapDataset.range(len(chunks)).seed(3).shuffle().repeat()
    stream = [examples[order[i]]["inputs"].tobytes() for i in range(len(seen) + 4)]
    assert len(set(seen)) == len(seen)  # nothing twice
    assert set(seen) <= set(stream)  # taken in stream order: nothing skipped


def test_processes_read_disjoint_shares_of_each_batch(text):
    cfg, chunks = text
    whole = take(pipeline.train_dataset(chunks, cfg.data, SEQ, 4, seed=1), 3)
    parts = [take(pipeline.train_dataset(chunks, cfg.data, SEQ, 4, 1, p, 2), 3) for p in (0, 1)]
    for step in range(3):
        rows = {r.tobytes() for p in parts for r in p[step]["inputs"]}
        assert len(rows) == 4 and rows == {r.tobytes() for r in whole[step]["inputs"]}
    packed_cfg = load_config(None, ["data.task=text", f"data.seq_len={SEQ}", "data.packing=pack"])
    shares = [
        {
            s[0].tobytes()
            for b in take(pipeline.train_dataset(chunks, packed_cfg.data, SEQ, 4, 1, p, 2), 3)
            for s in segments(b)
        }
        for p in (0, 1)
    ]
    assert shares[0] and shares[1] and not shares[0] & shares[1]


def test_packed_rows_give_the_same_per_token_loss_as_documents_alone(text):
    _, chunks = text
    packed_cfg = load_config(None, ["data.task=text", f"data.seq_len={SEQ}", "data.packing=pack"])
    short_chunks = pipeline.TextChunks(chunks.source, 17)  # several documents per row
    batch = take(pipeline.train_dataset(short_chunks, packed_cfg.data, SEQ, 2, seed=0), 1)[0]
    model_cfg = load_config(
        None,
        [
            "model.dim=32",
            "model.num_layers=2",
            "model.num_heads=4",
            "model.mlp_hidden=64",
            "model.attention.kq_pre.enabled=true",
            "model.attention.kq_pre.c_q=3",
            "model.attention.kq_pre.c_k=3",
            "model.attention.kq_post.enabled=true",
            "model.attention.kq_post.c_q=3",
            "model.attention.kq_post.c_k=3",
            "model.attention.head_pre=linear",
            "model.attention.head_post=grouped",
            "model.attention.head_group_size=2",
            "model.attention.group_norm=gating",
            "model.attention.kernel_init=uniform",
        ],
    ).model
    model = Transformer(resolve_model(model_cfg), nnx.Rngs(0))

    def token_loss(inputs, targets, positions=None, segment_ids=None):
        logits = model(jnp.asarray(inputs), positions, segment_ids)
        return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

    packed = token_loss(batch["inputs"], batch["targets"], batch["positions"], batch["segment_ids"])
    assert len(segments(batch)) >= 3
    for row in range(2):
        ids = batch["segment_ids"][row]
        for seg in np.unique(ids[ids > 0]):
            where = ids == seg
            alone = token_loss(
                batch["inputs"][row][where][None], batch["targets"][row][where][None]
            )
            np.testing.assert_allclose(packed[row][where], alone[0], rtol=1e-5, atol=1e-5)


def test_too_long_examples_are_dropped_or_truncated():
    record = {"tokens": np.arange(10), "answer_mask": np.ones(10)}
    assert pipeline.to_example(record, 5, "drop") is None
    truncated = pipeline.to_example(record, 5, "truncate")
    np.testing.assert_array_equal(truncated["inputs"], np.arange(5))
    np.testing.assert_array_equal(truncated["targets"], np.arange(1, 6))
    short = {"tokens": np.arange(4), "answer_mask": np.ones(4)}
    batch = pipeline.read_batch(_Source([record, short]), [0, 1], 5, "drop")
    assert batch["weights"][0].sum() == 0 and batch["weights"][1].sum() == 3


class _Source(list):
    def __getitems__(self, indices):
        return [self[i] for i in indices]


def test_bad_task_settings_are_one_line():
    with pytest.raises(ConfigError, match="unknown key 'data.niah.bogus'; allowed here: num_tr"):
        load_config(None, ["data.task=niah", "data.niah.bogus=1"])
    with pytest.raises(ConfigError, match="^data.niah: num_asked must be between 1 and 2, got 3$"):
        load_config(None, ["data.task=niah", "data.niah.num_asked=3"])
    with pytest.raises(ConfigError, match="data.params of task niah: unknown parameter 'bogus'"):
        load_config(None, ["data.task=niah", "data.params={bogus: 1}"])  # the pre-registry form


def test_a_single_task_streams_as_before_the_registry(text):
    """A mixture of one streams its records exactly as a single task always has, so runs
    written before the registry resume onto the same batches."""
    _, chunks = text
    wrapped = mixture.MixtureSource([chunks], ["text"], ["text"], [1.0])
    plain = grain.MapDataset.range(len(chunks)).seed(7).shuffle().repeat()
    assert [wrapped.index_stream(7)[i] for i in range(50)] == [plain[i] for i in range(50)]
    assert mixture.eval_ranges(wrapped, 10) == [range(10)]


@pytest.mark.parametrize("packing", ["pad", "pack"])
def test_train_loss_all_weights_every_target_of_an_example(data_dir, packing):
    """data.train_loss=all: weight 1 on every target of every example (0 on padding); answer:
    the answer's targets only, a strict subset."""
    weights = {}
    for loss in ("answer", "all"):
        settings = [
            "data.task=mqar",
            "data.mqar.num_train=64",
            "data.mqar.num_pairs=2",
            "data.mqar.length=32",
            f"data.data_dir={data_dir}",
            f"data.packing={packing}",
            f"data.train_loss={loss}",
            "data.seq_len=40",
        ]
        cfg = load_config(None, settings)
        source = pipeline.split_source(pipeline.prepare(cfg.data), cfg.data, "train", 40)
        batch = take(pipeline.train_dataset(source, cfg.data, 40, 4, seed=0), 1)[0]
        weights[loss] = batch["weights"]
        if loss == "all":  # packed: where a segment is; padded: the example's 32 targets
            in_example = batch["segment_ids"] > 0 if packing == "pack" else np.arange(40) < 31
            np.testing.assert_array_equal(batch["weights"], np.broadcast_to(in_example, (4, 40)))
    answer, every = weights["answer"], weights["all"]
    assert np.all(answer <= every) and 0 < answer.sum() < every.sum()
