"""Speed and memory benchmarks of attention, training, decoding and the input pipeline.

    mta bench attention --T 512 1024 2048 --repeats 5
    mta bench train --config configs/toy/block_mta_cpu.yaml train.batch_size=16
    mta bench decode --contexts 1024 --model-config configs/toy/block_mta_cpu.yaml
    mta bench data --config configs/lm/small_baseline.yaml --corpus-mb 2048 --workers 1 2
    mta bench soak --steps 20000
    mta bench accelerator --out docs/bench_results.jsonl --markdown docs/benchmarks.md
    mta bench decode --out docs/bench_results.jsonl --markdown docs/benchmarks.md
    mta bench import --size 1B
    mta bench harness --config configs/lm/small_mta.yaml --requests 64 --batch-size 8

(`python scripts/bench.py ...` in a checkout is the same command.)

Every measurement is one JSON object on stdout with its parameters, the machine and the numbers;
--out FILE also appends them to a JSONL file and --markdown FILE (re)writes this subcommand's
section of a markdown file from the newest run in that JSONL (or from this run without --out).
Attention and decoding configurations run in fresh subprocesses (python -m mta.bench.child), so
a peak RSS belongs to one configuration and an out-of-memory or a timeout ends only that
configuration's row. The benchmarks themselves are the modules of mta/bench/.

Exit codes: 0 success; 1 a soak check failed; 2 user error (one line naming what is wrong).
"""

import argparse
import contextlib
import os
import shlex
import sys

from mta.bench import BENCHMARKS, accelerator, attention, decode, hf_import, lm_harness, soak, train
from mta.bench.harness import Recorder, UserError, load_cfg
from mta.bench.markdown import newest_run, write_markdown
from mta.cli.args import (
    command_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

SCRIPT = ("python", "scripts/bench.py")  # how records name the command when run as a script


def _common(parser: argparse.ArgumentParser) -> None:
    """Options of every subcommand: output files and a note."""
    parser.add_argument("--out", help="also append the JSON lines to this JSONL file")
    parser.add_argument("--markdown", help="(re)write this subcommand's section of this file")
    parser.add_argument("--note", default="", help="free text kept with every record")


def _shape_options(parser, heads: int = 8, head_dim: int = 64) -> None:
    parser.add_argument("--heads", type=positive_int, default=heads, help="H (default %(default)s)")
    parser.add_argument("--head-dim", type=positive_int, default=head_dim, help="D")
    parser.add_argument("--batch", type=positive_int, default=1, help="B (default %(default)s)")


def _dtype_option(parser) -> None:
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="dtype of q, k, v (default float32; the parameters stay float32)",
    )  # fmt: skip


def _subprocess_options(parser, timeout: float) -> None:
    parser.add_argument(
        "--timeout", type=positive_float, default=timeout, help="seconds per configuration"
    )
    parser.add_argument(
        "--max-memory-gb",
        type=positive_float,
        help="kill a configuration whose RSS passes this (default 80%% of available memory)",
    )


