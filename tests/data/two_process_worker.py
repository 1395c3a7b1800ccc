"""One of the processes of test_two_processes.py: joins a two-process JAX runtime on CPU,
builds the training pipeline of a config and saves its first batches.

    python tests/data/two_process_worker.py PORT PROCESS_ID OUT.npz NUM_BATCHES [override ...]

OUT.npz holds `{step}/{field}` arrays: this process's [B / 2, T] part of each batch.
"""

import sys

import jax
import numpy as np

from mta.config import load_config
from mta.data import pipeline


def first_batches(overrides: list[str], count: int) -> list[dict]:
    """This process's part of the first `count` training batches of a config."""
    cfg = load_config(None, overrides)
    builder = pipeline.prepare(cfg.data)
    seq_len = pipeline.sequence_length(cfg.data)
    iterator = pipeline.train_iterator(
        builder, cfg.data, seq_len, cfg.train.batch_size, cfg.train.seed
    )
    return [next(iterator) for _ in range(count)]


def main(port: str, process_id: str, out: str, count: str, *overrides: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    batches = first_batches(list(overrides), int(count))
    np.savez(out, **{f"{i}/{k}": v for i, batch in enumerate(batches) for k, v in batch.items()})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
