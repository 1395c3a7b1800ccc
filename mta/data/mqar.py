"""Multi-query associative recall (pure numpy), after Zoology (Arora et al. 2023), in bytes.

Zoology's sequence of tokens is `k1 v1 k2 v2 ... kN vN` followed by a query region of S
two-token slots; each key is queried once, in the slot at gap g (0-based, drawn without
replacement with probability proportional to (g + 1) ** (alpha - 1), so small gaps, i.e. queries
close to the pairs, are most likely), and the model must predict the key's value after it; every
other slot holds random noise. Here every token is a word, and words are joined by single spaces:

    ynk 419 cwa 028 ... qfz 733 | hzp rzt cwa 028 ulx bbl ynk 419 ...
    `num_pairs` "key value" pairs   the query region: S slots "key value" or "noise noise"

(the "|" is only for this picture). Keys are `key_len` lowercase letters, distinct in an example;
values `value_len` digits (drawn independently, repeats allowed); noise words are lowercase
letters (key_len, then value_len of them), never equal to one of the example's keys. Key i is
queried in slot gaps[i]. A pair or slot is key_len + value_len + 2 bytes with its trailing space;
S is the most slots that fit, so the prompt has (num_pairs + S) * (key_len + value_len + 2) - 1
bytes: at most `length`, and more than length - (key_len + value_len + 2).

Unlike the other tasks the answers are inside the prompt: tokens = [BOS] + prompt, and
answer_mask is 1 exactly on the value bytes of the query slots (num_pairs * value_len tokens).
`answer` is the queried values in order of appearance, joined by spaces.
"""

import numpy as np

from mta.data.checks import check_int
from mta.data.tokenizers import BYTE, Tokenizer

DEFAULT_ALPHA = 0.01
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
_DIGITS = np.frombuffer(b"0123456789", np.uint8)


def slot_bytes(key_len: int, value_len: int) -> int:
    """Bytes of one pair or slot with its trailing space."""
    return key_len + value_len + 2


def num_slots(num_pairs: int, key_len: int, value_len: int, length: int) -> int:
    """S: the number of query-region slots that fit in `length` bytes."""
    return (length + 1) // slot_bytes(key_len, value_len) - num_pairs


def check_mqar(num_pairs: int, key_len: int, value_len: int, length: int, alpha: float) -> None:
    """ValueError with a clear message unless the parameters make a valid task."""
    check_int("num_pairs", num_pairs, 1)
    check_int("key_len", key_len, 1, 8)
    check_int("value_len", value_len, 1, 16)
    check_int("length", length, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if num_pairs > 26**key_len // 2:
        raise ValueError(
            f"num_pairs={num_pairs} is too many for key_len={key_len}: at most "
            f"{26**key_len // 2} (half the {26**key_len} possible keys, the rest is for noise)"
        )
    least = 2 * num_pairs * slot_bytes(key_len, value_len) - 1
    if length < least:
        raise ValueError(
            f"length={length} is too short for {num_pairs} pairs of key_len={key_len}, "
            f"value_len={value_len}: the query region needs a slot per pair, so length >= {least}"
        )


def _words(rng: np.random.Generator, alphabet: np.ndarray, count: int, size: int) -> np.ndarray:
    """uint8 [count, size] random words over alphabet."""
    return alphabet[rng.integers(0, len(alphabet), (count, size))]


def _as_ints(words: np.ndarray) -> np.ndarray:
    """int64 [count]: the letter words in base 26 (for equality tests)."""
    return ((words.astype(np.int64) - ord("a")) * 26 ** np.arange(words.shape[1])[::-1]).sum(1)


def _noise(
    rng: np.random.Generator, count: int, size: int, key_len: int, key_ids: np.ndarray
) -> np.ndarray:
    """uint8 [count, size] random letter words, none equal to a key (key_ids in base 26)."""
    words = _words(rng, _LETTERS, count, size)
    while size == key_len and (clash := np.isin(_as_ints(words), key_ids)).any():
        words[clash] = _words(rng, _LETTERS, int(clash.sum()), size)
    return words


def generate_example(
    rng: np.random.Generator,
    num_pairs: int,
    key_len: int,
    value_len: int,
    length: int,
    alpha: float = DEFAULT_ALPHA,
    tok: Tokenizer = BYTE,
) -> dict:
    """Draws one example (see the module doc), tokenized with `tok` (the values each on their
    own, so that the answer mask covers exactly their ids).

    Returns a dict: `prompt`, `answer` (str), `tokens`, `answer_mask` (int32 [len(prompt) + 1]
    with bytes),
    `distances` (int32 [num_pairs]: for each query in order of appearance, bytes from its pair's
    key to the query's key).
    """
    check_mqar(num_pairs, key_len, value_len, length, alpha)
    slots = num_slots(num_pairs, key_len, value_len, length)
    size = slot_bytes(key_len, value_len)
    key_ids = rng.choice(26**key_len, num_pairs, replace=False)
    keys = _LETTERS[(key_ids[:, None] // 26 ** np.arange(key_len)[::-1]) % 26]
    values = _words(rng, _DIGITS, num_pairs, value_len)
    p = (np.arange(1, slots + 1, dtype=np.float64)) ** (alpha - 1)
    gaps = rng.choice(slots, num_pairs, replace=False, p=p / p.sum())

    # Rows of [key or noise word, " ", value or noise word, " "]; pairs first, then slots.
    rows = np.full((num_pairs + slots, size), ord(" "), np.uint8)
    rows[num_pairs:, :key_len] = _noise(rng, slots, key_len, key_len, key_ids)
    rows[num_pairs:, key_len + 1 : -1] = _noise(rng, slots, value_len, key_len, key_ids)
    for target in (np.arange(num_pairs), num_pairs + gaps):
        rows[target, :key_len] = keys
        rows[target, key_len + 1 : -1] = values
    prompt = rows.reshape(-1)[:-1].tobytes().decode("ascii")

    order = np.argsort(gaps)
    starts = (num_pairs + gaps[order]) * size + key_len + 1  # the queried values' offsets
    bounds = [0, *np.stack([starts, starts + value_len], 1).ravel().tolist(), len(prompt)]
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    pieces = [(prompt[a:b], i % 2 == 1) for i, (a, b) in enumerate(spans)]
    tokens, answer_mask = tok.encode_marked([p for p in pieces if p[0]])
    answer = " ".join(values[order].view(f"S{value_len}").ravel().astype(str))
    return {
        "prompt": prompt,
        "answer": answer,
        "tokens": tokens,
        "answer_mask": answer_mask,
        "distances": ((num_pairs + gaps[order] - order) * size).astype(np.int32),
    }
