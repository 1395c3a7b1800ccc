"""From a config to batches: build the task's TFDS dataset offline, read it with grain.

Records hold `tokens` [L+1] (BOS first) and `answer_mask` [L+1] (1 where the loss counts); a
model example is inputs = tokens[:-1], targets = tokens[1:], weights = answer_mask[1:]. Text
documents are cut into chunks of seq_len + 1 tokens; task examples longer than seq_len are
dropped or truncated (`data.too_long`). Rows are one padded example each (`data.packing: pad`) or
first-fit packs of several with `segment_ids` and per-document `positions` (`pack`).

Training data comes from a shuffled, repeated grain dataset whose iterator state is saved with
every checkpoint, so a resumed run sees exactly the batches it would have seen. Each process
reads only its own share: rows p, p + P, ... of every global batch when padding, the records
p, p + P, ... of the shuffled stream when packing. `data.task: mix` trains on a weighted mixture
of tasks read as one source (see `mixture`).

Opening a split counts its examples longer than seq_len from the records' token counts (cached
beside the build): process 0 prints one warning line if there are any, and a split whose every
example would be dropped is a ConfigError rather than a run without data.
"""

import inspect
import os
import sys

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from mta.config import ConfigError, DataConfig
from mta.data import block_task, mixture, text_corpus
from mta.data.tokenizer import PAD

FIELDS = ("inputs", "targets", "weights")


def _builders():
    """task -> (make builder config from params, prepare): imported late, they register TFDS."""
    from mta.data import tfds_babi, tfds_block_task, tfds_mqar, tfds_niah, tfds_text, tfds_vartrack

    return {
        "block": (tfds_block_task.block_task_config, tfds_block_task.prepare_block_task),
        "mqar": (tfds_mqar.mqar_config, tfds_mqar.prepare_mqar),
        "niah": (tfds_niah.niah_config, tfds_niah.prepare_niah),
        "babi": (tfds_babi.babi_config, tfds_babi.prepare_babi),
        "vartrack": (tfds_vartrack.vartrack_config, tfds_vartrack.prepare_vartrack),
        "text": (tfds_text.text_config, tfds_text.prepare_text),
    }


def prepare(cfg: DataConfig):
    """Builds (once) and returns the TFDS builder of the configured task (of a mixture: the
    list of its members' builders). With several processes, process 0 builds while the others
    wait, then they all open the build. ConfigError for bad task parameters or a bad corpus."""
    if jax.process_count() == 1:
        return _prepare(cfg)
    if jax.process_index() == 0:
        _prepare(cfg)
    multihost_utils.sync_global_devices("mta dataset built")
    return _prepare(cfg)


def _prepare(cfg: DataConfig):
    if cfg.task != "mix":
        return _prepare_task(cfg, "data")
    members = mixture.member_configs(cfg)
    return [_prepare_task(member, f"data.mixture[{i}]") for i, member in enumerate(members)]


