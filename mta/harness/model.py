"""The lm-eval model `mta`: a workdir's checkpoint answering lm-eval's three request types.

    lm = HarnessLM(workdir="runs/x", step=None, batch_size=8)      # the newest checkpoint
    lm.loglikelihood([Instance(..., arguments=("ctx", " cont"))])   # [(logprob, is_greedy)]
    lm.loglikelihood_rolling([...("document",)])                    # [logprob]
    lm.generate_until([...("ctx", {"until": ["\\n"], "max_gen_toks": 32})])   # [text]

Text is tokenized with the checkpoint's own tokenizer (the one its config and tokenizer.json
record), with BOS first as in training. Scoring is teacher-forced through mta.eval.runner.Runner:
rows sorted by length, batch_size rows per call, right-padded to a shape bucket, so jit compiles
once per bucket rather than once per request. Inputs keep their last max_length tokens (default:
the run's data.seq_len); documents longer than that are scored in lm-eval's rolling windows,
every token once with as much context as fits. Generation is greedy (or sampled when a task asks
for do_sample/temperature) with the cached decoding of mta.eval.generate, stopping at the task's
`until` strings (matched on the text), the tokenizer's EOS or max_gen_toks; prompts keep their
last max_length - max_gen_toks tokens.
"""

import inspect
import json
import logging

import numpy as np
from flax import nnx
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from mta.eval.generate import Generator
from mta.eval.runner import Runner, bucket
from mta.harness.errors import ModelArgError

log = logging.getLogger(__name__)
GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k"}  # the rest: ignored


