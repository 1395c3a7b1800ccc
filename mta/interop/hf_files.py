"""The files of a Hugging Face checkpoint directory: config.json, the safetensors shards (one
file, or many with model.safetensors.index.json) and tokenizer.json.

    ckpt = open_checkpoint("Llama-3.2-1B/")     # HFConfigError (one line) if anything is off
    ckpt.config, ckpt.shapes["model.norm.weight"], ckpt.files, ckpt.tokenizer
    for name, array in ckpt.tensors(names):     # shard by shard, one tensor at a time
        ...

Tensors are read with the safetensors library into numpy (bfloat16 through ml_dtypes), one
shard open at a time, so reading holds one tensor (and the shard's pages the OS maps) beyond
what the caller keeps.
"""

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes  # noqa: F401 (registers bfloat16 with numpy, which safetensors' numpy needs)
import numpy as np
from safetensors import safe_open

from mta.interop.hf_config import HFConfigError

INDEX = "model.safetensors.index.json"


@dataclasses.dataclass
class Checkpoint:
    """config: config.json's dict; files: tensor name -> shard path; shapes: name -> shape;
    dtypes: name -> safetensors dtype code; tokenizer: the tokenizer.json path."""

    config: dict
    files: dict[str, Path]
    shapes: dict[str, tuple]
    dtypes: dict[str, str]
    tokenizer: Path

    def tensors(self, names) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) of each of `names`, shard by shard in file order."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        for path in sorted(by_file):
            try:
                with safe_open(path, framework="np") as shard:
                    for name in by_file[path]:
                        yield name, shard.get_tensor(name)
            except (OSError, ValueError, TypeError) as err:
                raise HFConfigError(f"{path}: cannot read {name}: {err}") from None


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HFConfigError(f"{path} not found: a Hugging Face checkpoint needs it") from None
    except (OSError, ValueError) as err:
        raise HFConfigError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise HFConfigError(f"{path}: the top level must be an object")
    return data


def _shard_files(directory: Path) -> dict[str, Path]:
    """tensor name -> shard path, from the index if there is one, else from the shards."""
    index_path = directory / INDEX
    if index_path.exists():
        weight_map = _json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFConfigError(f"{index_path}: no weight_map of tensor name -> shard file")
        files = {name: directory / str(file) for name, file in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise HFConfigError(f"{index_path} names {path.name}, which does not exist")
        return files
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise HFConfigError(f"{directory}: no *.safetensors files (torch .bin is not read)")
    if len(shards) > 1:
        names = ", ".join(p.name for p in shards)
        raise HFConfigError(f"{directory}: several shards ({names}) but no {INDEX}")
    return {name: shards[0] for name in _header(shards[0])[0]}


def _header(path: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """({name: shape}, {name: dtype}) of one shard, from its header (no data read)."""
    shapes, dtypes = {}, {}
    try:
        with safe_open(path, framework="np") as shard:
            for name in shard.keys():
                tensor = shard.get_slice(name)
                shapes[name], dtypes[name] = tuple(tensor.get_shape()), tensor.get_dtype()
    except Exception as err:  # the library raises its own SafetensorError for a bad header
        raise HFConfigError(f"{path}: not a readable safetensors file ({err})") from None
    return shapes, dtypes


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """The checkpoint in `directory`; HFConfigError (one line) for a missing or unreadable
    file, an index naming a missing shard or a tensor its shard lacks, or no tokenizer.json."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HFConfigError(f"--hf-dir {directory}: not a directory")
    config = _json(directory / "config.json")
    files = _shard_files(directory)
    shapes, dtypes = {}, {}
    for path in sorted(set(files.values())):
        held, held_dtypes = _header(path)
        for name in (n for n, p in files.items() if p == path):
            if name not in held:
                raise HFConfigError(f"{INDEX} puts {name} in {path.name}, which does not hold it")
            shapes[name], dtypes[name] = held[name], held_dtypes[name]
    tokenizer = directory / "tokenizer.json"
    if not tokenizer.is_file():
        raise HFConfigError(f"{directory}: no tokenizer.json (the checkpoint's token ids need it)")
    return Checkpoint(config, files, shapes, dtypes, tokenizer)
