"""TFDS builder `mta_corpus`: one corpus source tokenized once into sharded ArrayRecord files.

    config = corpus_config(path="shards/**/*.jsonl.zst", workers=2)
    builder = prepare_corpus(config, data_dir)
    builder.as_data_source()["train"][0]  # {"tokens": int32 [n]}

Each document (see `corpus_files`) is one record [BOS] + encode(text) + [EOS]; a document of
more than RECORD_TOKENS tokens is stored as consecutive records (BOS on the first, EOS on the
last). A document goes to the validation split when a keyed hash of its id falls below
`validation_fraction`, so the split is the same whatever the workers and the file order.

The build streams: `workers` processes each take a unit of work (a file, or a range of a TFDS
dataset's records) and write its train and validation records to their own shard, holding one
document at a time; the shards are then renamed into TFDS's layout, one per non-empty unit, in
unit order, and each split's token counts saved beside them (`token_lengths-{split}.npy`, which
the pipeline reads instead of the records). TFDS builds in a temporary directory renamed only
when everything is written, so a failed or killed build leaves nothing that reads as complete.

Config names are `src-{12 hex}`: a hash of the matched files' absolute paths, sizes and
modification times, the text key, the split settings and the tokenizer's fingerprint. Adding,
removing or modifying a file therefore names (and builds) a new dataset.
"""

import dataclasses
import functools
import json
import multiprocessing
import os
import sys
import types
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mta.data import corpus_files, tfds_common
from mta.data.checks import check_fraction, check_int
from mta.data.text_corpus import CorpusError

SPLITS = ("train", "validation")
RECORD_TOKENS = 1 << 20
FORMAT = "1"  # bump when the records of the same files change


@dataclasses.dataclass(eq=False, kw_only=True)
class CorpusConfig(tfds_common.TaskConfig):
    """Parameters of one build; make instances with `corpus_config`. `workers` does not change
    the records, so it is not part of the name; `tfds_dir` is where `tfds:` sources are read."""

    path: str = ""
    text_key: str = "text"
    validation_fraction: float = 0.01
    bad_lines: str = "error"
    workers: int = 1
    tokenizer_kind: str = "byte"
    tokenizer_path: str = ""
    tfds_dir: str = ""

    def check(self):
        if not self.path or not self.text_key:
            raise ValueError("path and text_key must be non-empty")
        check_fraction("validation_fraction", self.validation_fraction)
        if self.bad_lines not in ("error", "skip"):
            raise ValueError(f"bad_lines: got {self.bad_lines!r}; allowed: error, skip")
        check_int("workers", self.workers, 1)

    @classmethod
    def name_parts(cls, p):
        tokenizer = load_tokenizer(p["tokenizer_kind"], p["tokenizer_path"])
        extra = [FORMAT, p["text_key"], p["validation_fraction"], p["bad_lines"], p["seed"]]
        extra = "\0".join(map(str, [*extra, tokenizer.fingerprint]))
        return f"src-{corpus_files.fingerprint(p['path'], p['tfds_dir'], extra)}", []


def corpus_config(**params) -> CorpusConfig:
    """The config of one source's build; ValueError (CorpusError) if its files cannot be
    listed: a glob matching nothing, an unsupported file, an empty corpus."""
    return tfds_common.make_config(CorpusConfig, **params)


@functools.cache
def load_tokenizer(kind: str, path: str):
    """The tokenizer of data.tokenizer {kind, path}, once per process."""
    from mta.data.tokenizers import load_tokenizer as load

    return load(types.SimpleNamespace(kind=kind, path=path))


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {"tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32)}
    )


@functools.cache
def _serializer():
    from tensorflow_datasets.core import example_serializer

    spec = features()
    serializer = example_serializer.ExampleSerializer(spec.get_serialized_info())
    return lambda tokens: serializer.serialize_example(spec.encode_example({"tokens": tokens}))


def held_out(doc_id: str, seed: int, fraction: float) -> bool:
    """Whether a document belongs to the validation split: a hash of its id keyed by seed."""
    import hashlib

    key = str(seed).encode()
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogateescape"), digest_size=8, key=key)
    return int.from_bytes(digest.digest(), "little") < fraction * 2.0**64


def document_records(pieces: Iterable[str], tokenizer) -> Iterator[np.ndarray]:
    """int32 records of one document: [BOS] + tokens + [EOS], cut every RECORD_TOKENS tokens;
    nothing for a document without tokens."""
    parts, size, content = [np.array([tokenizer.bos_id], np.int32)], 1, 0
    for piece in pieces:
        ids = np.asarray(tokenizer.encode(piece), np.int32)
        parts.append(ids)
        size, content = size + len(ids), content + len(ids)
        while size >= RECORD_TOKENS:
            flat = np.concatenate(parts)
            yield flat[:RECORD_TOKENS]
            parts, size = [flat[RECORD_TOKENS:]], len(flat) - RECORD_TOKENS
    if content:
        yield np.concatenate([*parts, np.array([tokenizer.eos_id], np.int32)])


