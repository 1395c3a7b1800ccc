"""From a config to batches: build the task's TFDS dataset offline, read it with grain.

Records hold `tokens` [L+1] (BOS first) and `answer_mask` [L+1] (1 where the loss counts); a
model example is inputs = tokens[:-1], targets = tokens[1:], weights = answer_mask[1:]. Text
documents are cut into chunks of seq_len + 1 tokens; task examples longer than seq_len are
dropped or truncated (`data.too_long`). Rows are one padded example each (`data.packing: pad`) or
first-fit packs of several with `segment_ids` and per-document `positions` (`pack`).

Training data comes from a shuffled, repeated grain dataset whose iterator state is saved with
every checkpoint, so a resumed run sees exactly the batches it would have seen. Each process
reads only its own share: rows p, p + P, ... of every global batch when padding, the records
p, p + P, ... of the shuffled stream when packing.
"""

import os

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from mta.config import ConfigError, DataConfig
from mta.data import block_task
from mta.data.tokenizer import PAD

FIELDS = ("inputs", "targets", "weights")


def _builders():
    """task -> (make builder config from params, prepare): imported late, they register TFDS."""
    from mta.data import tfds_babi, tfds_mqar, tfds_niah, tfds_text, tfds_vartrack

    return {
        "mqar": (tfds_mqar.mqar_config, tfds_mqar.prepare_mqar),
        "niah": (tfds_niah.niah_config, tfds_niah.prepare_niah),
        "babi": (tfds_babi.babi_config, tfds_babi.prepare_babi),
        "vartrack": (tfds_vartrack.vartrack_config, tfds_vartrack.prepare_vartrack),
        "text": (tfds_text.text_config, tfds_text.prepare_text),
    }


def prepare(cfg: DataConfig):
    """Builds (once) and returns the TFDS builder of the configured task. With several
    processes, process 0 builds while the others wait, then they all open the build."""
    if jax.process_count() == 1:
        return _prepare(cfg)
    if jax.process_index() == 0:
        _prepare(cfg)
    multihost_utils.sync_global_devices("mta dataset built")
    return _prepare(cfg)


