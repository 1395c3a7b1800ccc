"""A corpus of any size (language modelling): `data.sources` built by `data.corpus`'s settings.

    data:
      task: corpus
      tokenizer: {kind: byte, path: ""}
      corpus: {workers: 2, validation_fraction: 0.01}
      sources:
        - {path: "slimpajama/train/**/*.jsonl.zst", weight: 0.7}
        - {path: "books/*.parquet", weight: 0.2, text_key: content}
        - {path: "tfds:lm1b", weight: 0.1}

Every source is its own TFDS build (`mta/data/tfds_corpus.py`, files read by
`mta/data/corpus_files.py`), named after its files, so a changed source is built again; the
pipeline reads the sources as a mixture weighted by `weight`, documents cut into rows like the
text task's. Splits: train and validation (no test).
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

from mta.data.checks import check_fraction, check_int
from mta.data.tasks.base import Settings, Task, lazy

SOURCE_EXAMPLE = '{path: "shards/**/*.jsonl.zst", weight: 0.3, text_key: text}'


@dataclass
class SourceConfig:
    """One source of data.sources: files matched by a glob, or a prepared TFDS dataset."""

    # A glob of .jsonl, .jsonl.gz, .jsonl.zst, .parquet or .txt files (relative to the current
    # directory; ** matches any depth), or tfds:NAME for a TFDS dataset prepared in data_dir.
    path: str = ""
    weight: float = 1.0  # relative: the share of training records is weight / sum of weights
    text_key: str = "text"  # the JSON key, parquet column or TFDS feature holding the text


@dataclass
class CorpusSettings(Settings):
    """How data.sources are tokenized and split (data.task: corpus); the sources themselves
    are data.sources."""

    validation_fraction: float = 0.01  # share of each source's documents held out (by id hash)
    bad_lines: str = "error"  # a jsonl line that is not JSON or lacks text_key: error | skip
    workers: int = 2  # processes tokenizing a source while it is built (one file per task)
    seed: int = 0  # key of the documents' hash into splits

    def check(self) -> None:
        check_fraction("validation_fraction", self.validation_fraction)
        if self.bad_lines not in ("error", "skip"):
            raise ValueError(f"bad_lines: got {self.bad_lines!r}; allowed: error, skip")
        check_int("workers", self.workers, 1, 256)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class SourceBuild:
    """The settings of one source's build (a member of the pipeline's mixture)."""

    source: SourceConfig
    corpus: CorpusSettings
    tokenizer: Any  # data.tokenizer: kind and path
    data_dir: str  # where tfds: sources are read

    def builder_params(self) -> dict[str, Any]:
        return {
            "path": self.source.path,
            "text_key": self.source.text_key,
            **dataclasses.asdict(self.corpus),
            "tokenizer_kind": self.tokenizer.kind,
            "tokenizer_path": self.tokenizer.path,
            "tfds_dir": self.data_dir,
        }

    def example_length(self) -> None:
        return None


def check_source(source: SourceConfig) -> None:
    """ValueError (one line) for an empty path or text_key, or a weight that is not > 0."""
    if not source.path:
        raise ValueError(f"path: empty; a source looks like {SOURCE_EXAMPLE}")
    if not source.text_key:
        raise ValueError("text_key: empty; name the field holding the text")
    if not (source.weight > 0 and source.weight != float("inf")):
        raise ValueError(f"weight: got {source.weight}; must be a finite number > 0")


TASK = Task(
    name="corpus",
    settings=CorpusSettings,
    make_config=lazy("mta.data.tfds_corpus", "corpus_config"),
    prepare=lazy("mta.data.tfds_corpus", "prepare_corpus"),
    documents=True,
)
