#!/usr/bin/env bash
# Prepared accelerator check for long-context MTA, about 9.5 minutes at most. Run from the repository
# root on the device machine:
#
#     OUT=/some/dir bash scripts/device_bench_pallas.sh
#
# 1. On a GPU, tests/attention/test_pallas_gpu_compiled.py: the Triton-shaped kernels compiled
#    and compared with the reference on the GPU (pytest.txt).
# 2. `mta bench accelerator`'s attention part in bfloat16 with impl=pallas at T = 8192, 2048,
#    then 32768: forward + backward of jax_dpa, baseline, mta_pre, mta_full and, on a GPU,
#    cuDNN attention. Triton compiles the release setting's six kernels in about a minute
#    (48 s on a 2-core CPU: scripts/gpu_kernel_ir.py --cubin; docs/benchmarks.md).
# 3. The same with impl=blockwise at T = 8192, 2048, 32768.
# Records are appended as they come (accelerator.jsonl, accelerator.md, log.txt), a row stops
# at its first timeout, so a cut-off run keeps what it measured.
#
# Python packages the machine lacks can travel as wheels in .whl/ (installed into /tmp/site):
# the lent GPU machines (jax 0.11.2, Python 3.12, no network) lack omegaconf and zstandard:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .whl zstandard==0.25.0 omegaconf==2.4.0
# A machine without network keeps the jax it has; env.txt and every record's note name it.
set -uo pipefail
OUT=${OUT:-/tmp/device_bench_pallas}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    "$PY" -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__,
        jax.default_backend(), jax.devices())'
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>/dev/null
} 2>&1 | tee "$OUT/env.txt"
JAX=$("$PY" -c 'import jax; print(jax.__version__, jax.devices()[0].device_kind)') || exit 1

if [ "$("$PY" -c 'import jax; print(jax.default_backend())')" = gpu ]; then
    timeout 180 "$PY" -m pytest -q -p no:cacheprovider --tb=short --durations=0 \
        tests/attention/test_pallas_gpu_compiled.py 2>&1 | tee "$OUT/pytest.txt"
fi

bench() {  # $1: seconds for the whole command, then the bench arguments
    local limit=$1
    shift
    timeout "$limit" "$PY" scripts/bench.py accelerator --parts attention --dtype bfloat16 \
        --note "jax $JAX" --out "$OUT/accelerator.jsonl" --markdown "$OUT/accelerator.md" \
        "$@" 2>&1 | tee -a "$OUT/log.txt"
}

bench 180 --T 8192 2048 --impls pallas --timeout 120
bench 100 --T 32768 --impls pallas --timeout 90
bench 120 --T 8192 2048 32768 --impls blockwise --timeout 60
exit 0
