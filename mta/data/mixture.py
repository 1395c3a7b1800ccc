"""The records the pipeline reads: one `MixtureSource` of the configured task(s), a single task
being a mixture of one; and training on a weighted mixture of tasks (`data.task: mix`).

    data:
      task: mix
      seq_len: 512
      packing: pack
      mixture:
        - {task: mqar, weight: 0.4, mqar: {num_pairs: 8, length: 256}}
        - {task: niah, weight: 0.3, niah: {num_needles: 1, length: 300}}
        - {task: block, weight: 0.3, block: {n: 5, num_blocks: 5}}

Each member is its own TFDS build, exactly as if it were `data.task`, read with the mixture's
seq_len, packing and too_long. The members' splits are read as one `MixtureSource`, in which key
offsets[m] + i is record i of member m, so the rest of the pipeline (padding, packing, process
shares) reads every config the same way.

`data.task: corpus` is read the same way: each of `data.sources` is one member (its own TFDS
build) weighted by its `weight` (see mta/data/tasks/corpus.py).

A source of one member streams its records reshuffled every epoch, exactly as a single task
always has (so runs resume onto the same batches).

The training stream of keys (`index_stream`) interleaves the members' shuffled, repeated streams
with grain's `MapDataset.mix` in proportion to the weights, then shuffles within windows of
WINDOW keys: every window holds each member's share to within a key or two, in random order. It
is a function of the seed alone and random-access, so a checkpoint of the iterator is its
position and a resumed run reads the same examples.

Evaluation (`eval_ranges`) reads each member's first round(num_examples * weight / sum of
weights) examples of the split (at least one), so `eval/*` measures the mixture that is trained
on. Text members are left out when there are task members: no chunk of text is ever predicted
exactly, so they would only add a floor to the exact-match error (their loss is in the training
loss, and `scripts/eval.py --suite` measures perplexity). Per-task results come from the suite.
"""

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from mta.config import DataConfig
from mta.data.tasks import TASKS, Task
from mta.data.tasks.corpus import SourceBuild

WINDOW = 1024  # keys shuffled together after mixing


class Member(NamedTuple):
    """One task read by the pipeline: its config `key` (data or data.mixture[i]), registry
    entry, settings and weight."""

    key: str
    task: Task
    settings: Any
    weight: float


def members(cfg: DataConfig) -> list[Member]:
    """The tasks of a data config: [data.task with its section data.<task>], or with task mix
    every member of data.mixture with its section data.mixture[i].<task>."""
    if cfg.task == "corpus":  # one member per source (see mta/data/tasks/corpus.py)
        return [
            Member(f"data.sources[{i}]", TASKS["corpus"], build, source.weight)
            for i, (source, build) in enumerate(zip(cfg.sources, source_builds(cfg), strict=True))
        ]
    if cfg.task != "mix":
        return [Member("data", TASKS[cfg.task], getattr(cfg, cfg.task), 1.0)]
    return [
        Member(f"data.mixture[{i}]", TASKS[m.task], getattr(m, m.task), m.weight)
        for i, m in enumerate(cfg.mixture)
    ]


def source_builds(cfg: DataConfig) -> list[SourceBuild]:
    """The build settings of each of data.sources."""
    data_dir = os.path.expanduser(cfg.data_dir)
    return [SourceBuild(source, cfg.corpus, cfg.tokenizer, data_dir) for source in cfg.sources]


class Source:
    """Base of the pipeline's random-access sources: subclasses define __len__, __getitem__."""

    def __getitems__(self, keys) -> list:
        """The records of `keys`, in order."""
        return [self[key] for key in keys]

    def index_stream(self, seed: int) -> grain.MapDataset:
        """Infinite MapDataset of this source's keys, reshuffled every epoch from `seed`."""
        return grain.MapDataset.range(len(self)).seed(seed).shuffle().repeat()


class MixtureSource(Source):
    """The records of several sources as one random-access source: key offsets[m] + i is
    record i of sources[m]. `tasks`, `names` and `weights` describe the members."""

    def __init__(
        self,
        sources: Sequence,
        tasks: Sequence[str],
        names: Sequence[str],
        weights: Sequence[float],
    ):
        self.sources, self.tasks = list(sources), list(tasks)
        self.names, self.weights = list(names), list(weights)
        self.offsets = np.cumsum([0] + [len(source) for source in sources])  # [members + 1]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def member_of(self, keys) -> np.ndarray:
        """int [len(keys)]: the member each key belongs to."""
        return np.searchsorted(self.offsets, np.asarray(keys), side="right") - 1

    def __getitem__(self, key):
        member = int(self.member_of(key))
        return self.sources[member][int(key) - int(self.offsets[member])]

    def __getitems__(self, keys) -> list:
        """The records of `keys`, in order; each member's records are read in one call."""
        keys = np.asarray(keys, np.int64)
        members = self.member_of(keys)
        records = [None] * len(keys)
        for member in np.unique(members):
            (where,) = np.nonzero(members == member)
            local = (keys[where] - self.offsets[member]).tolist()
            records_of_member = self.sources[member].__getitems__(local)
            for position, record in zip(where, records_of_member, strict=True):
                records[position] = record
        return records

    def index_stream(self, seed: int) -> grain.MapDataset:
        """See the module function `index_stream`."""
        return index_stream(self, seed)


def _seed(seed: int, stream: int) -> int:
    """A 31-bit seed of substream `stream` of `seed` (grain adds the epoch or window to it)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0] >> 1)


def index_stream(source: MixtureSource, seed: int) -> grain.MapDataset:
    """Infinite MapDataset of keys of `source`: member m's records reshuffled every epoch, the
    members mixed in proportion to their weights, shuffled within windows of WINDOW keys (one
    member: its records reshuffled every epoch, nothing else)."""
    if len(source.sources) == 1:
        return Source.index_stream(source, seed)
    bounds = source.offsets.tolist()  # member m's keys: bounds[m] .. bounds[m + 1] - 1
    streams = [
        grain.MapDataset.range(bounds[m], bounds[m + 1]).seed(_seed(seed, m)).shuffle().repeat()
        for m in range(len(source.sources))
    ]
    mixed = grain.MapDataset.mix(streams, source.weights)
    return mixed.pipe(
        grain.experimental.WindowShuffleMapDataset,
        window_size=WINDOW,
        seed=_seed(seed, len(streams)),
    )


def eval_ranges(source: MixtureSource, num_examples: int) -> list[range]:
    """Per evaluated member (all but document tasks like text, unless all are), the keys of
    its first round(num_examples * weight / their sum of weights) records (at least one, at
    most all)."""
    chosen = [m for m, task in enumerate(source.tasks) if not TASKS[task].documents]
    chosen = chosen or list(range(len(source.sources)))
    total = sum(source.weights[m] for m in chosen)
    ranges = []
    for member in chosen:
        start, size = int(source.offsets[member]), len(source.sources[member])
        count = min(size, max(1, round(num_examples * source.weights[member] / total)))
        ranges.append(range(start, start + count))
    return ranges
