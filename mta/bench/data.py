"""Tokens/s of the input pipeline vs training steps of the same config (`mta bench data`):
mta.data.pipeline's prepare, then its train_dataset iterator; target: pipeline >= 10x training.
"""

import statistics
import time

from mta.bench.harness import Recorder, load_cfg, time_calls, timing_fields
from mta.bench.train import measure_train

COLUMNS = [  # (markdown header, record key)
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
    """Tokens/s of the input pipeline (prepare, then train_dataset's iterator, as in
    mta/train/loop.py) vs training steps of the same config on the pipeline's first batch."""
    from mta.data import pipeline

    cfg = load_cfg(args.config, args.overrides)
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
