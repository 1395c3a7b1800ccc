"""TFDS builder `mta_text`: a local text corpus as byte-token documents (see `text_corpus`).

    builder = prepare_text(text_config(manual_dir="~/corpus"), data_dir)  # None: bundled corpus
    record = builder.as_data_source()["train"][0]  # tokens, answer_mask, source

Each document is one record: tokens = [BOS] + its bytes + [EOS], answer_mask 1 on every token but
the BOS (the loss is on every real token). Documents are assigned to splits by a permutation
drawn from SeedSequence([seed, 3]): round(fraction * count) documents (at least one) go to
validation and to test, the rest to train (TFDS stores each split in its own fixed shuffled
order).
"""

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from mta.data import text_corpus, tfds_common
from mta.data.tokenizers import BYTE, Tokenizer

_ASSIGNMENT_STREAM = len(tfds_common.SPLITS)  # seed stream of the split assignment


@dataclasses.dataclass(eq=False, kw_only=True)
class TextConfig(tfds_common.TaskConfig):
    """Parameters of one build; make instances with `text_config`.

    Names are `bundled-{hash}` or `dir-{hash}` (a hash of the bundled text, or of the directory's
    absolute path and its files' names and sizes), then `_val{f}`, `_test{f}`, `_seed{n}` when
    not the defaults. Editing a file without changing its size keeps the name: build into a
    new data_dir then.
    """

    manual_dir: str | None = None
    validation_fraction: float = 0.05
    test_fraction: float = 0.05

    def check(self):
        if self.manual_dir is not None and not isinstance(self.manual_dir, str):
            raise ValueError(f"manual_dir must be a path string or None, got {self.manual_dir!r}")
        text_corpus.check_fractions(self.validation_fraction, self.test_fraction)

    @classmethod
    def name_parts(cls, p):
        if p["manual_dir"] is None:
            head = f"bundled-{text_corpus.bundled_fingerprint()}"
        else:
            head = f"dir-{text_corpus.corpus_fingerprint(os.path.expanduser(p['manual_dir']))}"
        return head, [
            ("val", p["validation_fraction"], 0.05),
            ("test", p["test_fraction"], 0.05),
        ]

    def documents(self) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of every document, in corpus order."""
        if self.manual_dir is None:
            return iter(text_corpus.bundled_documents())
        return text_corpus.read_corpus(os.path.expanduser(self.manual_dir))


def text_config(
    manual_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> TextConfig:
    """The config for a corpus directory (None: the bundled corpus); ValueError if invalid,
    including a missing directory or one without .txt/.jsonl files."""
    return tfds_common.make_config(
        TextConfig,
        manual_dir=None if manual_dir is None else os.fspath(manual_dir),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


def split_assignment(config: TextConfig) -> np.ndarray:
    """int8 [number of documents]: each document's index in SPLITS (0 train, 1 val, 2 test).

    Raises CorpusError (a ValueError) if the corpus has too few documents for three non-empty
    splits.
    """
    count = sum(1 for _ in config.documents())
    num_validation = max(1, round(config.validation_fraction * count))
    num_test = max(1, round(config.test_fraction * count))
    if num_validation + num_test >= count:
        where = config.manual_dir or "the bundled corpus"
        raise text_corpus.CorpusError(
            f"{where} has {count} non-empty documents: too few for a train, a validation and a "
            "test split (at least 3 are needed)"
        )
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _ASSIGNMENT_STREAM]))
    order = rng.permutation(count)
    assignment = np.zeros(count, np.int8)
    assignment[order[:num_validation]] = 1
    assignment[order[num_validation : num_validation + num_test]] = 2
    return assignment


def encode_document(data: bytes, tok: Tokenizer = BYTE) -> dict[str, np.ndarray]:
    """`tokens` int32 [n + 2] = [BOS] + tok's ids of data (bytes: n = len(data)) + [EOS];
    `answer_mask` int32, 0 on BOS."""
    tokens = tok.encode_with(data, bos=True, eos=True)
    answer_mask = np.ones(tokens.shape, np.int32)
    answer_mask[0] = 0
    return {"tokens": tokens, "answer_mask": answer_mask}


class MtaText(tfds_common.Builder):
    """Documents of a local corpus (or the bundled Python documentation) as tokens."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = "Documents of local .txt/.jsonl files as [BOS] + tokens + [EOS]."

    def features(self):
        return tfds.features.FeaturesDict(
            {
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "answer_mask": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "source": tfds.features.Text(),
            }
        )

    def _split_generators(self, dl_manager):
        assignment = split_assignment(self.builder_config)
        return {
            split: self._generate_examples(self._records(assignment, index))
            for index, split in enumerate(tfds_common.SPLITS)
        }

    def _records(self, assignment: np.ndarray, split: int) -> Iterator[tuple[int, dict]]:
        tok = self.builder_config.tok
        for index, (name, data) in enumerate(self.builder_config.documents()):
            if assignment[index] == split:
                # Paths that are not UTF-8 come as surrogate escapes; store their bytes.
                source = name.encode("utf-8", "surrogateescape")
                yield index, {**encode_document(data, tok), "source": source}


def prepare_text(config: TextConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the dataset in data_dir (array_record, offline) unless present; returns the builder.

    Records: `tokens`, `answer_mask` (int32 [document bytes + 2]) and `source` (bytes: the file
    name relative to the corpus dir, with ":line" for .jsonl, or the bundled topic's name).
    """
    return tfds_common.prepare(MtaText, config, data_dir)
