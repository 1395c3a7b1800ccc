"""Speed and memory benchmarks: one module per benchmark, one shared harness.

    attention.py  forward+backward time and peak memory of attention variants vs T
    train.py      tokens/s and MFU of full training steps
    decode.py     per-token latency: cached vs recomputed decoding
    data.py       corpus ingestion tokens/s and peak RSS; input pipeline vs training tokens/s
    soak.py       a long toy run with a SIGTERM and resume: RSS, open files, checkpoints, metrics
    accelerator.py  all of it on the backend at hand (GPU/TPU), loop overhead included
    hf_import.py  importing a sharded Hugging Face checkpoint: seconds and peak RSS
    lm_harness.py requests/s of the lm-eval model (loglikelihood, generate_until)
    harness.py    configs, machine info, JSON-lines records, timing, matmul probe, memory,
                  fresh subprocesses per configuration (their side: child.py)
    markdown.py   a run's section of docs/benchmarks.md

Each benchmark module has COLUMNS (its markdown table) and run(args, rec), which emits one record
per measurement through a harness.Recorder. `mta bench NAME` (mta/cli/bench.py) is the command;
the numbers live in docs/benchmarks.md with their command and machine, not here.
"""

from mta.bench import accelerator, attention, data, decode, hf_import, lm_harness, soak, train

BENCHMARKS = {
    "attention": attention,
    "train": train,
    "decode": decode,
    "data": data,
    "soak": soak,
    "accelerator": accelerator,
    "import": hf_import,
    "harness": lm_harness,
}
