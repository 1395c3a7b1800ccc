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
of tasks; every config is read as one `mixture.MixtureSource` (a single task: a mixture of
one), so nothing below `split_source` knows which it is. The tasks come from the registry
(`mta/data/tasks`): each names its TFDS config function, its build and its settings.

Opening a split counts its examples longer than seq_len from the records' token counts (cached
beside the build): process 0 prints one warning line if there are any, and a split whose every
example would be dropped is a ConfigError rather than a run without data.
"""

import os
import sys

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from mta.config import Config, ConfigError, DataConfig
from mta.data import mixture, tokenizers
from mta.data.mixture import Member
from mta.data.tokenizer import PAD

FIELDS = ("inputs", "targets", "weights")


def load_tokenizer(cfg: DataConfig) -> tokenizers.Tokenizer:
    """The tokenizer of `data.tokenizer`; ConfigError (one line naming the file) if its file
    is missing, unreadable or of another kind."""
    try:
        return tokenizers.load_tokenizer(cfg.tokenizer)
    except tokenizers.TokenizerError as err:
        raise ConfigError(f"data.tokenizer.path: {err}") from None


def configured_tokenizer(cfg: Config) -> tokenizers.Tokenizer:
    """`load_tokenizer(cfg.data)`, checked to fit the model: ConfigError unless
    model.vocab_size >= its vocabulary."""
    tok = load_tokenizer(cfg.data)
    if cfg.model.vocab_size < tok.vocab_size:
        raise ConfigError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the vocabulary of the "
            f"{tok.describe()}; set model.vocab_size >= {tok.vocab_size}"
        )
    return tok


def prepare(cfg: DataConfig) -> list:
    """Builds (once) and returns the TFDS builders of the configured task(s): one per member of
    `mixture.members(cfg)` (a single task is one). With several processes, process 0 builds
    while the others wait, then they all open the build. ConfigError for impossible task
    settings or a bad corpus."""
    if jax.process_count() == 1:
        return _prepare(cfg)
    if jax.process_index() == 0:
        _prepare(cfg)
    multihost_utils.sync_global_devices("mta dataset built")
    return _prepare(cfg)


def _prepare(cfg: DataConfig) -> list:
    return [_prepare_member(cfg, member) for member in mixture.members(cfg)]


def _prepare_member(cfg: DataConfig, member: Member):
    """Builds one task from its settings (at config key `member.key`.<task>); counts the
    tokens of its records when some could be longer than the rows."""
    where = member.key if member.task.name == "corpus" else f"{member.key}.{member.task.name}"
    load_tokenizer(cfg)
    try:
        config = member.task.make_config(**member.settings.builder_params())
        config = _with_tokenizer(config, cfg)
        builder = member.task.prepare(config, os.path.expanduser(cfg.data_dir))
    except (TypeError, ValueError) as err:  # CorpusError is a ValueError
        raise ConfigError(f"{where}: {' '.join(str(err).split())}") from None
    if _can_be_too_long(cfg, member):
        from mta.data import tfds_common  # imports TFDS: only where a build is read

        for split in tfds_common.SPLITS:
            tfds_common.token_lengths(builder, split)
    return builder


def _with_tokenizer(config, cfg: DataConfig):
    """A task's TFDS config with data.tokenizer's tokens (unchanged for the byte tokenizer, so
    byte builds keep their names)."""
    if cfg.tokenizer.kind == "byte":
        return config
    from mta.data import tfds_common

    return tfds_common.with_tokenizer(config, tokenizers.spec(cfg.tokenizer))


def _fixed_length(cfg: DataConfig, member: Member) -> int | None:
    """The row length of a padded single task whose examples all have one length (block, byte
    tokens; other tokenizers give them lengths that vary), else None."""
    if member.key != "data" or cfg.packing != "pad" or cfg.tokenizer.kind != "byte":
        return None
    return member.settings.example_length()


def _can_be_too_long(cfg: DataConfig, member: Member) -> bool:
    """False for documents (cut into chunks of the row length) and for a padded single task of
    fixed-length examples (its rows are as long as its examples)."""
    return not member.task.documents and _fixed_length(cfg, member) is None


def sequence_length(cfg: DataConfig) -> int:
    """Model input length T: `seq_len`, except for a padded single task whose examples all have
    one length (block: BOS + prompt + answer, minus the last token, which is only a target)."""
    return _fixed_length(cfg, mixture.members(cfg)[0]) or cfg.seq_len


class TextChunks(mixture.Source):
    """A random-access view of a text split as chunks of at most `chunk_len` tokens (the last
    chunk of a document may be shorter), indexed from the records' token counts (`lengths`,
    int [records]; None: read from the records). Records without `answer_mask` (corpus) count
    the loss on every token."""

    def __init__(self, source, chunk_len: int, lengths: np.ndarray | None = None):
        self.source, self.chunk_len = source, chunk_len
        if lengths is None:
            lengths = np.array([len(source[r]["tokens"]) for r in range(len(source))], np.int64)
        per_record = np.maximum(lengths - 1 + chunk_len - 2, chunk_len - 1) // (chunk_len - 1)
        self.records = np.repeat(np.arange(len(lengths)), per_record)  # [chunks]
        first = np.cumsum(per_record) - per_record  # each record's first chunk
        self.starts = (np.arange(len(self.records)) - first[self.records]) * (chunk_len - 1)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        item = self.source[int(self.records[i])]
        start = int(self.starts[i])
        tokens = item["tokens"][start : start + self.chunk_len]
        mask = item.get("answer_mask")
        mask = np.ones_like(tokens) if mask is None else mask[start : start + self.chunk_len]
        return {"tokens": tokens, "answer_mask": mask}


def split_source(builders: list, cfg: DataConfig, split: str, seq_len: int):
    """The records of a split of the builders of `prepare`, as one `mixture.MixtureSource`
    (documents as chunks of seq_len + 1 tokens). Process 0 warns (one line on stderr) about
    examples longer than seq_len; ConfigError if every example of a member would be dropped."""
    members = mixture.members(cfg)
    opened = [
        _open(builder, cfg, member, split, seq_len)
        for builder, member in zip(builders, members, strict=True)
    ]
    _warn_too_long([counts for _, counts in opened if counts], split, seq_len, cfg.too_long)
    names = [
        f"{m.task.name}/{b.builder_config.name}" for m, b in zip(members, builders, strict=True)
    ]
    return mixture.MixtureSource(
        [source for source, _ in opened],
        [member.task.name for member in members],
        names,
        [member.weight for member in members],
    )


def _open(builder, cfg: DataConfig, member: Member, split: str, seq_len: int):
    """(source, (name, too long, examples) or None) of one task's split; see split_source."""
    source = builder.as_data_source()[split]
    if member.task.documents:
        from mta.data import tfds_common

        return TextChunks(source, seq_len + 1, tfds_common.token_lengths(builder, split)), None
    if not _can_be_too_long(cfg, member):
        return source, None
    from mta.data import tfds_common

    lengths = tfds_common.token_lengths(builder, split)
    too_long = int(np.sum(lengths - 1 > seq_len))
    name = f"{member.task.name}/{builder.builder_config.name}"
    if too_long == len(lengths) and cfg.too_long == "drop":
        where = "" if member.key == "data" else f" ({member.key})"
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