def _positive_int(name: str, value, minimum: int = 1) -> int:
    """int(value) if it is an integer >= minimum (model_args arrive as str or int)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = minimum - 1
    if number < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ModelArgError(f"{name} must be {kind}, got {value!r}")
    return number


def _positive_float(name: str, value) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise ModelArgError(f"{name} must be a number > 0, got {value!r}")
    return number


class HarnessLM(TemplateLM):
    """lm-eval's LM over one checkpoint. Model args (`--model_args k=v,...`): workdir (required),
    step (default: newest), batch_size (rows per jitted call, default 8), max_length (default
    data.seq_len), max_gen_toks (default 256, when a task sets none), rope_theta (override),
    tokenizer (the tokenizer file if it moved), seed (sampling). `loaded` (Python only): a
    mta.eval.restore.LoadedModel-like object (graphdef, params, mesh, tok, cfg) to use instead."""

    def __init__(
        self,
        workdir=None,
        step=None,
        batch_size=8,
        max_length=None,
        max_gen_toks=256,
        rope_theta=None,
        tokenizer=None,
        seed=1234,
        loaded=None,
        max_batch_size=None,  # lm-eval's, for batch_size=auto (not supported): unused
        device=None,  # lm-eval's: JAX places the model itself
    ):
        super().__init__()
        from mta.eval import restore

        if loaded is None:
            if not workdir:
                raise ModelArgError("model_args needs workdir=WORKDIR (a training workdir)")
            step = None if step in (None, "") else _positive_int("step", step, minimum=0)
            theta = None if rope_theta in (None, "") else _positive_float("rope_theta", rope_theta)
            found = restore.find_step(workdir, step)
            loaded = restore.load_model(workdir, found, theta, tokenizer or None)
        self.loaded, self.tok = loaded, loaded.tok
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_length = _positive_int("max_length", max_length or loaded.cfg.data.seq_len)
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.seed = _positive_int("seed", seed, minimum=0)
        self.runner = Runner(loaded.graphdef, loaded.params, loaded.mesh, self.batch_size, self.tok)
        self._generator = Generator(nnx.merge(loaded.graphdef, loaded.params), self.tok)
        self._warned: set[str] = set()

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        """Like lm-eval's, except that model_args win over the command line's defaults (its
        --batch_size is always set, so batch_size=B in model_args would otherwise clash)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        """The model of `arg_dict` (model_args) over `additional_config` (lm-eval's batch_size,
        max_batch_size, device); ModelArgError naming an unknown argument."""
        allowed = [name for name in inspect.signature(cls).parameters if name != "loaded"]
        unknown = sorted(set(arg_dict) - set(allowed))
        if unknown:
            raise ModelArgError(
                f"unknown model argument {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    # ---- what TemplateLM needs -----------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id  # an empty context is BOS alone, as training rows begin

    @property
    def tokenizer_name(self) -> str:
        return f"{self.tok.kind}-{self.tok.fingerprint}"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        """Token ids of string, BOS first unless add_special_tokens is False."""
        bos = add_special_tokens is not False
        return self.tok.encode_with(string, bos=bos).tolist()

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    # ---- scoring ---------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, cache: bool = True):
        """requests: [((context, continuation), context ids, continuation ids)] -> [(sum of
        log p(continuation token) given everything before it, whether greedy decoding gives
        the continuation)], the inputs cut to their last max_length tokens."""
        results: list = [None] * len(requests)
        records, where = [], []
        for i, (_, context_enc, continuation_enc) in enumerate(requests):
            n = len(continuation_enc)
            if n == 0:
                results[i] = (0.0, True)
                continue
            if n > self.max_length:
                raise ModelArgError(
                    f"a continuation of {n} tokens is longer than max_length {self.max_length}"
                )
            whole = np.asarray([*context_enc, *continuation_enc], np.int32)[-self.max_length - 1 :]
            mask = np.zeros(len(whole), np.int32)
            mask[-n:] = 1
            records.append({"tokens": whole, "answer_mask": mask})
            where.append(i)
        order = sorted(range(len(records)), key=lambda j: -len(records[j]["tokens"]))
        scored = self.runner.score([records[j] for j in order])
        for j, one in zip(order, scored, strict=True):
            scored_here = one.weights > 0
            answer = (float(one.logprob[scored_here].sum(dtype=np.float64)),
                      bool(one.correct[scored_here].all()))  # fmt: skip
            results[where[j]] = answer
            if cache:
                self.cache_hook.add_partial("loglikelihood", requests[where[j]][0], answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(document) given BOS, over rolling windows of max_length tokens."""
        pieces, owner = [], []
        for i, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0], add_special_tokens=False)
            windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1)
            for context, continuation in map(make_disjoint_window, windows):
                pieces.append(((None, None), context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(
            owner, self._loglikelihood_tokens(pieces, cache=False), strict=True
        ):
            totals[i] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation ------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The continuation of each context, cut before the first of its `until` strings."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        texts: list = [None] * len(requests)
        for indices in groups.values():
            settings = self._settings(requests[indices[0]].args[1])
            prompts = {i: self._prompt(requests[i].args[0], settings["max_new"]) for i in indices}
            indices.sort(key=lambda i: -len(prompts[i]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                done = self._generate([prompts[i] for i in chunk], settings)
                for i, text in zip(chunk, done, strict=False):
                    texts[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return texts

    def _settings(self, gen_kwargs: dict) -> dict:
        """lm-eval's generation kwargs -> stop strings, max new tokens, temperature, top_k."""
        gen_kwargs = dict(gen_kwargs or {})
        ignored = sorted(set(gen_kwargs) - GEN_KEYS - self._warned)
        if ignored:
            log.warning("mta model ignores generation kwargs %s", ", ".join(ignored))
            self._warned.update(ignored)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        sample = gen_kwargs.get("do_sample")
        if sample is False:
            temperature = 0.0
        elif sample and temperature == 0.0:
            temperature = 1.0
        max_new = _positive_int("max_gen_toks", gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        if max_new >= self.max_length:
            raise ModelArgError(
                f"max_gen_toks {max_new} leaves no room for a prompt in max_length "
                f"{self.max_length} (set max_length=N in model_args)"
            )
        return {
            "stop": [s for s in until if s],
            "max_new": max_new,
            "temperature": temperature,
            "top_k": int(gen_kwargs.get("top_k", 0) or 0),
        }

    def _prompt(self, context: str, max_new: int) -> np.ndarray:
        """BOS + context ids, keeping the last max_length - max_new of them."""
        return self.tok.encode_with(context, bos=True)[-(self.max_length - max_new) :]

    def _generate(self, prompts: list[np.ndarray], settings: dict) -> list[str]:
        """One jitted batch: batch_size rows (the prompts, then copies of the first) plus a row
        as long as the prompts' bucket, and a cache of a bucketed size, so the shapes repeat."""
        max_new = settings["max_new"]
        fill = [prompts[0]] * (self.batch_size - len(prompts))
        dummy = np.full(bucket(max(len(p) for p in prompts)), self.tok.bos_id, np.int32)
        completions = self._generator(
            [*prompts, *fill, dummy],
            max_new,
            temperature=settings["temperature"],
            top_k=settings["top_k"],
            seed=self.seed,
            stop=settings["stop"],
            max_len=bucket(len(dummy) + max_new),
            live=len(prompts),
        )
        return [c.text for c in completions[: len(prompts)]]
