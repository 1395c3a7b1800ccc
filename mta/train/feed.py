"""Getting batches onto the devices ahead of the step that needs them.

    batches = Prefetcher(data_iter, put=lambda local: to_device(local, sharding), depth=2)
    batch = next(batches)             # already on the devices
    checkpoint.save(..., batches.position())   # where the batches the loop took end

A background thread reads the next `depth` batches from the grain iterator and starts their
transfer while the current step runs. The iterator's state is recorded after each batch, so a
checkpoint saves the position of the batches the loop has taken, not of those read ahead: the
data order, and so every result, is the same with or without prefetching.
"""

import json
import queue
import threading

import jax
import numpy as np
from jax.sharding import NamedSharding

from mta.train.mesh import batch_shards

_DONE = object()


class DataPosition:
    """A saved grain iterator state, in the form grain's orbax handler writes for any iterator
    (`get_state()` bytes: the same JSON file as the iterator itself would write)."""

    def __init__(self, state: dict):
        self._text = json.dumps(state, indent=4)

    def get_state(self) -> bytes:
        return self._text.encode()


class Prefetcher:
    """An iterator of device batches: `put(next(data_iter))`, read `depth` batches ahead by a
    background thread from the second batch on (the first step compiles meanwhile; depth 0:
    read when asked). Errors of the reader are raised by `next`."""

    def __init__(self, data_iter, put, depth: int):
        self._iter, self._put, self._depth = data_iter, put, depth
        self._position = data_iter.get_state()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        self._taken = 0

    def _one(self):
        local = next(self._iter)
        return self._put(local), self._iter.get_state()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._one()
            except BaseException as err:  # handed to the consumer, which raises it
                item = (_DONE, err)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] is _DONE:
                return

    def __iter__(self):
        return self

    def __next__(self):
        self._taken += 1
        if self._depth and self._taken == 2:  # after the first step: not during its compile
            self._thread = threading.Thread(target=self._read, daemon=True, name="prefetch")
            self._thread.start()
        batch, position = self._queue.get() if self._thread else self._one()
        if batch is _DONE:
            raise position
        self._position = position
        return batch

    def position(self) -> DataPosition:
        """The iterator's state after the last batch taken (what a checkpoint saves)."""
        return DataPosition(self._position)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def to_device(local: dict, sharding: NamedSharding) -> dict:
    """This process's rows of a global batch -> global arrays split over the batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def pad_rows(batch: dict, multiple: int, rows: int = 0) -> dict:
    """A batch with rows of zeros appended (weight 0: they count for nothing) up to at least
    `rows` and a multiple of `multiple`, so every batch has one shape and splits evenly."""
    size = len(next(iter(batch.values())))
    target = max(size, rows)
    target = -(-target // multiple) * multiple
    if target == size:
        return batch
    return {
        k: np.concatenate([v, np.zeros((target - size, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }


def shard_global_batch(batch: dict, sharding: NamedSharding, rows: int = 0) -> dict:
    """A batch every process holds whole (evaluation) -> global arrays split over the batch
    axes, padded with zero-weight rows to at least `rows` and a multiple of the batch shards."""
    batch = pad_rows(batch, batch_shards(sharding.mesh), rows)
    return {
        k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
        for k, v in batch.items()
    }
