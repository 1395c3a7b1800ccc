"""Integrity of built datasets: every shard's size and hash, recorded when it is built and
checked when the build is opened.

TFDS builds into a temporary directory and renames it into place when the whole build is done;
`record_checksums` runs inside that directory (from the builders' `_download_and_prepare`), so an
interrupted build leaves nothing that reads as complete, and every complete build has its
checksums. `verify_checksums` is cheap: it compares sizes, and rehashes only the shards whose
modification time changed since the build. A missing, cut-short or modified shard is a
DamagedDatasetError naming it and how to rebuild it.
"""

import hashlib
import json
import os
from pathlib import Path

CHECKSUMS = "mta_checksums.json"


class DamagedDatasetError(ValueError):
    """A built shard is missing, cut short or modified since its build."""


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksums(directory) -> None:
    """Writes CHECKSUMS in a build directory: {shard file: {size, mtime_ns, blake2b}} of its
    array_record shards."""
    directory = Path(directory)
    shards = {}
    for path in sorted(directory.iterdir()):
        if ".array_record-" in path.name:
            stat = os.stat(path)
            shards[path.name] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "blake2b": _file_digest(path),
            }
    partial = directory / f"{CHECKSUMS}.{os.getpid()}.tmp"
    partial.write_text(json.dumps(shards, indent=1))
    partial.replace(directory / CHECKSUMS)


def verify_checksums(directory) -> None:
    """Checks the shards of a build against its CHECKSUMS (recording them first for a build
    made before they existed): sizes always, hashes where the modification time changed.
    Raises DamagedDatasetError naming the first damaged shard and how to rebuild it."""
    directory = Path(directory)
    manifest = directory / CHECKSUMS
    if not manifest.exists():
        try:
            record_checksums(directory)
        except OSError:  # a read-only copy: nothing to compare with
            pass
        return
    for name, expected in json.loads(manifest.read_text()).items():
        path = directory / name
        if not path.exists():
            problem = "is missing"
        elif (size := os.stat(path).st_size) != expected["size"]:
            problem = f"has {size} bytes, {expected['size']} when built"
        elif os.stat(path).st_mtime_ns == expected["mtime_ns"]:
            continue
        elif _file_digest(path) != expected["blake2b"]:
            problem = "was modified after it was built (its hash differs)"
        else:
            continue
        raise DamagedDatasetError(
            f"dataset shard {path} {problem}; rebuild it with `rm -r {directory}` and run this "
            "command again"
        )
