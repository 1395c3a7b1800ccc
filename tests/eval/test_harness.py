"""The lm-eval model `mta` (mta/harness/) on a tiny MTA checkpoint trained here: its scores
against an independent float64 numpy computation over the model's logits, batching, stop
strings, rolling windows, tasks defined in tests/fixtures/lm_eval_tasks run through lm-eval's
own evaluator, `mta eval --harness` and `python -m mta.harness`, and their user errors."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("lm_eval")  # a dev dependency (pyproject.toml): present in CI

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from mta.cli import eval as eval_cli  # noqa: E402
from mta.cli import train as train_cli  # noqa: E402
from mta.harness.model import HarnessLM  # noqa: E402
from mta.harness.run import task_manager  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests/fixtures/lm_eval_tasks"
MAX_LENGTH = 24  # short, so that documents and prompts cross it
# MTA with key-query convs before and after the softmax and head mixing; untied embeddings
# so that two steps of training leave a model whose greedy text varies.
MTA = [
    "model.tie_embeddings=false",
    "model.attention.kq_post.enabled=true",
    "model.attention.kq_post.c_q=3",
    "model.attention.kq_post.c_k=3",
    "model.attention.head_pre=linear",
]


@pytest.fixture(scope="module")
def run(tiny_overrides, tmp_path_factory):
    """A workdir with a checkpoint at step 2 of a tiny MTA model (byte tokenizer)."""
    workdir = tmp_path_factory.mktemp("harness") / "run"
    argv = ["--config", "configs/toy/block_mta_cpu.yaml", "--workdir", str(workdir)]
    assert train_cli.main([*argv, *tiny_overrides, *MTA, "train.steps=2"]) == 0
    return workdir


@pytest.fixture(scope="module")
def lm(run):
    return HarnessLM(workdir=str(run), batch_size=3, max_length=MAX_LENGTH)


def _request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(arguments), idx=0)


PADDED = 64  # the reference forward's one length: right padding changes nothing before it
_FORWARD = {}


def _logprobs(lm, ids) -> np.ndarray:
    """float64 log-softmax [T - 1, V] of the model's logits on ids[:-1] (the plain model call,
    jitted once at length PADDED; a causal model's logits before the padding do not see it)."""
    if id(lm.loaded) not in _FORWARD:
        graphdef = lm.loaded.graphdef
        _FORWARD[id(lm.loaded)] = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    inputs = np.full((1, PADDED), lm.tok.pad_id, np.int32)
    inputs[0, : len(ids) - 1] = ids[:-1]
    logits = np.asarray(_FORWARD[id(lm.loaded)](lm.loaded.params, inputs), np.float64)
    logits = logits[0, : len(ids) - 1]
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _scored(lm, ids, n: int) -> tuple[float, bool]:
    """(sum of log p over the last n tokens of ids, whether each is the argmax)."""
    logp = _logprobs(lm, ids)[-n:]
    targets = np.asarray(ids[-n:])
    return float(logp[np.arange(n), targets].sum()), bool((logp.argmax(-1) == targets).all())


def _expected_loglikelihood(lm, context: str, continuation: str) -> tuple[float, bool]:
    tok = lm.tok
    if context:
        whole = tok.encode_with(context + continuation, bos=True)
        n = len(whole) - len(tok.encode_with(context, bos=True))
    else:
        whole = tok.encode_with(continuation, bos=True)
        n = len(whole) - 1
    return _scored(lm, whole[-(MAX_LENGTH + 1) :], n)


PAIRS = [
    ("abcde.fghij#", "fg"),
    ("", "hello"),
    ("x", "y"),
    ("a much longer context that passes the model's max length.", " end"),
    ("jplsg.qejey#", "myn"),
]


