#!/usr/bin/env bash
# Prepared accelerator check for long-context MTA: `mta bench accelerator`'s attention part
# (forward + backward of jax_dpa, baseline, mta_pre, mta_full and, on a GPU, cuDNN attention in
# bfloat16) with impl=blockwise and impl=pallas at T = 2048, 8192, 32768. Run from the
# repository root on the device machine:
#
#     OUT=/some/dir bash scripts/device_bench_pallas.sh
#
# Writes to $OUT: env.txt (jax version and devices), accelerator.jsonl + accelerator.md and
# log.txt. Bounded to about 8 minutes: each row has --timeout seconds, a row stops at its first
# timeout, and records are appended as they come, so a cut-off run keeps what it measured. On a
# GPU impl=pallas runs the Triton-shaped kernels (mta/attention/pallas_gpu.py), on a TPU the
# Mosaic ones (docs/mta.md, "The Pallas kernel"). A machine without network keeps the jax it
# has (the lent GPU machines were seen with jax 0.11.2 for CUDA 13); env.txt and every
# record's note name it.
set -uo pipefail
OUT=${OUT:-/tmp/device_bench_pallas}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# The pinned jax with CUDA where an index is reachable; an offline machine keeps its own jax
# (the version is recorded in env.txt and in every record's note).
"$PY" -m pip install -q --retries 0 --timeout 10 "jax[cuda12]==0.10.2" >/dev/null 2>&1 \
    || echo "pip install jax[cuda12]==0.10.2 failed (offline?): using the installed jax"
JAX=$("$PY" -c 'import jax; print(jax.__version__, jax.devices()[0].device_kind)') || exit 1
echo "jax $JAX" | tee "$OUT/env.txt"

bench() {  # $1: seconds for the whole command, then the bench arguments
    local limit=$1
    shift
    timeout "$limit" "$PY" scripts/bench.py accelerator --parts attention "$@" \
        --note "jax $JAX" 2>&1 | tee -a "$OUT/log.txt"
}

bench 450 --T 2048 8192 32768 --impls pallas blockwise --timeout 120 \
    --out "$OUT/accelerator.jsonl" --markdown "$OUT/accelerator.md"
exit 0
