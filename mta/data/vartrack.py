"""Variable tracking (pure numpy), after RULER's `variable_tracking` task.

`num_chains` chains of assignments are hidden, one statement per sentence gap, in a haystack:

    VAR QPZKA = 52716.  VAR HRTMB = VAR QPZKA.  VAR LXOWE = VAR HRTMB.  ...

A chain is a first statement giving a 5-digit value (distinct between chains) and `num_hops`
statements each copying the previous variable, so it names num_hops + 1 variables (5 capital
letters, all distinct). The statements of all chains are merged in a random order that keeps
each chain's own order, and placed at random sentence boundaries of the haystack, in that
order. The prompt (RULER's wording) asks for the variables holding one chain's value:

    Memorize and track the chain(s) of variable assignment hidden in the following text.

    {haystack}
    Question: Find all variables that are assigned the value 52716 in the text above. Answer:
    According to the chain(s) of variable assignment in the text above, 5 variables are assigned
    the value 52716, they are: QPZKA HRTMB LXOWE ...

(the question is one line). The answer is that chain's names in order of assignment, joined by
spaces. Haystacks: "noise" (RULER's noise paragraph repeated) or "text" (Python's documentation,
see `text_corpus.prose_sentences`). len(prompt) + len(answer) == length exactly (bytes).
"""

import numpy as np

from mta.data import text_corpus
from mta.data.checks import check_choice, check_int

HAYSTACKS = ("noise", "text")
NAME_LETTERS = 5
VALUE_DIGITS = 5
INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
_UPPER = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)


def question(value: str, count: int) -> str:
    """The question line (after a newline) for `count` variables holding `value`."""
    return (
        f"\nQuestion: Find all variables that are assigned the value {value} in the text above. "
        f"Answer: According to the chain(s) of variable assignment in the text above, {count} "
        f"variables are assigned the value {value}, they are: "
    )


def min_length(num_chains: int, num_hops: int) -> int:
    """len(prompt) + len(answer) without filler: the least length."""
    copy = len(f"VAR {'A' * NAME_LETTERS} = VAR {'A' * NAME_LETTERS}.") + 1
    first = len(f"VAR {'A' * NAME_LETTERS} = {'1' * VALUE_DIGITS}.") + 1
    statements = num_chains * (first + num_hops * copy)
    answer = (num_hops + 1) * (NAME_LETTERS + 1) - 1
    return len(INTRO) + statements + len(question("1" * VALUE_DIGITS, num_hops + 1)) + answer


def check_vartrack(num_chains: int, num_hops: int, length: int, haystack: str) -> None:
    """ValueError with a clear message unless the parameters make a valid task."""
    check_int("num_chains", num_chains, 1, 1000)
    check_int("num_hops", num_hops, 1, 1000)
    check_int("length", length, 1)
    check_choice("haystack", haystack, HAYSTACKS)
    least = min_length(num_chains, num_hops)
    if length < least:
        raise ValueError(
            f"length={length} is too short for {num_chains} chains of {num_hops} hops: "
            f"it must be >= {least}"
        )


def _distinct(rng: np.random.Generator, count: int, draw) -> list[str]:
    found: dict[str, None] = {}
    while len(found) < count:
        found.update(dict.fromkeys(draw(count - len(found))))
    return list(found)


def generate_example(
    rng: np.random.Generator, num_chains: int, num_hops: int, length: int, haystack: str = "noise"
) -> tuple[str, str]:
    """Draws one example (see the module doc); returns (prompt, answer), ASCII strings."""
    check_vartrack(num_chains, num_hops, length, haystack)
    per_chain = num_hops + 1
    names = _distinct(
        rng,
        num_chains * per_chain,
        lambda n: [w.tobytes().decode() for w in _UPPER[rng.integers(0, 26, (n, NAME_LETTERS))]],
    )
    values = _distinct(rng, num_chains, lambda n: [str(v) for v in rng.integers(10**4, 10**5, n)])
    chains = [names[c * per_chain : (c + 1) * per_chain] for c in range(num_chains)]
    # A random interleaving keeping each chain's order: shuffle the multiset of chain labels.
    statements, hops = [], [0] * num_chains
    for chain in rng.permutation(np.repeat(np.arange(num_chains), per_chain)):
        hop = hops[chain]
        hops[chain] += 1
        source = values[chain] if hop == 0 else f"VAR {chains[chain][hop - 1]}"
        statements.append(f"VAR {chains[chain][hop]} = {source}.")
    query = int(rng.integers(num_chains))
    answer = " ".join(chains[query])
    question_text = question(values[query], per_chain)

    budget = length - len(INTRO) - len(question_text) - len(answer)
    budget -= sum(len(statement) + 1 for statement in statements)
    filler = text_corpus.haystack_filler(rng, haystack, budget)
    gaps = np.sort(rng.integers(0, len(filler) + 1, len(statements)))
    text = text_corpus.weave(filler, statements, gaps.tolist())
    return INTRO + text + question_text, answer