def to_example(record: dict, seq_len: int, too_long: str, loss: str = "answer") -> dict | None:
    """One record -> inputs/targets/weights of its own length (<= seq_len); None if it is too
    long and too_long == "drop". loss "all": weight 1 on every target, not only the answer's."""
    tokens, mask = np.asarray(record["tokens"]), np.asarray(record["answer_mask"])
    if loss == "all":
        mask = np.ones_like(mask)
    if len(tokens) - 1 > seq_len:
        if too_long == "drop":
            return None
        tokens, mask = tokens[: seq_len + 1], mask[: seq_len + 1]
    return {
        "inputs": tokens[:-1].astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "weights": mask[1:].astype(np.float32),
    }


def pad_batch(examples: list[dict], seq_len: int, pad_id: int = PAD) -> dict:
    """Examples of lengths <= seq_len -> [len(examples), seq_len] arrays, pad_id (the
    tokenizer's pad) and weight 0 after."""
    batch = {
        "inputs": np.full((len(examples), seq_len), pad_id, np.int32),
        "targets": np.full((len(examples), seq_len), pad_id, np.int32),
        "weights": np.zeros((len(examples), seq_len), np.float32),
    }
    for row, example in enumerate(examples):
        for key in FIELDS:
            batch[key][row, : len(example[key])] = example[key]
    return batch