def _prepare_task(cfg: DataConfig, key: str):
    """Builds one task (at config key `key`: data or data.mixture[i]); counts the tokens of its
    records when some could be longer than the rows."""
    make_config, build = _builders()[cfg.task]
    if cfg.task == "block":
        where, params = f"{key}.block", _block_params(cfg)
    else:
        where, params = f"{key}.params of task {cfg.task}", cfg.params
    allowed = list(inspect.signature(make_config).parameters)
    unknown = [name for name in params if name not in allowed]
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter {unknown[0]!r}; allowed: {', '.join(allowed)}"
        )
    try:
        config = make_config(**params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {' '.join(str(err).split())}") from None
    try:
        builder = build(config, os.path.expanduser(cfg.data_dir))
    except text_corpus.CorpusError as err:
        raise ConfigError(f"{where}: {' '.join(str(err).split())}") from None
    if _can_be_too_long(cfg, key):
        from mta.data import tfds_common

        for split in tfds_common.SPLITS:
            tfds_common.token_lengths(builder, split)
    return builder


def _block_params(cfg: DataConfig) -> dict:
    """The block task's builder parameters (num_blocks 0: as many as fit in length)."""
    b = cfg.block
    return {
        "n": b.n,
        "l": b.l,
        "variant": b.variant,
        "length": b.length,
        "num_blocks": b.num_blocks or None,
        "num_train": b.num_train,
        "num_validation": b.num_validation,
        "num_test": b.num_test,
        "seed": b.seed,
    }


def _can_be_too_long(cfg: DataConfig, key: str) -> bool:
    """False for text (cut into chunks of the row length) and for the padded block task on its
    own (its rows are as long as its examples)."""
    if cfg.task == "text":
        return False
    return not (key == "data" and cfg.task == "block" and cfg.packing == "pad")


def sequence_length(cfg: DataConfig) -> int:
    """Model input length T: `seq_len`, except for the padded block task, whose examples all
    have one length (BOS + prompt + answer, minus the last token, which is only a target).
    ValueError for a block task (also a mixture's) whose length fits no blocks."""
    if cfg.task == "mix":
        for index, member in enumerate(cfg.mixture):
            if member.task == "block":
                try:
                    _block_example_length(member.block)
                except ValueError as err:
                    raise ValueError(f"mixture[{index}].block: {err}") from None
        return cfg.seq_len
    if cfg.task != "block" or cfg.packing == "pack":
        return cfg.seq_len
    return _block_example_length(cfg.block)


def _block_example_length(b) -> int:
    """len(prompt) + len(answer) of the block task's examples (data.block or a member's)."""
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
    """The records of a split (text as chunks of seq_len + 1 tokens; a mixture as one
    `mixture.MixtureSource`). Process 0 warns (one line on stderr) about examples longer than
    seq_len; ConfigError if every example of the split (of a member) would be dropped."""
    if cfg.task != "mix":
        source, counts = _open(builder, cfg, "data", split, seq_len)
        _warn_too_long([counts] if counts else [], split, seq_len, cfg.too_long)
        return source
    members = mixture.member_configs(cfg)
    opened = [
        _open(member_builder, member, f"data.mixture[{i}]", split, seq_len)
        for i, (member_builder, member) in enumerate(zip(builder, members, strict=True))
    ]
    _warn_too_long([counts for _, counts in opened if counts], split, seq_len, cfg.too_long)
    tasks = [member.task for member in members]
    names = [f"{m.task}/{b.builder_config.name}" for m, b in zip(members, builder, strict=True)]
    weights = [member.weight for member in cfg.mixture]
    return mixture.MixtureSource([source for source, _ in opened], tasks, names, weights)


def _open(builder, cfg: DataConfig, key: str, split: str, seq_len: int):
    """(source, (name, too long, examples) or None) of one task's split; see split_source."""
    source = builder.as_data_source()[split]
    if cfg.task == "text":
        return TextChunks(source, seq_len + 1), None
    if not _can_be_too_long(cfg, key):
        return source, None
    from mta.data import tfds_common

    lengths = tfds_common.token_lengths(builder, split)
    too_long = int(np.sum(lengths - 1 > seq_len))
    name = f"{cfg.task}/{builder.builder_config.name}"
    if too_long == len(lengths) and cfg.too_long == "drop":
        where = "" if key == "data" else f" ({key})"
        raise ConfigError(
            f"data.seq_len: every {split} example of {name}{where} is longer than {seq_len} "
            f"tokens (the shortest has {int(lengths.min()) - 1}), so data.too_long=drop would "
            f"leave nothing to read; set data.seq_len >= {int(lengths.max()) - 1} or "
            "data.too_long=truncate"
        )
    return source, (name, too_long, len(lengths))


def _warn_too_long(counts: list[tuple[str, int, int]], split: str, seq_len: int, too_long: str):
    """One stderr line from process 0 if any (name, too long, examples) count is not zero."""
    long_total = sum(count for _, count, _ in counts)
    if not long_total or jax.process_index() != 0:
        return
    total = sum(size for _, _, size in counts)
    action = "skipped" if too_long == "drop" else "cut (any answer past the cut is lost)"
    detail = ", ".join(f"{name} {count}/{size}" for name, count, size in counts if count)
    print(
        f"warning: data.too_long={too_long}: {long_total} of {total} {split} examples "
        f"({100 * long_total / total:.1f}%) are longer than data.seq_len={seq_len} tokens and "
        f"are {action}: {detail}",
        file=sys.stderr,
    )


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


def index_stream(source, seed: int) -> grain.MapDataset:
    """Infinite MapDataset of record indices of `source`, reshuffled every epoch from `seed`
    (a mixture's: its members mixed by weight, see `mixture.index_stream`)."""
    if isinstance(source, mixture.MixtureSource):
        return mixture.index_stream(source, seed)
    return grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()


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
    indices = index_stream(source, seed)
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


def train_iterator(builder, cfg: DataConfig, seq_len: int, global_batch: int, seed: int):
    """This process's iterator over train_dataset of the builder's train split: dicts of
    [B / processes, T] arrays; grain-checkpointable (saved with the model)."""
    source = split_source(builder, cfg, "train", seq_len)
    dataset = train_dataset(
        source, cfg, seq_len, global_batch, seed, jax.process_index(), jax.process_count()
    )
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()
    return iter(dataset)


def _rename_packing_fields(batch: dict) -> dict:
    """grain's packing emits per-feature `<name>_segment_ids` / `<name>_positions`; the model
    takes one `segment_ids` and one `positions` ([B, T] int32)."""
    return {
        **{key: batch[key] for key in FIELDS},
        "segment_ids": batch["inputs_segment_ids"].astype(np.int32),
        "positions": batch["inputs_positions"].astype(np.int32),
    }


def eval_batches(source, seq_len: int, num_examples: int, batch_size: int, too_long="drop"):
    """The first `num_examples` of a split in order, as padded batches (the last one smaller).

    A mixture is evaluated on every member (but text, whose chunks are never exact matches):
    its first round(num_examples * weight / sum of weights) examples (at least one), member
    after member, a batch never holding two members; so eval/* measure the mixture that is
    trained on (see `mixture.eval_ranges`).
    """
    if isinstance(source, mixture.MixtureSource):
        ranges = mixture.eval_ranges(source, num_examples)
    else:
        ranges = [range(min(num_examples, len(source)))]
    return [
        read_batch(source, keys[i : i + batch_size], seq_len, too_long)
        for keys in ranges
        for i in range(0, len(keys), batch_size)
    ]
