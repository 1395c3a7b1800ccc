"""Tokenizers through the commands: `mta tokenizer train`, the train command's checks of
data.tokenizer (one line, exit 2, before any compute), a synthetic task trained and scored with
a SentencePiece tokenizer, and evaluation/generation refusing another tokenizer."""

import json
import os
import shutil
from pathlib import Path

import pytest

from mta.cli import eval as eval_cli
from mta.cli import generate as generate_cli
from mta.cli import tokenizer as tokenizer_cli
from mta.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/toy/block_baseline_cpu.yaml")


def _run(main, argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _sp(files, name="unigram") -> list[str]:
    kind, path = files[name]
    return [f"data.tokenizer.kind={kind}", f"data.tokenizer.path={path}"]


def test_tokenizer_train_bad_input_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "t.model")
    code, err = _run(
        tokenizer_cli.main,
        ["train", "--kind", "sentencepiece", "--vocab-size", "400", "--output", out]
        + ["--input", str(tmp_path / "nope")],
        capsys,
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
    assert not os.path.exists(out)
    with pytest.raises(SystemExit) as info:
        tokenizer_cli.main(
            ["train", "--kind", "huggingface", "--vocab-size", "100", "--output", out]
        )
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--vocab-size: 100 is too small" in line


def test_tokenizer_train_reads_corpus_directories(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Ein kleiner Text über Größen. " * 50)
    (corpus / "b.jsonl").write_text(json.dumps({"text": "naïve café " * 40}) + "\n")
    out = tmp_path / "tok.json"
    argv = ["train", "--kind", "huggingface", "--vocab-size", "300", "--output", str(out)]
    assert tokenizer_cli.main([*argv, "--input", str(corpus), "--special", "<sep>"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "huggingface" and record["path"] == str(out) and out.is_file()
    assert "<sep>" in out.read_text()


def _bad_cases(files, tmp_path):
    directory = tmp_path / "a_directory"
    directory.mkdir(exist_ok=True)
    return {
        "missing": (
            ["data.tokenizer.kind=sentencepiece", f"data.tokenizer.path={tmp_path}/none.model"],
            "none.model: tokenizer file not found; expected a SentencePiece model file",
        ),
        "not a file": (
            ["data.tokenizer.kind=huggingface", f"data.tokenizer.path={directory}"],
            "a_directory: not a file; expected a Hugging Face tokenizers file",
        ),
        "wrong kind": (
            ["data.tokenizer.kind=sentencepiece", f"data.tokenizer.path={files['hf'][1]}"],
            "tokenizer.json: not a sentencepiece tokenizer",
        ),
        "tiktoken given a sentencepiece model": (
            ["data.tokenizer.kind=tiktoken", f"data.tokenizer.path={files['unigram'][1]}"],
            "not a tiktoken tokenizer (line",
        ),
        "no path": (["data.tokenizer.kind=tiktoken"], "data.tokenizer.path: empty"),
        "too large for the model": (
            _sp(files),
            "model.vocab_size: 259 is smaller than the vocabulary of the sentencepiece tokenizer",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "not a file", "wrong kind", "tiktoken given a sentencepiece model", "no path"]
    + ["too large for the model"],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_bad_tokenizer_through_train_cli(case, dry_run, tokenizer_files, tmp_path, capsys):
    overrides, expected = _bad_cases(tokenizer_files, tmp_path)[case]
    workdir = tmp_path / "run"
    flags = ["--dry-run"] if dry_run else ["--workdir", str(workdir)]
    code, err = _run(train_cli.main, ["--config", CONFIG, *flags, *overrides], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and expected in err[0], err[0]
    assert not workdir.exists()  # refused before anything was written or computed


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_tokenizer_file(tokenizer_files, tmp_path, capsys):
    path = tmp_path / "locked.model"
    shutil.copy(tokenizer_files["unigram"][1], path)
    path.chmod(0)
    overrides = ["data.tokenizer.kind=sentencepiece", f"data.tokenizer.path={path}"]
    code, err = _run(train_cli.main, ["--config", CONFIG, "--dry-run", *overrides], capsys)
    assert code == 2 and len(err) == 1 and "locked.model: cannot read" in err[0]


def test_dry_run_prints_the_tokenizer(tokenizer_files, capsys):
    argv = ["--config", CONFIG, "--dry-run", "--no-compile", *_sp(tokenizer_files)]
    argv.append("model.vocab_size=512")
    assert train_cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    kind, path = tokenizer_files["unigram"]
    assert summary["tokenizer"]["kind"] == kind and summary["tokenizer"]["path"] == path
    assert summary["tokenizer"]["vocab_size"] == 400


SUITE = """name: sp
num_examples: 4
batch_size: 4
extra_new_tokens: 2
tasks:
  block:
    - {n: 5, l: 2, variants: [all], lengths: [31]}
  mqar:
    - {num_pairs: 4, key_len: 2, value_len: 2, lengths: [64]}
  vartrack:
    - {num_chains: 1, num_hops: 1, lengths: [400]}
  perplexity:
    - {seq_len: 64, buckets: [0, 32, 64], num_examples: 4}
"""


@pytest.fixture(scope="module")
def sp_run(tiny_overrides, tokenizer_files, tmp_path_factory):
    """A workdir trained 2 steps on the block task with the SentencePiece unigram tokenizer."""
    workdir = tmp_path_factory.mktemp("sp_run") / "run"
    overrides = [*tiny_overrides, *_sp(tokenizer_files), "model.vocab_size=400"]
    overrides += ["data.seq_len=48", "train.steps=2", "eval.every=2"]
    argv = ["--config", CONFIG, "--workdir", str(workdir), *overrides]
    assert train_cli.main(argv) == 0
    return workdir


def test_synthetic_tasks_train_and_score_with_sentencepiece(sp_run, data_dir, tmp_path, capsys):
    kind, path = (json.loads((sp_run / "tokenizer.json").read_text())[k] for k in ("kind", "path"))
    assert kind == "sentencepiece" and path.endswith("sp_unigram.model")
    built = [p.name for p in (Path(data_dir) / "mta_block_task").iterdir()]
    assert any("_tok" in name for name in built)  # the SentencePiece build has its own name
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    argv = ["--workdir", str(sp_run), "--suite", str(suite), "--data-dir", data_dir]
    assert eval_cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)[str(sp_run)]
    assert {key.split("/")[0] for key in summary} == {"block", "mqar", "vartrack", "perplexity"}
    samples = (sp_run / "eval" / "2" / "samples" / "block.jsonl").read_text().splitlines()
    first = json.loads(samples[0])
    assert len(first["answer"]) == 5 and isinstance(first["predicted"], str)
    argv = ["--workdir", str(sp_run), "--prompt", "abcde.fghij#", "--max-new-tokens", "4"]
    assert generate_cli.main([*argv, "--stop", "\u00e9"]) == 0


def test_another_tokenizer_is_refused(sp_run, tokenizer_files, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    other = tokenizer_files["bpe"][1]  # also sentencepiece with 400 ids: fits, but not the run's
    for main, argv in [
        (eval_cli.main, ["--workdir", str(sp_run), "--suite", str(suite), "--tokenizer", other]),
        (generate_cli.main, ["--workdir", str(sp_run), "--prompt", "ab", "--tokenizer", other]),
    ]:
        code, err = _run(main, argv, capsys)
        assert code == 2 and len(err) == 1, err
        assert "was trained with the sentencepiece tokenizer" in err[0] and "sp_bpe" in err[0]
    moved = tmp_path / "moved.model"  # the same file elsewhere is accepted
    shutil.copy(tokenizer_files["unigram"][1], moved)
    argv = ["--workdir", str(sp_run), "--prompt", "ab", "--max-new-tokens", "2"]
    assert generate_cli.main([*argv, "--tokenizer", str(moved)]) == 0
    capsys.readouterr()
    moved.write_bytes(Path(other).read_bytes())  # same path, other contents
    code, err = _run(generate_cli.main, [*argv, "--tokenizer", str(moved)], capsys)
    assert code == 2 and len(err) == 1 and "fingerprint" in err[0]
