"""Import a Hugging Face Llama checkpoint into a workdir as step 0, to train, evaluate or
sample from it.

    mta import-hf --hf-dir Llama-3.2-1B --config configs/lm/llama_1B_continue_mta.yaml \\
        --workdir runs/llama_mta [key.path=value ...]
    mta train --config runs/llama_mta/config.yaml --workdir runs/llama_mta   # continues
    mta generate --workdir runs/llama_mta --prompt "The capital of France is"

The directory holds config.json, model.safetensors (or shards with
model.safetensors.index.json) and tokenizer.json; nothing is downloaded. The model's shapes,
tying, RoPE and eps come from config.json; the config gives everything else (data, training,
the attention variant: MTA's kernels start at identity). Prints a JSON summary on stdout.
Details and the parameter mapping: docs/interop.md.

Exit codes: 0 success; 2 user error (one line: a config.json field the model cannot express, a
missing, unexpected or misshapen tensor, a config contradicting config.json, a workdir that
already has checkpoints).
"""

import json
import sys

from mta.cli.args import command_parser, user_error
from mta.config import ConfigError


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    parser.add_argument("--hf-dir", required=True, help="the Hugging Face checkpoint directory")
    parser.add_argument("--config", required=True, help="YAML config of the run")
    parser.add_argument("--workdir", required=True, help="a new run directory")
    parser.add_argument("overrides", nargs="*", help="dotted overrides like train.steps=200")
    return parser.parse_args(argv)


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    from mta.interop.hf_import import import_hf

    try:
        summary = import_hf(args.hf_dir, args.config, args.workdir, args.overrides)
    except ConfigError as err:
        return user_error(err)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