def test_loglikelihood_equals_numpy_teacher_forcing(lm):
    got = lm.loglikelihood([_request("loglikelihood", *pair) for pair in PAIRS])
    for pair, (logprob, greedy) in zip(PAIRS, got, strict=True):
        want, want_greedy = _expected_loglikelihood(lm, *pair)
        np.testing.assert_allclose(logprob, want, rtol=1e-5, atol=1e-4, err_msg=str(pair))
        assert greedy == want_greedy, pair
    # is_greedy on a continuation that is the argmax, token by token (ids, any vocabulary)
    ids = list(lm.tok.encode_with("abcde.fg", bos=True))
    for _ in range(3):
        ids.append(int(_logprobs(lm, [*ids, 0])[-1].argmax()))
    greedy = [((None, None), ids[:-3], ids[-3:])]
    other = [((None, None), ids[:-3], [*ids[-3:-1], (ids[-1] + 1) % lm.tok.vocab_size])]
    (logprob, is_greedy), (_, not_greedy) = lm._loglikelihood_tokens(greedy + other)
    assert is_greedy and not not_greedy
    np.testing.assert_allclose(logprob, _scored(lm, ids, 3)[0], rtol=1e-5, atol=1e-4)


def _expected_rolling(lm, text: str) -> float:
    """log p(text | BOS) over windows of MAX_LENGTH inputs: the first predicts the first
    MAX_LENGTH tokens; each next one the following (up to) MAX_LENGTH tokens, its inputs the
    MAX_LENGTH tokens just before its last target, so every token is scored once."""
    seq = lm.tok.encode_with(text, bos=True)
    n, total = len(seq) - 1, 0.0
    done = min(MAX_LENGTH, n)
    total += _scored(lm, seq[: done + 1], done)[0]
    while done < n:
        k = min(MAX_LENGTH, n - done)
        end = done + k  # the window's last target is seq[end]
        total += _scored(lm, seq[end - MAX_LENGTH : end + 1], k)[0]
        done = end
    return total


def test_rolling_sums_token_logprobs_over_windows(lm):
    docs = ["short doc", "x" * 30 + " a document of seventy-odd bytes, three windows long"]
    assert len(docs[1]) > 2 * MAX_LENGTH
    got = lm.loglikelihood_rolling([_request("loglikelihood_rolling", d) for d in docs])
    want = [_expected_rolling(lm, d) for d in docs]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # a short document is one window: log p of each token given all before it
    seq = lm.tok.encode_with(docs[0], bos=True)
    np.testing.assert_allclose(got[0], _scored(lm, seq, len(seq) - 1)[0], rtol=1e-5, atol=1e-4)


def _greedy_bytes(lm, prompt: str, steps: int) -> bytes:
    """Greedy continuation by full recomputation in numpy (no cache), stopping at EOS."""
    ids = list(lm.tok.encode_with(prompt, bos=True))
    new = []
    for _ in range(steps):
        new.append(int(_logprobs(lm, [*ids, *new, 0])[-1].argmax()))
        if new[-1] == lm.tok.eos_id:
            break
    return lm.tok.decode_bytes(new)


def test_generate_until_honours_stop_strings(lm):
    prompts = ["abcde.fghij#", "hello", "zz", "rvmw.qiqzh#"]
    full = {p: _greedy_bytes(lm, p, 8) for p in prompts}
    requests, expected = [], []
    for prompt in prompts:
        printable = [c for c in full[prompt][1:].decode("latin-1") if c.isalnum() or c in "+-/!"]
        stops = [printable[0]] if printable else []
        kwargs = {"until": [*stops, "never seen"], "max_gen_toks": 8}
        requests.append(_request("generate_until", prompt, kwargs))
        cut = min([full[prompt].find(s.encode()) for s in stops if s.encode() in full[prompt]],
                  default=None)  # fmt: skip
        expected.append(full[prompt][:cut].decode("utf-8", errors="replace"))
    assert any(requests[i].args[1]["until"][0] != "never seen" for i in range(len(prompts)))
    assert lm.generate_until(requests) == expected
    no_stop = [_request("generate_until", p, {"until": [], "max_gen_toks": 8}) for p in prompts]
    assert lm.generate_until(no_stop) == [full[p].decode("utf-8", "replace") for p in prompts]


