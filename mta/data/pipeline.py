"""From a config to batches: build the TFDS dataset offline, read it with grain.

Training batches come from a shuffled, repeated grain MapDataset; its iterator's state is saved
with every checkpoint, so a resumed run sees exactly the batches it would have seen. Each process
reads only its own shard of every global batch.
"""

import os

import grain
import numpy as np

from mta.config import ConfigError, DataConfig
from mta.data import block_task
from mta.data.tokenizer import PAD


def prepare(cfg: DataConfig):
    """Builds (once) and returns the TFDS builder of the configured task."""
    if cfg.task != "block":
        raise ConfigError(f"data.task: {cfg.task!r} has no data pipeline yet; use block")
    from mta.data import tfds_block_task  # imported late: registers the builder with TFDS

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
    return tfds_block_task.prepare_block_task(config, os.path.expanduser(cfg.data_dir))


def sequence_length(cfg: DataConfig) -> int:
    """Model input length T: `seq_len` for text; for the block task BOS + prompt + answer minus
    the last token, which is only a target."""
    if cfg.task == "text":
        return cfg.seq_len
    b = cfg.block
    num_blocks = b.num_blocks or block_task.blocks_for_length(b.n, b.l, b.variant, b.length)
    return block_task.example_length(b.n, b.l, b.variant, num_blocks)


def read_batch(source, indices, seq_len: int) -> dict:
    """Records `indices` of a TFDS data source (tokens/answer_mask [T+1]) -> inputs, targets,
    weights [len(indices), seq_len], padded with PAD and weight 0."""
    records = source.__getitems__(list(indices))
    inputs = np.full((len(records), seq_len), PAD, np.int32)
    targets = np.full((len(records), seq_len), PAD, np.int32)
    weights = np.zeros((len(records), seq_len), np.float32)
    for row, record in enumerate(records):
        tokens, mask = record["tokens"], record["answer_mask"]
        length = len(tokens) - 1
        if length > seq_len:
            raise ValueError(f"example of {length} tokens exceeds sequence length {seq_len}")
        inputs[row, :length] = tokens[:-1]
        targets[row, :length] = tokens[1:]
        weights[row, :length] = mask[1:]
    return {"inputs": inputs, "targets": targets, "weights": weights}


def train_dataset(
    builder,
    seq_len: int,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Infinite dataset of this process's part of each global batch ([B / processes, T] arrays).

    Every epoch is shuffled anew from `seed`; process p reads rows p, p + P, ... of each batch.
    """
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} must divide over {process_count} processes")
    source = builder.as_data_source()["train"]
    indices = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()
    batches = indices.batch(global_batch, drop_remainder=True)
    return batches.map(lambda idx: read_batch(source, idx[process_index::process_count], seq_len))


def eval_batches(builder, split: str, seq_len: int, num_examples: int, batch_size: int):
    """The first `num_examples` of a split in order, as a list of batches (last one smaller)."""
    source = builder.as_data_source()[split]
    count = min(num_examples, len(source))
    starts = range(0, count, batch_size)
    return [read_batch(source, range(i, min(i + batch_size, count)), seq_len) for i in starts]