def _prepare(cfg: DataConfig):
    data_dir = os.path.expanduser(cfg.data_dir)
    if cfg.task == "block":
        from mta.data import tfds_block_task

        b = cfg.block
        config = tfds_block_task.block_task_config(
            n=b.n,
            l=b.l,
            variant=b.variant,
            length=b.length,
            num_blocks=b.num_blocks or None,
            num_train=b.num_train,
            num_validation=b.num_validation,
            num_test=b.num_test,
            seed=b.seed,
        )
        return tfds_block_task.prepare_block_task(config, data_dir)
    make_config, build = _builders()[cfg.task]
    try:
        config = make_config(**cfg.params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.params of task {cfg.task}: {' '.join(str(err).split())}") from None
    return build(config, data_dir)


def sequence_length(cfg: DataConfig) -> int:
    """Model input length T: `seq_len`, except for the padded block task, whose examples all
    have one length (BOS + prompt + answer, minus the last token, which is only a target)."""
    if cfg.task != "block" or cfg.packing == "pack":
        return cfg.seq_len
    b = cfg.block
    num_blocks = b.num_blocks or block_task.blocks_for_length(b.n, b.l, b.variant, b.length)
    return block_task.example_length(b.n, b.l, b.variant, num_blocks)


class TextChunks:
    """A random-access view of a text split as chunks of at most `chunk_len` tokens (the last
    chunk of a document may be shorter). Indexing the chunks reads each record's length once."""

    def __init__(self, source, chunk_len: int):
        self.source, self.chunk_len = source, chunk_len
        self.index = [
            (record, start)
            for record in range(len(source))
            for start in range(0, max(len(source[record]["tokens"]) - 1, 1), chunk_len - 1)
        ]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        record, start = self.index[i]
        item = self.source[record]
        end = start + self.chunk_len
        return {"tokens": item["tokens"][start:end], "answer_mask": item["answer_mask"][start:end]}

    def __getitems__(self, indices):
        return [self[i] for i in indices]


def split_source(builder, cfg: DataConfig, split: str, seq_len: int):
    """The records of a split; text as chunks of seq_len + 1 tokens."""
    source = builder.as_data_source()[split]
    return TextChunks(source, seq_len + 1) if cfg.task == "text" else source


def to_example(record: dict, seq_len: int, too_long: str) -> dict | None:
    """One record -> inputs/targets/weights of its own length (<= seq_len); None if it is too
    long and too_long == "drop"."""
    tokens, mask = np.asarray(record["tokens"]), np.asarray(record["answer_mask"])
    if len(tokens) - 1 > seq_len:
        if too_long == "drop":
            return None
        tokens, mask = tokens[: seq_len + 1], mask[: seq_len + 1]
    return {
        "inputs": tokens[:-1].astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "weights": mask[1:].astype(np.float32),
    }


def pad_batch(examples: list[dict], seq_len: int) -> dict:
    """Examples of lengths <= seq_len -> [len(examples), seq_len] arrays, PAD and weight 0 after."""
    batch = {
        "inputs": np.full((len(examples), seq_len), PAD, np.int32),
        "targets": np.full((len(examples), seq_len), PAD, np.int32),
        "weights": np.zeros((len(examples), seq_len), np.float32),
    }
    for row, example in enumerate(examples):
        for key in FIELDS:
            batch[key][row, : len(example[key])] = example[key]
    return batch


def read_batch(source, indices, seq_len: int, too_long: str = "drop") -> dict:
    """Records `indices` of a source, padded to [len(indices), seq_len]; a dropped (too long)
    example becomes an all-PAD row with weight 0, so batch shapes never change."""
    empty = {"inputs": [], "targets": [], "weights": []}
    examples = [to_example(r, seq_len, too_long) for r in source.__getitems__(list(indices))]
    return pad_batch([e if e is not None else empty for e in examples], seq_len)


def train_dataset(
    source,
    cfg: DataConfig,
    seq_len: int,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
):
    """Infinite grain dataset of this process's [B / processes, T] part of each global batch
    (with `segment_ids` and `positions` when packing). Every epoch is reshuffled from `seed`."""
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} must divide over {process_count} processes")
    local_batch = global_batch // process_count
    indices = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()
    if cfg.packing == "pad":
        batches = indices.batch(global_batch, drop_remainder=True)
        return batches.map(
            lambda idx: read_batch(source, idx[process_index::process_count], seq_len, cfg.too_long)
        )
    records = indices[process_index::process_count].map(
        lambda i: to_example(source[int(i)], seq_len, cfg.too_long)
    )
    examples = records.filter(lambda e: e is not None).to_iter_dataset()
    packed = grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct=dict.fromkeys(FIELDS, seq_len),
        num_packing_bins=local_batch,
        seed=seed,
    )
    return packed.batch(local_batch, drop_remainder=True).map(_rename_packing_fields)


def _rename_packing_fields(batch: dict) -> dict:
    """grain's packing emits per-feature `<name>_segment_ids` / `<name>_positions`; the model
    takes one `segment_ids` and one `positions` ([B, T] int32)."""
    return {
        **{key: batch[key] for key in FIELDS},
        "segment_ids": batch["inputs_segment_ids"].astype(np.int32),
        "positions": batch["inputs_positions"].astype(np.int32),
    }


def eval_batches(source, seq_len: int, num_examples: int, batch_size: int, too_long="drop"):
    """The first `num_examples` of a split in order, as padded batches (the last one smaller)."""
    count = min(num_examples, len(source))
    starts = range(0, count, batch_size)
    return [
        read_batch(source, range(i, min(i + batch_size, count)), seq_len, too_long) for i in starts
    ]