def test_batching_does_not_change_results(lm):
    one = HarnessLM(loaded=lm.loaded, batch_size=1, max_length=MAX_LENGTH)
    pairs = [_request("loglikelihood", *pair) for pair in PAIRS]
    np.testing.assert_allclose(lm.loglikelihood(pairs), one.loglikelihood(pairs), atol=1e-5)
    docs = [_request("loglikelihood_rolling", "a" * n + " tail text") for n in (3, 40)]
    rolled = [lm.loglikelihood_rolling(docs), one.loglikelihood_rolling(docs)]
    np.testing.assert_allclose(*rolled, atol=1e-5)
    gen = [_request("generate_until", p, {"until": ["."], "max_gen_toks": 6}) for p in PAIRS[0]]
    gen += [_request("generate_until", "ktdpsu.kg", {"until": ["#"], "max_gen_toks": 5})]
    assert lm.generate_until(gen) == one.generate_until(gen)


def test_fixture_tasks_through_lm_eval_evaluator(lm):
    names = ["mta_tiny_choice", "mta_tiny_gen", "mta_tiny_rolling"]
    results = simple_evaluate(model=lm, tasks=names, task_manager=task_manager(names, [TASKS]))
    assert set(results["results"]) == set(names)
    docs = [json.loads(line) for line in (TASKS / "choice.jsonl").read_text().splitlines()]
    correct = []
    for sample in results["samples"]["mta_tiny_choice"]:
        doc = docs[sample["doc_id"]]
        want = [_expected_loglikelihood(lm, doc["question"], c)[0] for c in doc["choices"]]
        got = [resp[0][0] for resp in sample["resps"]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        correct.append(float(np.argmax(want) == doc["answer"]))
    assert results["results"]["mta_tiny_choice"]["acc,none"] == pytest.approx(np.mean(correct))
    for sample in results["samples"]["mta_tiny_gen"]:
        text = _greedy_bytes(lm, sample["doc"]["prompt"], 6)
        cuts = [text.find(s) for s in (b".", b"#") if s in text]
        want = text[: min(cuts, default=None)].decode("utf-8", "replace")
        assert sample["resps"][0][0] == want
    assert len(results["samples"]["mta_tiny_rolling"]) == 3


def test_checkpoint_tokenizer_is_used(tiny_overrides, tokenizer_files, tmp_path):
    """A run trained with a SentencePiece tokenizer (the data test_tokenizer_cli.py builds):
    requests are tokenized with it (context and continuation split as lm-eval does: the
    continuation is what the whole adds)."""
    kind, path = tokenizer_files["unigram"]
    workdir = tmp_path / "sp_run"
    # test_tokenizer_cli.py's run: in one session its dataset and compiled steps are reused
    argv = ["--config", "configs/toy/block_baseline_cpu.yaml", "--workdir", str(workdir)]
    tokenizer = [f"data.tokenizer.kind={kind}", f"data.tokenizer.path={path}"]
    overrides = [*tiny_overrides, *tokenizer, "model.vocab_size=400", "data.seq_len=48"]
    assert train_cli.main([*argv, *overrides, "train.steps=2", "eval.every=2"]) == 0
    lm = HarnessLM(workdir=str(workdir), batch_size=2, max_length=MAX_LENGTH)
    assert lm.tok.kind == "sentencepiece" and lm.tok.path == path
    pairs = [("the cat sat on", " the mat"), ("", "hello world"), ("once upon", " a time")]
    got = lm.loglikelihood([_request("loglikelihood", *pair) for pair in pairs])
    for pair, (logprob, greedy) in zip(pairs, got, strict=True):
        want, want_greedy = _expected_loglikelihood(lm, *pair)
        np.testing.assert_allclose(logprob, want, rtol=1e-5, atol=1e-4, err_msg=str(pair))
        assert greedy == want_greedy
    (text,) = lm.generate_until([_request("generate_until", "the cat", {"max_gen_toks": 4})])
    assert text == _greedy_bytes(lm, "the cat", 4).decode("utf-8", "replace")


def _cli(argv, capsys) -> tuple[int, list[str], str]:
    code = eval_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def test_eval_cli_writes_harness_results(run, capsys):
    argv = ["--workdir", str(run), "--harness", "mta_tiny_choice,mta_tiny_gen"]
    argv += ["--harness-include", str(TASKS), "--harness-max-length", str(MAX_LENGTH)]
    code, err, out = _cli([*argv, "--harness-limit", "3"], capsys)
    assert code == 0, err[-3:]
    summary = json.loads(out)[str(run)]
    assert set(summary) == {
        "harness/mta_tiny_choice/acc", "harness/mta_tiny_choice/acc_norm",
        "harness/mta_tiny_gen/exact_match",
    }  # fmt: skip
    out_dir = run / "eval" / "2" / "harness"
    results = json.loads((out_dir / "results.json").read_text())
    assert results["step"] == 2 and results["max_length"] == MAX_LENGTH
    assert results["n-samples"]["mta_tiny_choice"]["effective"] == 3
    lines = (out_dir / "samples" / "mta_tiny_gen.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "resps" in json.loads(lines[0])
    assert "mta_tiny_choice" in (out_dir / "results.md").read_text()
    assert not list(out_dir.rglob(".*.tmp"))


def test_eval_cli_user_errors(run, tmp_path, capsys):
    include = ["--harness-include", str(TASKS)]
    cases = [
        (["--workdir", str(tmp_path / "none"), "--harness", "mta_tiny_gen"], "workdir not found"),
        (["--workdir", str(run), "--harness", "nonexistent_task", *include], "unknown lm-eval"),
        (["--workdir", str(run)], "--suite SUITE_YAML and/or --harness"),
        (["--workdir", str(run), "--harness", " , "], "at least one task"),
        (["--workdir", str(run), "--harness", "x", "--harness-include", str(tmp_path / "no")],
         "no such directory"),
        (["--workdir", str(run), "--harness", "x", "--harness-batch-size", "0"], "must be >= 1"),
    ]  # fmt: skip
    for argv, message in cases:
        try:
            code, err, _ = _cli(argv, capsys)
        except SystemExit as exit_:  # argparse's errors
            code, err = exit_.code, capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (argv, err)
    # found while running: the task's max_gen_toks (6) leaves no room in --harness-max-length 6
    argv = ["--workdir", str(run), "--harness", "mta_tiny_gen", *include]
    code, err, _ = _cli([*argv, "--harness-max-length", "6"], capsys)
    assert code == 2 and err[-1].startswith("error: max_gen_toks 6 leaves no room"), err[-3:]


def test_model_args(run):
    """model_args win over lm-eval's --batch_size; unknown or bad ones are one line."""
    lm = HarnessLM.create_from_arg_string(f"workdir={run},batch_size=2,step=2", {"batch_size": 1})
    assert lm.batch_size == 2 and lm.loaded.step == 2 and lm.max_length == 2048  # data.seq_len
    cases = {
        "workdir=x,stpe=3": "unknown model argument stpe; allowed: workdir, step,",
        "step=2": "model_args needs workdir=WORKDIR",
        f"workdir={run},batch_size=auto": "batch_size must be a positive integer, got 'auto'",
        f"workdir={run},rope_theta=-1": "rope_theta must be a number > 0",
        f"workdir={run},step=7": "no checkpoint at step 7",
    }
    for arg_string, message in cases.items():
        with pytest.raises(ValueError, match=message):
            HarnessLM.create_from_arg_string(arg_string, {"batch_size": 1, "device": None})


def test_python_m_mta_harness_runs_lm_eval_cli(run, tmp_path):
    args = f"workdir={run},batch_size=2,max_length={MAX_LENGTH}"
    command = [sys.executable, "-m", "mta.harness", "--model", "mta", "--model_args", args]
    command += ["--tasks", "mta_tiny_choice", "--include_path", str(TASKS), "--limit", "2"]
    done = subprocess.run(
        [*command, "--output_path", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mta_tiny_choice" in done.stdout and list((tmp_path / "out").rglob("results_*.json"))


def test_python_m_mta_harness_user_error(monkeypatch, tmp_path, capsys):
    from mta.harness.__main__ import main

    argv = ["--model", "mta", "--model_args", f"workdir={tmp_path / 'none'}", "--tasks"]
    argv += ["mta_tiny_gen", "--include_path", str(TASKS)]
    monkeypatch.setattr(sys, "argv", ["mta.harness", *argv])
    assert main() == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: workdir not found: {tmp_path / 'none'}"
