"""Lowers impl=pallas's GPU kernels (mta/attention/pallas_gpu.py) for CUDA on this machine, no GPU
needed, and reports each Triton module: whether it passes MLIR verification and the size of its
text. With --cubin, Triton's own compiler (the `triton` package, `pip install -e ".[gpu-ir]"`)
also compiles each module to a cubin for sm_90 (H100) and cuobjdump reads its resources: seconds
to compile, registers per thread, stack bytes per thread (where registers spill) and shared
memory. That Triton is the pip release, not the one built into jaxlib's XLA, so its numbers are
close to, not the same as, what a GPU run compiles.

    python scripts/gpu_kernel_ir.py                   # the settings below at T = 2048
    python scripts/gpu_kernel_ir.py --T 8192 --heads 16 --dim 64
    python scripts/gpu_kernel_ir.py --cubin --settings pre --num-warps 4 8
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from mta.attention import pallas_gpu
from mta.attention.pallas_gpu_grid import NUM_STAGES, NUM_WARPS, lower_for_cuda

SETTINGS = {  # short name -> (description, the MTA kernels (c_q, c_k) and mixing forms)
    "plain": ("plain attention (no MTA part)", {}),
    "pre": ("pre conv 6x11", dict(kq_pre=(6, 11))),
    "pre_post": ("pre + post conv 6x11", dict(kq_pre=(6, 11), kq_post=(6, 11))),
    "grouped": (
        "pre + post, grouped mixing c_h=2",
        dict(kq_pre=(6, 11), kq_post=(6, 11), head_pre="grouped", head_post="grouped"),
    ),
    "release": (
        "release: pre + post, linear pre, grouped post",
        dict(kq_pre=(6, 11), kq_post=(6, 11), head_pre="linear", head_post="grouped"),
    ),
}
# Child process: compile one Triton IR file for sm_90 with no kernel cache, read the cubin's
# resources with the cuobjdump Triton ships. A child, because Triton's MLIR and jaxlib's do not
# share a process.
COMPILE = """
import json, os, re, subprocess, sys, time
import triton
from triton.backends.compiler import GPUTarget
from triton.backends import nvidia
path, num_warps, num_stages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
kernel = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": num_warps, "num_stages": num_stages})
seconds = time.perf_counter() - start
cubin = path + ".cubin"
open(cubin, "wb").write(kernel.asm["cubin"])
tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
usage = subprocess.run([tool, "--dump-resource-usage", cubin], capture_output=True, text=True)
fields = dict(re.findall(r"(REG|STACK|LOCAL):(\\d+)", usage.stdout))
resources = {k.lower(): int(v) for k, v in fields.items()}
print(json.dumps({"seconds": seconds, "shared": kernel.metadata.shared, **resources}))
"""


def kernels(setting: dict, heads: int) -> dict:
    """Abstract float32 MTA kernels of a SETTINGS entry."""
    spec = jax.ShapeDtypeStruct
    out = {}
    for name, form in setting.items():
        if name.startswith("kq"):
            out[name] = spec((heads, *form), jnp.float32)
        else:
            shape = (heads, heads) if form == "linear" else (heads // 2, 2, 2)
            out[name] = spec(shape, jnp.float32)
    return out


def lower(setting: dict, num_t: int, heads: int, dim: int, blocks=None) -> list:
    """Forward + backward of bfloat16 attention lowered for CUDA -> the Triton modules built.
    blocks: (block_q, block_k), None for pallas_gpu.default_blocks (what a user gets)."""
    q = jax.ShapeDtypeStruct((1, num_t, heads, dim), jnp.bfloat16)
    block_q, block_k = blocks or (None, None)

    def loss(q, k, v, weights):
        out = pallas_gpu.attention(q, k, v, **weights, block_q=block_q, block_k=block_k)
        return out.astype(jnp.float32).sum()

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
    return lower_for_cuda(grad, q, q, q, kernels(setting, heads))[1]


def cubin_resources(module, num_warps: int, num_stages: int) -> dict:
    """One Triton module compiled to a cubin for sm_90 -> {seconds, reg, stack, shared, local}
    (registers and stack bytes per thread, dynamic shared bytes per program), or {error}."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ttir")
        with open(path, "w") as f:
            f.write(module.operation.get_asm(enable_debug_info=False))
        env = {**os.environ, "TRITON_CACHE_DIR": tmp, "TRITON_DEFAULT_FP_FUSION": "1"}
        args = [sys.executable, "-c", COMPILE, path, str(num_warps), str(num_stages)]
        child = subprocess.run(args, capture_output=True, text=True, env=env)
    if child.returncode:
        return {"error": child.stderr.strip().splitlines()[-1][:200]}
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--blocks", type=int, nargs=2, metavar=("BLOCK_Q", "BLOCK_K"),
        help="default: pallas_gpu.default_blocks (16 x 64 for the release setting, else 64 x 64)",
    )  # fmt: skip
    parser.add_argument("--cubin", action="store_true", help="also compile for sm_90 (triton)")
    parser.add_argument("--num-warps", type=int, nargs="+", default=[NUM_WARPS])
    parser.add_argument("--modules", type=int, nargs="+", help="compile these module indices")
    args = parser.parse_args()
    if args.cubin:
        try:
            import triton
        except ImportError:
            parser.error('--cubin needs the triton package: pip install -e ".[gpu-ir]"')
    blocks = "x".join(map(str, args.blocks)) if args.blocks else "default"
    print(f"T={args.T} H={args.heads} D={args.dim} blocks {blocks}")
    print(f"bfloat16, jax {jax.__version__}")
    print(
        "| setting | Triton modules (forward, then backward): MB of text | verified | lowering s |"
    )
    print("|---|---|---|---:|")
    compiled = []
    for key in args.settings:
        name, setting = SETTINGS[key]
        start = time.perf_counter()
        modules = lower(setting, args.T, args.heads, args.dim, args.blocks)
        seconds = time.perf_counter() - start
        sizes = ", ".join(f"{len(str(m)) / 1e6:.2f}" for m in modules)
        verified = all(m.operation.verify() for m in modules)
        print(f"| {name} | {sizes} | {verified} | {seconds:.1f} |", flush=True)
        compiled.append((name, modules))
    if not args.cubin:
        return
    print(f"\nsm_90 cubins (triton {triton.__version__}, num_stages {NUM_STAGES}):")
    print("| setting | module | num_warps | compile s | registers | stack B | shared KiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, modules in compiled:
        for i, module in enumerate(modules):
            if args.modules and i not in args.modules:
                continue
            for warps in args.num_warps:
                r = cubin_resources(module, warps, NUM_STAGES)
                if "error" in r:
                    print(f"| {name} | {i} | {warps} | failed: {r['error']} | | | |", flush=True)
                    continue
                row = f"{r['seconds']:.1f} | {r['reg']} | {r['stack']} | {r['shared'] / 1024:.0f}"
                print(f"| {name} | {i} | {warps} | {row} |", flush=True)


if __name__ == "__main__":
    main()
