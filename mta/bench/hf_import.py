"""Importing a Hugging Face checkpoint (`mta bench import`): time and peak RSS.

A randomly initialised Llama checkpoint is written in float32 (the dtype the model keeps, so the
parameters in memory are as large as the files) as 4 safetensors shards with their index,
config.json and a small tokenizer.json, then `mta.interop.hf_import.import_hf` imports it into a
fresh workdir in a fresh subprocess, so the peak RSS is the import's alone (JAX's own included).
Target: peak RSS <= 1.5 x the checkpoint's size on disk (the streaming reader holds the model
plus about one shard). --size 1B is Llama-3.2-1B's shapes (1.24B parameters, 4.9 GB);
--size tiny is a seconds-long smoke run.
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mta.bench.harness import Recorder, UserError, max_memory_bytes, peak_rss_mb, run_child

SIZES = {  # config.json shape fields
    "1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64),
    "small": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4, head_dim=64),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}  # fmt: skip
SHARDS = 4
TARGET = 1.5
COLUMNS = [  # (markdown header, record key)
    ("size", "size"),
    ("parameters", "params"),
    ("shards", "shards"),
    ("checkpoint MB", "checkpoint_mb"),
    ("import s", "import_s"),
    ("peak RSS MB", "peak_rss_mb"),
    ("RSS / checkpoint", "rss_ratio"),
    ("target", "target"),
    ("met", "met"),
    ("status", "status"),
]
RUN = "data: {task: text, seq_len: 2048}\ntrain: {batch_size: 8}\n"


def tensor_shapes(c: dict) -> dict[str, tuple]:
    """The Llama tensors of config fields `c` (tied embeddings: no lm_head)."""
    E, F, D = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    H, K = c["num_attention_heads"], c["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], E), "model.norm.weight": (E,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (E,), p + "post_attention_layernorm.weight": (E,),
            p + "self_attn.q_proj.weight": (H * D, E), p + "self_attn.k_proj.weight": (K * D, E),
            p + "self_attn.v_proj.weight": (K * D, E), p + "self_attn.o_proj.weight": (E, H * D),
            p + "mlp.gate_proj.weight": (F, E), p + "mlp.up_proj.weight": (F, E),
            p + "mlp.down_proj.weight": (E, F),
        }  # fmt: skip
    return shapes


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(["a small text for a tokenizer the benchmark needs " * 20], trainer)
    tok.save(str(path))


def write_checkpoint(directory: Path, size: str, seed: int = 0) -> dict:
    """Writes a random float32 Llama checkpoint of `size` in SHARDS shards; {params, bytes}."""
    from safetensors.numpy import save_file

    fields = SIZES[size]
    shapes = tensor_shapes(fields)
    total = sum(int(np.prod(s)) for s in shapes.values())
    rng = np.random.default_rng(seed)
    weight_map, shard, filled, index = {}, {}, 0, 1

    def flush():
        nonlocal shard, index
        name = f"model-{index:05d}-of-{SHARDS:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({tensor: name for tensor in shard})
        shard, index = {}, index + 1

    for name, shape in shapes.items():
        shard[name] = (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float32)
        filled += int(np.prod(shape))
        if filled >= index * total / SHARDS and index < SHARDS:
            flush()
    flush()
    index_data = {"metadata": {"total_size": 4 * total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_data))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **fields,
              "tie_word_embeddings": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
              "hidden_act": "silu", "torch_dtype": "float32"}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    _tokenizer(directory / "tokenizer.json")
    on_disk = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    return {"params": total, "bytes": on_disk}


def measure(item: dict) -> dict:
    """In the child: imports item["hf_dir"] into item["workdir"]; seconds and peak RSS."""
    from mta.interop.hf_import import import_hf

    start = time.perf_counter()
    import_hf(item["hf_dir"], item["config"], item["workdir"])
    return {"import_s": round(time.perf_counter() - start, 2), "peak_rss_mb": peak_rss_mb()}


def run(args, rec: Recorder) -> None:
    """One record: write the checkpoint, import it in a child, compare RSS with the files."""
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        hf_dir, workdir = Path(scratch) / "hf", Path(scratch) / "workdir"
        hf_dir.mkdir()
        written = write_checkpoint(hf_dir, args.size)
        config = Path(scratch) / "run.yaml"
        config.write_text(RUN)
        item = {"kind": "hf_import", "hf_dir": str(hf_dir), "workdir": str(workdir)}
        (result,) = run_child([item | {"config": str(config)}], args.timeout,
                              max_memory_bytes(args.max_memory_gb))  # fmt: skip
    if result["status"].startswith("error"):
        raise UserError(f"the import failed: {result['status']}")
    checkpoint_mb = written["bytes"] / 2**20
    record = {
        "size": args.size,
        "params": written["params"],
        "shards": SHARDS,
        "checkpoint_mb": round(checkpoint_mb, 1),
        "target": f"<= {TARGET} x checkpoint",
        **result,
    }
    if "peak_rss_mb" in result:
        record["rss_ratio"] = round(result["peak_rss_mb"] / checkpoint_mb, 3)
        record["met"] = record["rss_ratio"] <= TARGET
    rec.emit(record)
