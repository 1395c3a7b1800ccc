# ruff: noqa: E741 (`l` is the name the paper gives the number of query letters)
"""The "find the block" toy task of the Multi-Token Attention paper (pure numpy).

A prompt is `B` blocks of `N` distinct letters joined by ".", then "#", then `L` distinct query
letters taken from one block (the target), e.g. `hjnvt.qfjgt.whftb#pb`. The target is the only
block containing all query letters and blocks are unique. The answer is the whole target block
("all"), its first letter ("first") or its last letter ("last").
"""

import math

import numpy as np

from mta.data.checks import check_choice, check_int
from mta.data.tokenizers import BYTE, Tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
VARIANTS = ("all", "first", "last")
DEFAULT_LENGTH = 319

_ALPHABET_BYTES = np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)
_DOT = ord(".")
_HASH = ord("#")
_LETTER_BITS = np.left_shift(1, np.arange(len(ALPHABET), dtype=np.int64))


def _check_task(n: int, l: int, variant: str) -> None:
    check_int("n", n, 1, len(ALPHABET))
    check_int("l", l, 1, n)
    check_choice("variant", variant, VARIANTS)


def _max_blocks(n: int, l: int) -> int:
    """The most blocks an example can hold: the target plus every possible distractor."""
    # Distractors are ordered N-letter blocks that miss at least one query letter.
    distractors = (math.comb(len(ALPHABET), n) - math.comb(len(ALPHABET) - l, n - l)) * (
        math.factorial(n)
    )
    return 1 + distractors


def check_num_blocks(n: int, l: int, num_blocks: int) -> None:
    """ValueError unless num_blocks >= 2 and that many unique blocks can satisfy the task."""
    check_int("num_blocks", num_blocks, 2)
    if num_blocks > _max_blocks(n, l):
        raise ValueError(
            f"num_blocks={num_blocks} is impossible for n={n}, l={l}: at most "
            f"{_max_blocks(n, l)} unique blocks can have only one containing all query letters"
        )


def answer_length(n: int, variant: str) -> int:
    """Number of characters in the answer: n for "all", 1 for "first" and "last"."""
    _check_task(n, 1, variant)
    return n if variant == "all" else 1


def example_length(n: int, l: int, variant: str, num_blocks: int) -> int:
    """len(prompt) + len(answer) for an example with `num_blocks` blocks (BOS not counted)."""
    _check_task(n, l, variant)
    check_int("num_blocks", num_blocks, 1)
    # num_blocks * n letters, num_blocks - 1 dots, "#", l query letters.
    return num_blocks * (n + 1) + l + answer_length(n, variant)


def blocks_for_length(n: int, l: int, variant: str, length: int = DEFAULT_LENGTH) -> int:
    """The largest number of blocks with len(prompt) + len(answer) <= length.

    Also capped at the number of unique blocks the task allows (26 for n=1). Raises ValueError if
    fewer than 2 blocks fit (or the arguments are invalid).
    """
    _check_task(n, l, variant)
    check_int("length", length, 1)
    if _max_blocks(n, l) < 2:
        raise ValueError(
            f"n={n}, l={l} leaves no possible distractor block (every block of "
            "n letters contains all query letters)"
        )
    # Capped at the number of unique blocks possible (only binds for tiny n).
    num_blocks = min((length - l - answer_length(n, variant)) // (n + 1), _max_blocks(n, l))
    if num_blocks < 2:
        raise ValueError(
            f"length={length} is too short: at least 2 blocks must fit, which needs length >= "
            f"{example_length(n, l, variant, 2)} for n={n}, l={l}, variant={variant!r}"
        )
    return num_blocks


def check_block_task(n: int, l: int, variant: str, length: int, num_blocks: int | None) -> None:
    """ValueError with a clear message unless the parameters make a valid task (num_blocks None:
    as many as fit in `length`)."""
    max_blocks = blocks_for_length(n, l, variant, length)
    if num_blocks is not None:
        check_num_blocks(n, l, num_blocks)
        if num_blocks > max_blocks:
            raise ValueError(
                f"num_blocks={num_blocks} does not fit in length={length}: at most "
                f"{max_blocks} blocks fit for n={n}, l={l}, variant={variant!r}"
            )


def _draw_blocks(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
    """uint8 [count, n] letter indices, each row n distinct letters in random order."""
    return np.argsort(rng.random((count, len(ALPHABET))), axis=1)[:, :n].astype(np.uint8)


def _rejected(blocks: np.ndarray, target: int, query_bits: int) -> np.ndarray:
    """Bool [num_blocks]: distractors containing every query letter, and repeated blocks."""
    rejected = (_LETTER_BITS[blocks].sum(axis=1) & query_bits) == query_bits
    rejected[target] = False
    # A copy of the target contains the query, so it is already rejected; among the rest, repeats
    # keep their first occurrence (np.unique's return_index is the first one).
    kept = np.flatnonzero(~rejected)
    keys = _ALPHABET_BYTES[blocks[kept]].view(f"S{blocks.shape[1]}").ravel()
    _, first = np.unique(keys, return_index=True)
    if len(first) < len(kept):
        repeat = np.ones(len(kept), dtype=bool)
        repeat[first] = False
        rejected[kept[repeat]] = True
    return rejected


def generate_example(
    rng: np.random.Generator, n: int, l: int, variant: str, num_blocks: int
) -> tuple[str, str]:
    """Draws one example; returns (prompt, answer) as ASCII strings.

    The prompt has length num_blocks * (n + 1) + l and the answer n ("all") or 1 character.
    """
    _check_task(n, l, variant)
    check_num_blocks(n, l, num_blocks)
    blocks = _draw_blocks(rng, num_blocks, n)
    target = int(rng.integers(num_blocks))
    query = blocks[target, rng.permutation(n)[:l]]
    query_bits = int(_LETTER_BITS[query].sum())
    while (rejected := _rejected(blocks, target, query_bits)).any():
        blocks[rejected] = _draw_blocks(rng, int(rejected.sum()), n)

    chars = np.full((num_blocks, n + 1), _DOT, dtype=np.uint8)
    chars[:, :n] = _ALPHABET_BYTES[blocks]
    chars[-1, -1] = _HASH
    prompt = (chars.tobytes() + _ALPHABET_BYTES[query].tobytes()).decode("ascii")
    target_block = _ALPHABET_BYTES[blocks[target]].tobytes().decode("ascii")
    if variant == "all":
        answer = target_block
    elif variant == "first":
        answer = target_block[0]
    else:
        answer = target_block[-1]
    return prompt, answer


def encode_example(prompt: str, answer: str, tok: Tokenizer = BYTE) -> dict[str, np.ndarray]:
    """Tokenizes an example with `tok`, prompt and answer each on its own.

    Returns `tokens`, int32 [1 + P + A] = [BOS] + prompt ids + answer ids (bytes: P =
    len(prompt), A = len(answer)), and `answer_mask`, int32 of the same shape, 1 exactly on the
    answer tokens.
    """
    tokens, answer_mask = tok.encode_marked([(prompt, False), (answer, True)])
    return {"tokens": tokens, "answer_mask": answer_mask}
