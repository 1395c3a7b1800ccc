"""Generate a completion of a prompt with a trained run's checkpoint.

    mta generate --workdir runs/x --prompt "abc" [--step N] [--max-new-tokens 64]
        [--temperature 0.8] [--top-k 20] [--seed 0] [--stop "." "\\n"]

(`python scripts/generate.py ...` in a checkout is the same command.)

Loads WORKDIR/config.yaml and the parameters of the newest checkpoint (or of --step) with
mta.eval.restore, decodes with the cache of mta.eval.generate and prints the completion on stdout
(cut before the first stop string, matched on the decoded text); one line on stderr says the
step, the number of tokens and why it stopped. The run's tokenizer (WORKDIR/tokenizer.json)
encodes the prompt and decodes the output.

Exit codes: 0 success; 2 user error (one line: missing workdir, config or checkpoint, a step
that was not saved, a tokenizer other than the run's, a bad argument).
"""

import sys

from mta.cli.args import at_least, command_parser, non_negative_int, user_error
from mta.config import ConfigError


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    parser.add_argument("--workdir", required=True, help="run directory of `mta train`")
    parser.add_argument("--step", type=non_negative_int, help="checkpoint step (default: newest)")
    parser.add_argument(
        "--prompt", required=True, help="text to continue (with the run's tokenizer)"
    )
    parser.add_argument(
        "--tokenizer",
        help="the tokenizer file, if it moved (it must be the one the workdir was trained with)",
    )
    parser.add_argument("--max-new-tokens", type=at_least(int, 1), default=64)
    parser.add_argument(
        "--temperature", type=at_least(float, 0), default=0.0, help="0 (default) is greedy"
    )
    parser.add_argument("--top-k", type=non_negative_int, default=0, help="0: all tokens")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--stop", nargs="+", action="extend", default=[], metavar="STR", help="stop strings"
    )
    args = parser.parse_args(argv)
    if any(not s for s in args.stop):
        parser.error("argument --stop: stop strings must be non-empty")
    return args


def load_model(workdir: str, step: int | None, top_k: int, tokenizer: str | None = None):
    """(the Transformer of checkpoint `step` (None: the newest), its tokenizer, the step);
    ConfigError (one line) for a missing workdir, config or checkpoint, a tokenizer other than
    the run's, or a top-k beyond the vocabulary."""
    from flax import nnx

    from mta.eval import restore

    step = restore.find_step(workdir, step)
    loaded = restore.load_model(workdir, step, tokenizer=tokenizer)
    if top_k > loaded.cfg.model.vocab_size:
        raise ConfigError(f"--top-k {top_k} exceeds the vocabulary ({loaded.cfg.model.vocab_size})")
    return nnx.merge(loaded.graphdef, loaded.params), loaded.tok, step


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    try:
        model, tok, step = load_model(args.workdir, args.step, args.top_k, args.tokenizer)
    except ConfigError as err:
        return user_error(err)
    from mta.eval.generate import Generator

    completion = Generator(model, tok)(
        [args.prompt],
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
    )[0]
    print(completion.text)
    print(
        f"step {step}: {len(completion.tokens)} tokens, finish reason {completion.finish_reason}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
