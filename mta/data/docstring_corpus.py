"""An offline English corpus: the docstrings of Python's standard library and pinned packages.

Why this corpus: the machine that trains the CPU-scale language models has no internet, and the
bundled corpus (mta/data/text_corpus.py, ~420 KB) is seen many times over by a run of a few
million tokens, so models differ in how they memorise rather than in how they generalise. The
docstrings of the standard library and of this project's pinned dependencies are tens of MB of
English technical prose from the same domain as the bundled corpus (Python's documentation), so a
tokenizer trained on the bundled corpus fits it, and a run sees each document about once. The
output depends only on the Python version and the package versions, both pinned.

    python scripts/docstring_corpus.py --out runs/lm_data/docstrings

writes `docstrings-NNNNN.jsonl.zst` shards with one JSON object per module,
`{"text": ..., "source": "package/relative/path.py"}`: the module's docstrings (module, classes,
functions, in source order) joined by blank lines, modules with fewer than `--min-chars`
characters of docstrings left out, duplicates (vendored copies) kept once.
"""

import argparse
import ast
import hashlib
import importlib.util
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import zstandard

DEFAULT_PACKAGES = (
    "stdlib",
    "numpy",
    "jax",
    "flax",
    "optax",
    "matplotlib",
    "tensorflow_datasets",
    "orbax",
)
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def module_docstrings(source: bytes) -> str:
    """The docstrings of one module's source, in source order, joined by blank lines ('' if none
    or if the source does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    nodes = sorted(
        (node for node in ast.walk(tree) if isinstance(node, _DOCUMENTED)),
        key=lambda node: getattr(node, "lineno", 0),
    )
    docs = (ast.get_docstring(node) for node in nodes)
    return "\n\n".join(doc for doc in docs if doc)


def package_root(name: str) -> Path:
    """The directory holding package `name` ('stdlib': the standard library's)."""
    if name == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: package {name!r} is not installed (a package name is needed)")
    return Path(next(iter(spec.submodule_search_locations)))


def documents(packages, min_chars: int) -> Iterator[dict]:
    """One {'text', 'source'} per module of `packages` with at least `min_chars` of docstrings,
    in a fixed order (package order, then sorted paths), each distinct text once."""
    seen = set()
    for name in packages:
        root = package_root(name)
        skip = {"site-packages", "dist-packages"} if name == "stdlib" else set()
        for path in sorted(root.rglob("*.py")):
            if skip & set(path.relative_to(root).parts):
                continue
            text = module_docstrings(path.read_bytes())
            digest = hashlib.sha256(text.encode()).digest()
            if len(text) < min_chars or digest in seen:
                continue
            seen.add(digest)
            yield {"text": text, "source": f"{name}/{path.relative_to(root)}"}


def write_shards(docs, out: Path, shards: int) -> list[int]:
    """Writes docs round-robin into `shards` jsonl.zst files in `out`; returns bytes of text per
    shard. Files are written under a temporary name and renamed, so a killed run leaves no shard
    that reads as complete."""
    out.mkdir(parents=True, exist_ok=True)
    names = [out / f"docstrings-{i:05d}.jsonl.zst" for i in range(shards)]
    handles = [open(f"{name}.partial", "wb") for name in names]
    writers = [zstandard.ZstdCompressor(level=10).stream_writer(h) for h in handles]
    sizes = [0] * shards
    for i, doc in enumerate(docs):
        writers[i % shards].write((json.dumps(doc) + "\n").encode())
        sizes[i % shards] += len(doc["text"].encode())
    for writer, name in zip(writers, names, strict=True):
        writer.close()
        Path(f"{name}.partial").rename(name)
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--min-chars", type=int, default=200)
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    sizes = write_shards(documents(args.packages, args.min_chars), args.out, args.shards)
    print(json.dumps({"out": str(args.out), "shards": args.shards, "text_mb": sum(sizes) / 1e6}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
