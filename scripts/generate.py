"""Generate a completion of a prompt with a trained run's checkpoint.

    python scripts/generate.py --workdir runs/x --prompt "abc" [--step N] [--max-new-tokens 64]
        [--temperature 0.8] [--top-k 20] [--seed 0] [--stop "." "\\n"]

Loads WORKDIR/config.yaml and the parameters of the newest checkpoint (or of --step), decodes
with the cache of mta.eval.generate and prints the completion on stdout (cut before the first
stop string); one line on stderr says the step, the number of tokens and why it stopped.

Exit codes: 0 success; 2 user error (one line: missing workdir, config or checkpoint, a step
that was not saved, a bad argument).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mta.config import ConfigError, MeshConfig, load_config  # noqa: E402


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def non_negative(kind):
    """argparse type: a number of `kind` (int or float) >= 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
        return value

    return parse


def parse_args(argv) -> argparse.Namespace:
    parser = OneLineParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--workdir", required=True, help="run directory of scripts/train.py")
    parser.add_argument("--step", type=non_negative(int), help="checkpoint step (default: newest)")
    parser.add_argument("--prompt", required=True, help="text to continue (byte-tokenized)")
    parser.add_argument("--max-new-tokens", type=non_negative(int), default=64)
    parser.add_argument(
        "--temperature", type=non_negative(float), default=0.0, help="0 (default) is greedy"
    )
    parser.add_argument("--top-k", type=non_negative(int), default=0, help="0: all tokens")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--stop", nargs="+", action="extend", default=[], metavar="STR", help="stop strings"
    )
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error("argument --max-new-tokens: must be >= 1")
    if any(not s for s in args.stop):
        parser.error("argument --stop: stop strings must be non-empty")
    return args


def saved_steps(workdir: Path) -> list[int]:
    """Steps of the complete checkpoints in WORKDIR/checkpoints (orbax names them by step;
    unfinished ones carry a temporary suffix)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def locate(workdir: Path, step: int | None):
    """(config, step) of a run; ConfigError (one line) if anything is missing."""
    if not workdir.is_dir():
        raise ConfigError(f"workdir not found: {workdir}")
    if not (workdir / "config.yaml").is_file():
        raise ConfigError(f"{workdir} has no config.yaml: is it a workdir of scripts/train.py?")
    cfg = load_config(workdir / "config.yaml")
    steps = saved_steps(workdir)
    if not steps:
        raise ConfigError(f"no checkpoint in {workdir / 'checkpoints'}")
    if step is None:
        return cfg, steps[-1]
    if step not in steps:
        available = ", ".join(map(str, steps))
        raise ConfigError(f"no checkpoint at step {step} in {workdir}; saved steps: {available}")
    return cfg, step


def load_model(cfg, workdir: Path, step: int):
    """The Transformer with the parameters saved at `step` (the optimizer state is not read)."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from mta.train import checkpoint
    from mta.train.mesh import make_mesh
    from mta.train.state import TrainSetup

    # the run's mesh may name more devices than this machine has: restore onto all of ours
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(rules=cfg.mesh.rules))
    setup = TrainSetup(cfg, make_mesh(cfg.mesh))
    target = {"params": setup.abstract_state()["params"]}
    restore = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    manager = checkpoint.make_manager(workdir, cfg.checkpoint)
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
    except Exception as err:  # any failure to read is reported in one line
        detail = " ".join(str(err).split())[:200]
        raise ConfigError(f"cannot read checkpoint {step} of {workdir}: {detail}") from None
    finally:
        manager.close()
    return nnx.merge(setup.graphdef, state["params"])


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    try:
        cfg, step = locate(workdir, args.step)
        if args.top_k > cfg.model.vocab_size:
            raise ConfigError(
                f"--top-k {args.top_k} exceeds the vocabulary ({cfg.model.vocab_size})"
            )
        model = load_model(cfg, workdir, step)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mta.eval.generate import Generator

    completion = Generator(model)(
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