def _subparser(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A benchmark's subcommand; its --help describes it with the benchmark module's doc."""
    return sub.add_parser(
        name,
        help=help,
        description=BENCHMARKS[name].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser(prog=None) -> argparse.ArgumentParser:
    """The CLI: one subparser per benchmark."""
    parser = command_parser(__doc__, prog)
    sub = parser.add_subparsers(
        dest="bench", required=True, metavar="{" + ",".join(BENCHMARKS) + "}"
    )

    att = _subparser(sub, "attention", "forward+backward time and peak memory vs T")
    att.add_argument(
        "--T", type=positive_int, nargs="+", default=[2**i for i in range(9, 16)],
        help="sequence lengths (default 512 ... 32768)",
    )  # fmt: skip
    att.add_argument(
        "--variants", nargs="+", choices=attention.VARIANTS, default=attention.VARIANTS,
        metavar="VARIANT", help=f"some of {', '.join(attention.VARIANTS)} (default: all)",
    )  # fmt: skip
    att.add_argument(
        "--impls", nargs="+", choices=("reference", "dense", "blockwise", "pallas"),
        default=["dense", "blockwise"], metavar="IMPL",
        help="reference, dense, blockwise and/or pallas (default: dense blockwise)",
    )  # fmt: skip
    _shape_options(att)
    _dtype_option(att)
    att.add_argument("--repeats", type=positive_int, default=5, help="timed calls (median)")
    att.add_argument(
        "--warmup", type=non_negative_int, default=1, help="untimed calls after compile (>= 0)"
    )
    _subprocess_options(att, timeout=600)
    _common(att)

    tr = _subparser(sub, "train", "tokens/s and MFU of full training steps")
    tr.add_argument("--config", action="append", help="YAML config (repeatable; default: toy pair)")
    tr.add_argument("overrides", nargs="*", help="dotted overrides for every config")
    tr.add_argument("--steps", type=positive_int, default=5, help="timed steps (median)")
    tr.add_argument("--warmup", type=positive_int, default=2, help="untimed steps after compile")
    tr.add_argument("--matmul-sizes", type=positive_int, nargs="+", default=[512, 1024, 2048])
    _common(tr)

    dec = _subparser(sub, "decode", "per-token latency: cached vs recomputed decoding")
    dec.add_argument(
        "--contexts", type=positive_int, nargs="+", default=[1024, 4096, 16384],
        help="cache sizes (default 1024 4096 16384)",
    )  # fmt: skip
    dec.add_argument(
        "--methods", nargs="+", choices=decode.METHODS, default=decode.METHODS, metavar="METHOD",
        help=f"some of {', '.join(decode.METHODS)} (default: all)",
    )  # fmt: skip
    _shape_options(dec)
    dec.add_argument("--steps", type=positive_int, default=20, help="timed tokens (median)")
    dec.add_argument("--recompute-steps", type=positive_int, default=3, help="timed recomputes")
    dec.add_argument("--model-config", help="also time mta.eval.generate with this config")
    dec.add_argument("--model-contexts", type=positive_int, nargs="+", help="default: --contexts")
    dec.add_argument("--model-overrides", nargs="+", default=[], help="dotted overrides")
    _subprocess_options(dec, timeout=600)
    _common(dec)

    data = _subparser(sub, "data", "corpus ingestion tokens/s and RSS; pipeline vs training")
    data.add_argument("--config", default=train.DEFAULT_CONFIGS[0], help="YAML config")
    data.add_argument("overrides", nargs="*", help="dotted overrides")
    data.add_argument("--batches", type=positive_int, default=50, help="timed batches")
    data.add_argument("--train-steps", type=positive_int, default=5, help="timed train steps")
    data.add_argument(
        "--corpus-mb", type=non_negative_float, default=64,
        help="MB of generated jsonl.zst corpus to ingest, then read (0: read the config's data)",
    )  # fmt: skip
    data.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2], help="ingest")
    data.add_argument("--timeout", type=positive_float, default=3600, help="s per ingestion")
    _common(data)

    so = _subparser(sub, "soak", "a long run with SIGTERM + resume: nothing grows")
    so.add_argument("--config", default=soak.DEFAULT_CONFIG, help="YAML config")
    so.add_argument("overrides", nargs="*", help="dotted overrides")
    so.add_argument("--steps", type=positive_int, default=20_000, help="steps of the whole run")
    so.add_argument("--checkpoint-every", type=positive_int, default=100)
    so.add_argument("--eval-every", type=positive_int, default=1000)
    so.add_argument("--warmup", type=non_negative_int, default=2000, help="steps not checked")
    so.add_argument("--max-rss-growth-mb", type=positive_float, default=50.0)
    so.add_argument("--fd-slack", type=non_negative_int, default=4, help="allowed fd rise")
    so.add_argument("--sample-every", type=positive_float, default=1.0, help="seconds")
    so.add_argument("--workdir", help="a fresh run directory (default: a new temporary one)")
    _common(so)
    acc = _subparser(sub, "accelerator", "everything on the backend at hand, with targets")
    accelerator.add_options(acc)
    _common(acc)
    imp = _subparser(sub, "import", "import-hf of a random sharded Llama: seconds and peak RSS")
    imp.add_argument(
        "--size", choices=sorted(hf_import.SIZES), default="1B",
        help="1B: Llama-3.2-1B's shapes (4.9 GB); small (0.5 GB); tiny: a smoke run",
    )  # fmt: skip
    imp.add_argument("--dir", help="where to write the checkpoint (default: the temp directory)")
    _subprocess_options(imp, timeout=3600)
    _common(imp)
    har = _subparser(sub, "harness", "requests/s of the lm-eval model on a small LM")
    lm_harness.add_options(har)
    _common(har)
    return parser


def check_args(args) -> None:
    """Checks beyond argparse's (configs and overrides included), before any measurement;
    raises UserError."""
    if args.bench == "attention" and "diff" in args.variants and args.heads % 2:
        raise UserError(f"--heads {args.heads}: the diff variant needs an even number of heads")
    if args.bench == "train":
        for path in args.config or train.DEFAULT_CONFIGS:
            load_cfg(path, args.overrides)
    if args.bench in ("data", "soak") or (args.bench == "harness" and not args.workdir):
        load_cfg(args.config, args.overrides)
    if args.bench == "decode" and args.model_config:
        load_cfg(args.model_config, args.model_overrides)


def main(argv=None, prog=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.bench == "accelerator":  # attention rows run in child processes on the same GPU
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    command = shlex.join([*(prog.split() if prog else SCRIPT), *argv])
    try:
        check_args(args)
        rec = Recorder(args.bench, args.out, args.note, command)
        with contextlib.redirect_stdout(sys.stderr):  # e.g. TFDS's "Dataset ... prepared"
            BENCHMARKS[args.bench].run(args, rec)
    except UserError as err:
        print(f"{parser.prog} {args.bench}: error: {err}", file=sys.stderr)
        return 2
    if args.markdown:
        records = newest_run(args.out, args.bench) if args.out else rec.records
        if records:
            write_markdown(args.markdown, args.bench, records, BENCHMARKS[args.bench].COLUMNS)
    return 1 if any(r.get("passed") is False for r in rec.records) else 0


if __name__ == "__main__":
    sys.exit(main())
