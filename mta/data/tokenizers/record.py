"""The tokenizer a workdir was trained with: WORKDIR/tokenizer.json, beside config.yaml.

    record.write(workdir, tok)     # {"kind", "path", "fingerprint", "vocab_size"}
    record.check(workdir, tok)     # ConfigError unless tok is the recorded tokenizer

A checkpoint's ids mean nothing under another tokenizer, so training on (resuming), evaluating
or generating from a workdir with a tokenizer of another fingerprint is refused: a different
file, or the same path with other contents. Workdirs written before the record have none and
are not checked (config.yaml's data.tokenizer still names the tokenizer).
"""

import json
from pathlib import Path

from mta.config import ConfigError
from mta.data.tokenizers.base import Tokenizer

NAME = "tokenizer.json"


def read(workdir: str | Path) -> dict | None:
    """The workdir's record, or None if it has none (or an unreadable one)."""
    try:
        saved = json.loads((Path(workdir) / NAME).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def write(workdir: str | Path, tok: Tokenizer) -> None:
    """Writes WORKDIR/tokenizer.json: tok.record()."""
    (Path(workdir) / NAME).write_text(json.dumps(tok.record(), indent=1) + "\n")


def check(workdir: str | Path, tok: Tokenizer) -> None:
    """ConfigError (one line) if the workdir records a tokenizer whose fingerprint is not tok's."""
    saved = read(workdir)
    if saved is None or saved.get("fingerprint") == tok.fingerprint:
        return
    where = f" {saved.get('path')}" if saved.get("path") else ""
    raise ConfigError(
        f"{workdir} was trained with the {saved.get('kind')} tokenizer{where} (fingerprint "
        f"{saved.get('fingerprint')}), not the {tok.describe()} (fingerprint {tok.fingerprint}); "
        "use the tokenizer it was trained with"
    )
