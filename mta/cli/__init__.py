"""The commands: one module per command, each with `main(argv=None, prog=None) -> exit code`.

    mta train --config configs/toy/block_mta_cpu.yaml --workdir runs/x   # mta/cli/train.py
    mta eval --workdir runs/x --suite configs/eval/tiny.yaml             # mta/cli/eval.py
    mta ablate --sweep configs/sweeps/pre_vs_post.yaml --root runs/a     # mta/cli/ablate.py
    mta bench attention --T 512 1024                                     # mta/cli/bench.py
    mta generate --workdir runs/x --prompt "abc"                         # mta/cli/generate.py
    mta tokenizer train --kind sentencepiece --vocab-size 8000 --output sp.model  # tokenizer.py
    mta import-hf --hf-dir Llama-3.2-1B --config C --workdir runs/x      # mta/cli/import_hf.py
    mta export-hf --workdir runs/x --out export/x                        # mta/cli/export_hf.py

`python scripts/<command>.py ...` in a checkout and `python -m mta.cli.<command> ...` are the
same commands: scripts/*.py only call these `main`s. args.py holds what every command shares: a
parser that reports a usage error in one line, and exit code 2 for every user error.
config_docs.py (`python scripts/config_docs.py`) is a maintenance command of a checkout (it
rewrites docs/configs.md there), so it is not an installed command.

Why one `mta` command with subcommands rather than `mta-train`, `mta-eval`, ...: the commands
form one tool whose list grows, and
one entry point keeps that list in one place, shows it with `mta --help`, and puts one name on
PATH instead of a family of them; `bench` already has subcommands of its own in the same style.
Dispatching imports only the chosen command's module, so `mta --help` starts without JAX.
"""

import importlib
import sys

COMMANDS = {  # name: (module under mta.cli, one-line summary)
    "train": ("train", "train a model from a YAML config into a workdir (resumes)"),
    "eval": ("eval", "evaluate checkpoints on a long-context suite"),
    "generate": ("generate", "complete a prompt with a trained run's checkpoint"),
    "ablate": ("ablate", "run an ablation sweep and write its report"),
    "bench": ("bench", "speed and memory benchmarks (JSON lines on stdout)"),
    "tokenizer": (
        "tokenizer",
        "train a tokenizer file (SentencePiece, byte-level BPE)",
    ),
    "import-hf": ("import_hf", "import a Hugging Face Llama checkpoint into a workdir (step 0)"),
    "export-hf": ("export_hf", "export a checkpoint as Hugging Face safetensors + config.json"),
}


def usage() -> str:
    lines = ["usage: mta COMMAND [ARGS ...]   (mta COMMAND --help for its arguments)", ""]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    """The `mta` entry point: runs `mta COMMAND ARGS...` as mta.cli.COMMAND.main(ARGS)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        choices = ", ".join(COMMANDS)
        print(f"mta: error: unknown command {name!r} (choose from {choices})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"mta.cli.{COMMANDS[name][0]}")
    return module.main(rest, prog=f"mta {name}")
