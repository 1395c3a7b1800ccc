"""Export a checkpoint of a workdir as a Hugging Face directory (model.safetensors,
config.json, tokenizer.json).

    mta export-hf --workdir runs/x [--step N] --out export/x

A baseline (softmax attention, MHA/GQA/MQA) loads in transformers' LlamaForCausalLM with the
same logits. MTA, Talking-heads, DIFF and the other variants are written in the same format
with their own parameters and config (config.json's `mta` key); one line on stderr says that
transformers has no class for them (`mta import-hf` reads them back). Prints a JSON summary
on stdout. Details: docs/interop.md.

Exit codes: 0 success; 2 user error (one line: missing workdir or checkpoint, an --out that is
not empty, a tokenizer other than the run's).
"""

import json
import sys

from mta.cli.args import command_parser, non_negative_int, user_error
from mta.config import ConfigError


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    parser.add_argument("--workdir", required=True, help="run directory of `mta train`")
    parser.add_argument("--step", type=non_negative_int, help="checkpoint step (default: newest)")
    parser.add_argument("--out", required=True, help="a new (or empty) output directory")
    parser.add_argument("--tokenizer", help="the run's tokenizer file, if it moved")
    return parser.parse_args(argv)


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    from mta.interop.hf_export import NO_CLASS, export_hf

    try:
        summary = export_hf(args.workdir, args.step, args.out, args.tokenizer)
    except ConfigError as err:
        return user_error(err)
    if not summary["llama"]:
        print(f"note: {NO_CLASS}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
