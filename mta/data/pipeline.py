"""From a config to batches: build the TFDS dataset offline, read it with grain.

Training batches come from a shuffled, repeated grain MapDataset; its iterator's state is saved
with every checkpoint, so a resumed run sees exactly the batches it would have seen. Each process
reads only its own shard of every global batch.
"""

import os

import grain
import numpy as np

from mta.config import DataConfig
from mta.data import block_task
from mta.data.tokenizer import PAD


def prepare(cfg: DataConfig):
    """Builds (once) and returns the TFDS builder of the configured task."""
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
    """Model input length T of the configured task (BOS + prompt + answer, minus the last token
    that is only a target)."""
    b = cfg.block
    num_blocks = b.num_blocks or block_task.blocks_for_length(b.n, b.l, b.variant, b.length)
    return block_task.example_length(b.n, b.l, b.variant, num_blocks)


def to_model_example(record: dict, seq_len: int) -> dict:
    """tokens/answer_mask [T+1] -> inputs, targets, weights [seq_len] (padded with PAD, weight 0)."""
    tokens = np.asarray(record["tokens"], np.int32)
    mask = np.asarray(record["answer_mask"], np.float32)
    if len(tokens) - 1 > seq_len:
        raise ValueError(f"example of {len(tokens) - 1} tokens exceeds sequence length {seq_len}")
    pad = seq_len - (len(tokens) - 1)
    return {
        "inputs": np.pad(tokens[:-1], (0, pad), constant_values=PAD),
        "targets": np.pad(tokens[1:], (0, pad), constant_values=PAD),
        "weights": np.pad(mask[1:], (0, pad)),
    }


def train_dataset(
    builder,
    seq_len: int,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Infinite dataset of this process's part of each global batch ([B / processes, T] arrays).

    Every epoch is shuffled anew from `seed`; process p takes rows p, p + P, ... of each batch.
    """
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} must divide over {process_count} processes")
    source = builder.as_data_source()["train"]
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    ds = ds.map(lambda record: to_model_example(record, seq_len))
    ds = ds.batch(global_batch, drop_remainder=True)
    return ds.map(lambda batch: {k: v[process_index::process_count] for k, v in batch.items()})


def eval_batches(builder, split: str, seq_len: int, num_examples: int, batch_size: int):
    """The first `num_examples` of a split in order, as a list of batches (last one smaller)."""
    source = builder.as_data_source()[split]
    count = min(num_examples, len(source))
    examples = [to_model_example(source[i], seq_len) for i in range(count)]
    return [
        {k: np.stack([e[k] for e in examples[i : i + batch_size]]) for k in examples[0]}
        for i in range(0, count, batch_size)
    ]