def read_batch(
    source, indices, seq_len: int, too_long: str = "drop", pad_id: int = PAD, loss: str = "answer"
) -> dict:
    """Records `indices` of a source, padded to [len(indices), seq_len]; a dropped (too long)
    example becomes an all-pad row with weight 0, so batch shapes never change. loss: see
    to_example."""
    empty = {"inputs": [], "targets": [], "weights": []}
    records = source.__getitems__(list(indices))
    examples = [to_example(r, seq_len, too_long, loss) for r in records]
    return pad_batch([e if e is not None else empty for e in examples], seq_len, pad_id)


def index_stream(source: mixture.Source, seed: int) -> grain.MapDataset:
    """Infinite MapDataset of record indices of `source`, reshuffled every epoch from `seed`
    (a mixture's: its members mixed by weight, see `mixture.index_stream`)."""
    return source.index_stream(seed)


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
    (with `segment_ids` and `positions` when packing), weights per cfg.train_loss. Every
    epoch is reshuffled from `seed`."""
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} must divide over {process_count} processes")
    local_batch = global_batch // process_count
    indices = index_stream(source, seed)
    if cfg.packing == "pad":
        pad_id = load_tokenizer(cfg).pad_id
        batches = indices.batch(global_batch, drop_remainder=True)
        return batches.map(
            lambda idx: read_batch(
                source,
                idx[process_index::process_count],
                seq_len,
                cfg.too_long,
                pad_id,
                cfg.train_loss,
            )
        )
    records = indices[process_index::process_count].map(
        lambda i: to_example(source[int(i)], seq_len, cfg.too_long, cfg.train_loss)
    )
    examples = records.filter(lambda e: e is not None).to_iter_dataset()
    packed = grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct=dict.fromkeys(FIELDS, seq_len),
        num_packing_bins=local_batch,
        seed=seed,
    )
    return packed.batch(local_batch, drop_remainder=True).map(_rename_packing_fields)


def train_iterator(builders: list, cfg: DataConfig, seq_len: int, global_batch: int, seed: int):
    """This process's iterator over train_dataset of the builders' train split: dicts of
    [B / processes, T] arrays; grain-checkpointable (saved with the model)."""
    source = split_source(builders, cfg, "train", seq_len)
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


def eval_batches(
    source: mixture.MixtureSource,
    seq_len: int,
    num_examples: int,
    batch_size: int,
    too_long="drop",
    pad_id: int = PAD,
):
    """The first `num_examples` of a split in order, as padded batches (the last one smaller).

    A mixture is evaluated on every member (but text, whose chunks are never exact matches):
    its first round(num_examples * weight / sum of weights) examples (at least one), member
    after member, a batch never holding two members; so eval/* measure the mixture that is
    trained on (see `mixture.eval_ranges`). A single task: its first num_examples.
    """
    ranges = mixture.eval_ranges(source, num_examples)
    return [
        read_batch(source, keys[i : i + batch_size], seq_len, too_long, pad_id)
        for keys in ranges
        for i in range(0, len(keys), batch_size)
    ]
