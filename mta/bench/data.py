"""The input pipeline (`mta bench data`): ingestion of a generated corpus, then reading.

With --corpus-mb N > 0, a corpus of about N MB of jsonl (documents of random words) is written
as .jsonl.zst files, and each --workers count builds it (data.task: corpus) in a fresh
subprocess: tokens/s of tokenization + ingestion and the peak RSS of the build's main process
and of its largest worker (target: under 1.5 GB, independent of the corpus size). Then the
config (with its data pointed at that corpus) is read: tokens/s of the pipeline (prepare, then
train_dataset's iterator) vs training steps of the same config; target: pipeline >= 10x
training. With --corpus-mb 0 the config's own data is read.
"""

import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mta.bench.harness import (
    Recorder,
    load_cfg,
    max_memory_bytes,
    run_child,
    time_calls,
    timing_fields,
)
from mta.bench.train import measure_train

FILE_MB = 64  # at most this much uncompressed jsonl per generated file
MIN_FILES = 8  # at least this many files (units of work for the workers)
COLUMNS = [  # (markdown header, record key)
    ("measure", "measure"),
    ("corpus MB", "corpus_mb"),
    ("workers", "workers"),
    ("ingest tokens/s", "ingest_tokens_per_s"),
    ("peak RSS MB (main / worker)", "peak_rss"),
    ("config", "config"),
    ("overrides", "overrides"),
    ("B", "batch_size"),
    ("T", "seq_len"),
    ("pipeline tokens/s", "data_tokens_per_s"),
    ("train tokens/s", "train_tokens_per_s"),
    ("ratio", "ratio"),
    ("target", "target"),
    ("met", "met"),
]


def run(args, rec: Recorder) -> None:
    """Ingestion rows (one per --workers), then the read row (see the module doc)."""
    if not args.corpus_mb:
        measure_read(args, rec, args.overrides)
        return
    with tempfile.TemporaryDirectory() as scratch:
        files = write_corpus(Path(scratch) / "corpus", args.corpus_mb)
        source = f"data.sources=[{{path: '{Path(scratch) / 'corpus'}/*.jsonl.zst'}}]"
        corpus = ["data.task=corpus", source, "data.corpus.validation_fraction=0.01"]
        size = round(sum(os.path.getsize(f) for f in files) / 2**20, 1)
        for workers in args.workers:
            item = {"kind": "ingest", "overrides": [*args.overrides, *corpus]}
            item["overrides"] += [
                f"data.data_dir={scratch}/w{workers}",
                f"data.corpus.workers={workers}",
            ]
            item["config"] = args.config
            (result,) = run_child([item], args.timeout, max_memory_bytes(None))
            rec.emit({"measure": "ingest", "corpus_mb": args.corpus_mb, "zst_mb": size,
                      "workers": workers, "files": len(files), **result})  # fmt: skip
        data_dir = f"data.data_dir={scratch}/w{args.workers[-1]}"
        measure_read(args, rec, [*args.overrides, *corpus, data_dir])


def write_corpus(folder: Path, megabytes: float, seed: int = 0) -> list[Path]:
    """About `megabytes` MB of jsonl (documents of 100-2000 random words of a 5000-word
    vocabulary), zstd-compressed into at least MIN_FILES files of at most FILE_MB MB each;
    streamed, never held whole."""
    import zstandard

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    vocabulary = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(5000)]
    folder.mkdir(parents=True)
    files, left = [], int(megabytes * 2**20)
    per_file = min(FILE_MB * 2**20, left // MIN_FILES + 1)
    while left > 0:
        path = folder / f"part-{len(files):05d}.jsonl.zst"
        files.append(path)
        budget = min(left, per_file)
        with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as out:
            while budget > 0:
                words = rng.choice(vocabulary, rng.integers(100, 2000))
                line = json.dumps({"text": " ".join(words)}).encode() + b"\n"
                out.write(line)
                budget -= len(line)
                left -= len(line)
    return files


def measure_ingest(item: dict) -> dict:
    """Child side: builds the corpus of a config in this fresh process; tokens/s and peak RSS."""
    from mta.data import pipeline, tfds_common

    cfg = load_cfg(item["config"], item["overrides"])
    start = time.perf_counter()
    (builder,) = pipeline.prepare(cfg.data)
    seconds = time.perf_counter() - start
    tokens = sum(int(tfds_common.token_lengths(builder, s).sum()) for s in ("train", "validation"))
    main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "ingest_tokens_per_s": round(tokens / seconds),
        "peak_rss_mb": round(main),
        "worker_peak_rss_mb": round(worker),
        "peak_rss": f"{main:.0f} / {worker:.0f}",
    }


def measure_read(args, rec: Recorder, overrides: list[str]) -> None:
    """Tokens/s of the input pipeline (prepare, then train_dataset's iterator, as in
    mta/train/loop.py) vs training steps of the same config on the pipeline's first batch."""
    from mta.data import pipeline

    cfg = load_cfg(args.config, overrides)
    start = time.perf_counter()
    builder = pipeline.prepare(cfg.data)
    prepare_s = time.perf_counter() - start
    seq_len, batch_size = pipeline.sequence_length(cfg.data), cfg.train.batch_size
    iterator = data_iterator(pipeline, builder, cfg, seq_len)
    first = next(iterator)
    times = time_calls(lambda: next(iterator), args.batches, 2)
    data_tps = args.batches * batch_size * seq_len / sum(times)
    measured = measure_train(cfg, args.train_steps, 2, batch=first)
    train_tps = batch_size * seq_len / statistics.median(measured["times"])
    rec.emit(
        {
            "measure": "read",
            "corpus_mb": args.corpus_mb,
            "config": args.config,
            "overrides": args.overrides,
            "status": "ok",
            "batch_size": batch_size,
            "seq_len": seq_len,
            "packing": cfg.data.packing,
            "prepare_s": round(prepare_s, 2),
            "batches": args.batches,
            **timing_fields(times, "batch"),
            "data_tokens_per_s": round(data_tps, 1),
            **timing_fields(measured["times"], "step"),
            "train_tokens_per_s": round(train_tps, 1),
            "ratio": round(data_tps / train_tps, 2),
            "target": ">= 10",
            "met": data_tps >= 10 * train_tps,
        }
    )


def data_iterator(pipeline, builder, cfg, seq_len: int):
    """The training batches of one process, built as mta/train/loop.py builds them."""
    import grain

    source = pipeline.split_source(builder, cfg.data, "train", seq_len)
    dataset = pipeline.train_dataset(
        source, cfg.data, seq_len, cfg.train.batch_size, cfg.train.seed
    )
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()
    return iter(dataset)