def ingest_unit(task: tuple) -> tuple[dict, int]:
    """Worker: (index, unit, parameters, out_dir) -> ({split: int64 token counts of its
    records}, skipped lines), the records written to out_dir/unit{index}-{split}.tmp."""
    from array_record.python.array_record_module import ArrayRecordWriter

    index, unit, p, out_dir = task
    tokenizer, serialize = load_tokenizer(p["tokenizer_kind"], p["tokenizer_path"]), _serializer()
    lengths, skipped = {split: [] for split in SPLITS}, [0]
    writers = {s: ArrayRecordWriter(_unit_path(out_dir, index, s), "group_size:1") for s in SPLITS}
    try:
        for doc_id, pieces in corpus_files.read_unit(unit, p["text_key"], p["bad_lines"], skipped):
            split = SPLITS[held_out(doc_id, p["seed"], p["validation_fraction"])]
            for tokens in document_records(pieces, tokenizer):
                writers[split].write(serialize(tokens))
                lengths[split].append(len(tokens))
    finally:
        for writer in writers.values():
            writer.close()
    return {s: np.asarray(lengths[s], np.int64) for s in SPLITS}, skipped[0]


def _unit_path(out_dir: str, index: int, split: str) -> str:
    return os.path.join(out_dir, f"unit{index:06d}-{split}.tmp")


def run_units(tasks: list[tuple], workers: int) -> Iterator[tuple[dict, int]]:
    """ingest_unit over the tasks in order: in this process with one worker, else in a pool
    of fresh (spawned) processes, stopped at the first error."""
    if workers == 1 or len(tasks) == 1:
        yield from map(ingest_unit, tasks)
        return
    context = multiprocessing.get_context("spawn")  # never fork a process running JAX
    with context.Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(ingest_unit, tasks)


class MtaCorpus(tfds_common.Builder):
    """The documents of one corpus source as token records (see the module doc)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = "Documents of jsonl/parquet/txt files or a TFDS dataset as token records."

    def features(self):
        return features()

    def _split_generators(self, dl_manager):
        raise NotImplementedError("MtaCorpus writes its shards in _download_and_prepare")

    def _download_and_prepare(self, dl_manager, download_config=None):
        config = self.builder_config
        if CorpusConfig.derive_name(config.parameters()) != config.name:
            raise CorpusError(f"{config.path}: files changed while the build started; run again")
        out_dir = os.fspath(self.data_dir)  # TFDS's temporary directory, renamed when done
        params = config.parameters()
        work = corpus_files.units(config.path, config.tfds_dir)
        tasks = [(i, unit, params, out_dir) for i, unit in enumerate(work)]
        lengths, skipped = {split: [] for split in SPLITS}, 0
        for index, (unit_lengths, unit_skipped) in enumerate(run_units(tasks, config.workers)):
            skipped += unit_skipped
            for split in SPLITS:
                lengths[split].append((index, unit_lengths[split]))
        infos = [self._assemble(split, lengths[split], out_dir) for split in SPLITS]
        self.info.set_splits(tfds.core.SplitDict(infos))
        stats = {s: {"records": info.num_examples} for s, info in zip(SPLITS, infos, strict=True)}
        stats["skipped_lines"], stats["units"] = skipped, len(work)
        (epath.Path(out_dir) / "ingest.json").write_text(json.dumps(stats))
        if skipped:
            print(f"warning: {config.path}: skipped {skipped} bad lines", file=sys.stderr)

    def _assemble(self, split: str, units: list, out_dir: str) -> tfds.core.SplitInfo:
        """Renames the non-empty unit shards of a split into TFDS's shard names, saves the
        split's token counts; CorpusError if the split has no document."""
        kept = [(index, counts) for index, counts in units if len(counts)]
        for index, counts in units:
            if not len(counts):
                os.remove(_unit_path(out_dir, index, split))
        config = self.builder_config
        if not kept and split == "train":
            raise CorpusError(f"{config.path}: empty corpus (no document in {len(units)} files)")
        if not kept:
            raise CorpusError(
                f"{config.path}: no document fell in the validation split (validation_fraction "
                f"{config.validation_fraction}); raise data.corpus.validation_fraction"
            )
        template = self._get_filename_template(split)
        for shard, (index, _) in enumerate(kept):
            path = template.sharded_filepath(shard_index=shard, num_shards=len(kept))
            os.rename(_unit_path(out_dir, index, split), os.fspath(path))
        all_counts = np.concatenate([counts for _, counts in kept])
        np.save(os.path.join(out_dir, f"token_lengths-{split}.npy"), all_counts)
        num_bytes = sum(os.path.getsize(p) for p in template.sharded_filepaths(len(kept)))
        return tfds.core.SplitInfo(
            name=split,
            shard_lengths=[len(counts) for _, counts in kept],
            num_bytes=num_bytes,
            filename_template=template,
        )


def prepare_corpus(config: CorpusConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the source in data_dir unless present; returns the builder."""
    return tfds_common.prepare(MtaCorpus, config, data_dir)
