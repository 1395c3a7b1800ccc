"""Multi-needle needle-in-a-haystack (pure numpy), as in RULER and the MTA paper's evaluation.

`num_needles` needles "The special magic number for {key} is: {value}." (keys like
"brave-falcon", values 7 digits, all distinct) are hidden in a haystack; `num_asked` of them, in
random order, are asked for by a completion prompt at the end:

    {haystack with needles}
    What are the special magic numbers for {k1} and {k2}? The special magic numbers for {k1}
    and {k2} are: {v1} and {v2}

(the question is one line; for one key "What is the special magic number for {k}? The special
magic number for {k} is: ", for three or more "{k1}, {k2} and {k3}"). The answer is the values
in the order asked, joined the same way.

Depth: each example draws a depth d from `depths` (percent); needle j of N goes to the sentence
boundary at or before d + j * (100 - d) / N percent of the filler (as in Kamradt's multi-needle
test: the first at d, the rest spread evenly over the remainder). Haystacks:

- "noise": RULER's noise paragraph repeated ("The grass is green. The sky is blue. ...").
- "distractors": the noise plus `num_distractors` more needles with other keys, never asked, at
  random sentence boundaries.
- "text": consecutive sentences of the Python language reference shipped with Python, starting
  at a random one (see `text_corpus.prose_sentences`).

len(prompt) + len(answer) == length exactly (bytes, all ASCII): the filler is cut to fit.
"""

import numpy as np

from mta.data import text_corpus
from mta.data.checks import check_choice, check_int

HAYSTACKS = ("noise", "distractors", "text")
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)
VALUE_DIGITS = 7

ADJECTIVES = (
    "ancient amber brave bright calm clever crimson curious eager early faint fancy gentle "
    "golden grumpy hidden humble icy jolly lively lonely lucky mellow misty noble odd proud quiet "
    "rapid rustic silent silver smooth sturdy swift tidy vivid wild"
).split()
NOUNS = (
    "anchor badger beacon canyon castle cedar comet falcon garden glacier harbor island jackal "
    "kettle lantern meadow mirror monkey orchard otter pebble pilot quarry raven river saddle "
    "spider summit teapot thistle tiger tunnel valley violin walrus willow"
).split()
KEYS = tuple(f"{adjective}-{noun}" for adjective in ADJECTIVES for noun in NOUNS)


def needle(key: str, value: str) -> str:
    """The needle sentence for key and value."""
    return f"The special magic number for {key} is: {value}."


def join_and(words: list[str]) -> str:
    """["a"] -> "a", ["a", "b"] -> "a and b", ["a", "b", "c"] -> "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def question(keys: list[str]) -> str:
    """The completion prompt asking for the values of `keys` (ends with ": ")."""
    if len(keys) == 1:
        return (
            f"What is the special magic number for {keys[0]}? "
            f"The special magic number for {keys[0]} is: "
        )
    asked = join_and(keys)
    return (
        f"What are the special magic numbers for {asked}? "
        f"The special magic numbers for {asked} are: "
    )


def min_length(num_needles: int, num_asked: int, num_distractors: int = 0) -> int:
    """The longest len(prompt) + len(answer) without filler over all keys: the least length."""
    key = max(KEYS, key=len)
    value = "9" * VALUE_DIGITS
    needles = (num_needles + num_distractors) * (len(needle(key, value)) + 1)
    return needles + len("\n" + question([key] * num_asked)) + len(join_and([value] * num_asked))


def check_niah(
    num_needles: int,
    num_asked: int,
    length: int,
    depths: tuple[int, ...],
    haystack: str,
    num_distractors: int,
) -> None:
    """ValueError with a clear message unless the parameters make a valid task."""
    check_int("num_needles", num_needles, 1)
    check_int("num_asked", num_asked, 1, num_needles)
    check_int("num_distractors", num_distractors, 0)
    check_choice("haystack", haystack, HAYSTACKS)
    if haystack == "distractors" and num_distractors < 1:
        raise ValueError("haystack='distractors' needs num_distractors >= 1")
    if haystack != "distractors" and num_distractors:
        raise ValueError(
            f"num_distractors must be 0 unless haystack='distractors', got {haystack!r}"
        )
    if num_needles + num_distractors > len(KEYS):
        raise ValueError(
            f"num_needles + num_distractors must be <= {len(KEYS)} (the number of distinct keys), "
            f"got {num_needles + num_distractors}"
        )
    if not isinstance(depths, tuple) or not depths:
        raise ValueError(f"depths must be a non-empty tuple of percents, got {depths!r}")
    for depth in depths:
        check_int("each depth", depth, 0, 100)
    check_int("length", length, 1)
    least = min_length(num_needles, num_asked, num_distractors)
    if length < least:
        raise ValueError(
            f"length={length} is too short for {num_needles} needles, {num_asked} asked and "
            f"{num_distractors} distractors: it must be >= {least}"
        )


def _distinct_values(rng: np.random.Generator, count: int) -> list[str]:
    values: list[int] = []
    while len(values) < count:
        values = list(dict.fromkeys(values + list(rng.integers(10**6, 10**7, count))))[:count]
    return [str(value) for value in values]


def _gap_at(offsets: list[int], position: float) -> int:
    """The last gap whose offset is <= position."""
    return int(np.searchsorted(offsets, position, side="right")) - 1


def generate_example(
    rng: np.random.Generator,
    num_needles: int,
    num_asked: int,
    length: int,
    depths: tuple[int, ...] = DEFAULT_DEPTHS,
    haystack: str = "noise",
    num_distractors: int = 0,
) -> dict:
    """Draws one example (see the module doc).

    Returns a dict: `prompt`, `answer` (str), `depth` (int, the drawn percent), `needle_keys`,
    `needle_values` (lists of num_needles str, in haystack order), `needle_depths` (float32
    [num_needles], where each needle starts, in percent of the haystack), `asked` (int32
    [num_asked], indices of the asked needles in asking order).
    """
    check_niah(num_needles, num_asked, length, depths, haystack, num_distractors)
    total = num_needles + num_distractors
    keys = [KEYS[i] for i in rng.choice(len(KEYS), total, replace=False)]
    values = _distinct_values(rng, total)
    needles = [needle(key, value) for key, value in zip(keys, values, strict=True)]
    asked = rng.permutation(num_needles)[:num_asked]
    depth = depths[int(rng.integers(len(depths)))]
    question_text = "\n" + question([keys[i] for i in asked])
    answer = join_and([values[i] for i in asked])

    budget = length - len(question_text) - len(answer) - sum(len(n) + 1 for n in needles)
    filler = text_corpus.haystack_filler(rng, haystack, budget)
    offsets = text_corpus.gap_offsets(filler)
    targets = [depth + j * (100 - depth) / num_needles for j in range(num_needles)]
    gaps = [_gap_at(offsets, target / 100 * budget) for target in targets]
    gaps += list(rng.integers(0, len(filler) + 1, num_distractors))
    order = sorted(range(total), key=lambda i: (gaps[i], i))
    text = text_corpus.weave(filler, [needles[i] for i in order], [gaps[i] for i in order])
    starts = [text.index(needles[i]) for i in range(num_needles)]
    return {
        "prompt": text + question_text,
        "answer": answer,
        "depth": depth,
        "needle_keys": keys[:num_needles],
        "needle_values": values[:num_needles],
        "needle_depths": np.array(starts, np.float32) / max(len(text), 1) * 100,
        "asked": asked.astype(np.int32),
    }
