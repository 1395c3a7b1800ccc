"""The commands as entry points: `mta COMMAND` dispatches to mta.cli.COMMAND, every command has
--help and one-line exit-2 usage errors, scripts/*.py are thin shims onto the same `main`s, and
pyproject.toml's entry point names a callable."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import mta.cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train", "eval", "ablate", "bench", "generate", "config_docs", "tokenizer"]
SCRIPTS += ["import_hf", "export_hf"]
COMMAND = {module: name for name, (module, _) in mta.cli.COMMANDS.items()}  # import_hf: import-hf


def test_mta_lists_commands_and_rejects_unknown_ones(capsys):
    assert mta.cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in mta.cli.COMMANDS)
    assert mta.cli.main([]) == 2
    capsys.readouterr()
    assert mta.cli.main(["trian"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mta: error: unknown command 'trian' (choose from train, eval, generate, ablate, bench, "
        "tokenizer, import-hf, export-hf)"
    ]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"mta.cli.{name}").main(["--help"], prog=f"mta {name}")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: mta {name}")
    if name in COMMAND:  # and through the dispatcher, by its command name
        with pytest.raises(SystemExit):
            mta.cli.main([COMMAND[name], "--help"])
        assert capsys.readouterr().out.startswith(f"usage: mta {COMMAND[name]}")


@pytest.mark.parametrize("name", [n for n in SCRIPTS if n not in ("bench", "config_docs")])
def test_usage_errors_are_one_line_exit_2(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mta.cli.main([COMMAND[name], "--no-such-flag"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mta {COMMAND[name]}: error: ")


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_are_thin_shims(name):
    text = (ROOT / "scripts" / f"{name}.py").read_text()
    assert f"from mta.cli.{name} import main" in text and len(text.splitlines()) <= 10


def test_script_and_module_forms_run_the_same_command():
    for command in (["scripts/bench.py"], ["-m", "mta", "bench"]):
        done = subprocess.run(
            [sys.executable, *command, "attention", "--T", "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert line.endswith("attention: error: argument --T: must be >= 1, got 0"), line


def test_entry_points_resolve():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for target in scripts.values():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_no_sys_path_tricks():
    sources = [*ROOT.glob("scripts/*.py"), *ROOT.glob("mta/**/*.py"), *ROOT.glob("tests/**/*.py")]
    offenders = [
        str(p.relative_to(ROOT))
        for p in sources
        if "sys.path.insert" in p.read_text() and p.name != "test_cli.py"
    ]
    assert offenders == []
