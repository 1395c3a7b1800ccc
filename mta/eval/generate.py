"""Text generation with cached decoding: one prompt pass fills per-layer caches, then one jitted
step per new token (O(S) per token and layer, MTA included; see mta/attention/decode.py).

    completions = generate(model, ["abc.", "hello"], max_new_tokens=32, stop=["."])
    gen = Generator(model, tok)         # reuse: compiles once per shape, not once per call
    gen(prompts, temperature=0.8, top_k=20, seed=1)

Prompts of different lengths share a batch right-padded: each row reads only its own positions,
so a row's tokens equal its prompt run alone (greedy; with sampling each batch draws its own
random numbers). `use_cache=False` recomputes the full forward over the whole sequence for every
token instead (the reference release's decoding), for benchmarks and cross-checks.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mta.attention import decode as cached
from mta.data.tokenizers import BYTE, Tokenizer

TOKENIZER_EOS = "tokenizer"  # eos_id's default: the tokenizer's eos_id


@dataclass(frozen=True, eq=False)
class Completion:
    """One row's result. tokens: the generated ids [N] (N <= max_new_tokens), up to and
    including the one that completed a stop string or the eos; text: their decoded text
    (special tokens dropped, bad utf-8 replaced) cut before the first stop string;
    finish_reason: "stop" | "eos" | "length"."""

    tokens: np.ndarray
    text: str
    finish_reason: str


def sample_tokens(logits_BV, key, temperature: float = 0.0, top_k: int = 0) -> jax.Array:
    """Next tokens [B] int32 from logits [B, V]: argmax when temperature == 0, else a draw from
    softmax(logits / temperature) restricted to the top_k largest logits (top_k 0: all)."""
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def _prefill(graphdef, state, tokens_BT, lengths_B, max_len: int):
    """-> (logits at each row's last prompt position [B, V], caches)."""
    logits_BTV, caches = nnx.merge(graphdef, state).prefill(tokens_BT, lengths_B, max_len)
    return _at(logits_BTV, lengths_B - 1), caches


def _decode(graphdef, state, tokens_B1, caches):
    """-> (logits of the new token [B, V], one CacheUpdate per layer); caches are only read."""
    logits_B1V, updates = nnx.merge(graphdef, state).decode(tokens_B1, caches)
    return logits_B1V[:, 0], updates


def _commit(caches, updates):
    """Each layer's cache one token longer (jitted apart with caches donated: in place)."""
    return tuple(map(cached.commit, caches, updates))


def _recompute(graphdef, state, tokens_BS, lengths_B):
    """The full forward over the whole buffer, keeping logits at lengths - 1: [B, V]."""
    return _at(nnx.merge(graphdef, state)(tokens_BS), lengths_B - 1)


def _at(x_BTV, index_B):
    return jnp.take_along_axis(x_BTV, index_B[:, None, None], axis=1)[:, 0]


class Generator:
    """Jitted prompt pass, decode step and sampler for one model (its parameters as of
    construction). Call it like `generate` without the model."""

    def __init__(self, model: nnx.Module, tok: Tokenizer = BYTE):
        self.tok = tok  # encodes text prompts and stop strings, decodes the outputs
        graphdef, self.state = nnx.split(model)
        self._prefill = jax.jit(functools.partial(_prefill, graphdef), static_argnames="max_len")
        self._decode = jax.jit(functools.partial(_decode, graphdef))
        self._commit = jax.jit(_commit, donate_argnums=0)
        self._recompute = jax.jit(functools.partial(_recompute, graphdef))
        self._sample = jax.jit(sample_tokens, static_argnames=("temperature", "top_k"))

    def __call__(
        self,
        prompts: Sequence[str | bytes | np.ndarray],
        max_new_tokens: int = 64,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Sequence[str | bytes] = (),
        eos_id: int | None | str = TOKENIZER_EOS,
        max_len: int | None = None,
        use_cache: bool = True,
        bos: bool = True,
        live: int | None = None,
    ) -> list[Completion]:
        """Generates up to max_new_tokens per prompt; see `generate`."""
        prompt_rows = [_tokens(self.tok, p, bos) for p in prompts]
        lengths_B = np.array([len(p) for p in prompt_rows], np.int32)
        if not prompt_rows or lengths_B.min() == 0 or max_new_tokens < 1:
            raise ValueError("need at least one non-empty prompt and max_new_tokens >= 1")
        max_len = max_len or int(lengths_B.max()) + max_new_tokens
        if max_len < lengths_B.max() + max_new_tokens:
            raise ValueError(f"max_len {max_len} < longest prompt + max_new_tokens")
        buffer_BS = np.full((len(prompt_rows), max_len), self.tok.pad_id, np.int32)
        for b, prompt in enumerate(prompt_rows):
            buffer_BS[b, : len(prompt)] = prompt
        stops = [s.encode() if isinstance(s, str) else bytes(s) for s in stop]
        if not all(stops):
            raise ValueError("stop strings must be non-empty")
        eos_id = self.tok.eos_id if eos_id == TOKENIZER_EOS else eos_id
        rows = [_Row(self.tok, stops, eos_id) for _ in prompt_rows]
        key = jax.random.key(seed)

        if use_cache:
            prompt_BT = buffer_BS[:, : lengths_B.max()]
            logits_BV, caches = self._prefill(self.state, prompt_BT, lengths_B, max_len=max_len)
        else:
            logits_BV = self._recompute(self.state, buffer_BS, lengths_B)
        for step in range(max_new_tokens):
            key_step = jax.random.fold_in(key, step)
            next_B = np.asarray(self._sample(logits_BV, key_step, float(temperature), top_k))
            for row, token in zip(rows, next_B, strict=True):
                row.add(int(token))
            if all(row.done for row in rows[:live]) or step == max_new_tokens - 1:
                break
            if use_cache:
                logits_BV, updates = self._decode(self.state, next_B[:, None], caches)
                caches = self._commit(caches, updates)
            else:
                buffer_BS[np.arange(len(rows)), lengths_B + step] = next_B
                logits_BV = self._recompute(self.state, buffer_BS, lengths_B + step + 1)
        return [row.completion() for row in rows]


def generate(
    model: nnx.Module, prompts, max_new_tokens: int = 64, tok: Tokenizer = BYTE, **kwargs
) -> list[Completion]:
    """Generates continuations of prompts with model (a Transformer).

    prompts: strings/bytes (tokenized with `tok`, default bytes, with BOS when bos=True) or
    token id arrays [T_b]. temperature 0 is greedy; else sampling with temperature and top_k
    (0: all tokens), seeded by seed. A row stops at the first of: a stop string (str/bytes,
    matched on the utf-8 of the decoded text; the byte tokenizer: on the raw bytes), the eos_id
    token (default the tokenizer's; None disables), max_new_tokens. max_len (default longest prompt
    + max_new_tokens) is the cache size. use_cache=False recomputes the full forward per token.
    live: only the first `live` rows decide when generation ends (the rest only fix the batch's
    shape; their completions are cut wherever the live rows end); default all.
    Returns one Completion per prompt. Build a Generator once to avoid recompiling per call.
    """
    return Generator(model, tok)(prompts, max_new_tokens, **kwargs)


def _tokens(tok: Tokenizer, prompt, bos: bool) -> np.ndarray:
    if isinstance(prompt, str | bytes):
        return tok.encode_with(prompt, bos=bos)
    return np.asarray(prompt, np.int32).reshape(-1)


class _Row:
    """The generated tokens of one row and whether (and why) it has finished."""

    def __init__(self, tok: Tokenizer, stops: list[bytes], eos_id: int | None):
        self.tok, self.stops, self.eos_id = tok, stops, eos_id
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.cut: int | None = None  # bytes kept when a stop string ended the row

    @property
    def done(self) -> bool:
        return self.reason is not None

    def add(self, token: int) -> None:
        if self.done:
            return
        self.tokens.append(token)
        if token == self.eos_id:
            self.reason = "eos"
            return
        data = self.tok.decode_bytes(self.tokens)
        found = [i for i in (data.find(s) for s in self.stops) if i >= 0]
        if found:
            self.reason, self.cut = "stop", min(found)

    def completion(self) -> Completion:
        data = self.tok.decode_bytes(self.tokens)[: self.cut]
        text = data.decode("utf-8", errors="replace")
        return Completion(np.array(self.tokens, np.int32), text, self.reason or "length")
