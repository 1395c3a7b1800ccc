"""Tests for the bAbI world simulator (QA1-QA5) and its TFDS builder.

The answers are checked by replaying the fact sentences with an independent parser and state.
"""

import collections
import itertools
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mta.data import babi, tfds_babi, tfds_common, tokenizer
from mta.data.babi import generate_example
from mta.data.tfds_babi import babi_config, prepare_babi

MOVE = re.compile(r"(\w+) (?:moved|went|journeyed|travelled|went back) to the (\w+)\.")
TAKE = re.compile(r"(\w+) (?:picked up|got|grabbed|took) the (\w+)(?: there)?\.")
DROP = re.compile(r"(\w+) (?:dropped|discarded|put down|left) the (\w+)(?: there)?\.")
GIVE = re.compile(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.")
RELATION = re.compile(r"The (\w+) is (north|south|east|west) of the (\w+)\.")
STEP = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
PEOPLE = set(babi.ACTORS + babi.QA5_ACTORS)
WORLD_WORDS = {w.lower() for w in PEOPLE | set(babi.ROOMS) | set(babi.OBJECTS)} | set(STEP)


def replay(facts):
    """The state after the facts: rooms of people, objects' rooms and room trails, gives.

    Asserts that every event is possible: a person takes only an object that is not held and is
    in their (known) room or not seen yet, drops only what they hold, gives it only to someone
    in the same room.
    """
    room, holder, lying, trail, gives = {}, {}, {}, {}, []

    def where(obj):
        return room[holder[obj]] if obj in holder else lying.get(obj)

    for fact in facts:
        if m := MOVE.fullmatch(fact):
            person, place = m.groups()
            assert place in babi.ROOMS and place != room.get(person)
            room[person] = place
            for obj, who in holder.items():
                if who == person and trail[obj][-1] != place:
                    trail[obj].append(place)
        elif m := TAKE.fullmatch(fact):
            person, obj = m.groups()
            assert person in room and obj not in holder
            assert lying.get(obj, room[person]) == room[person]
            holder[obj] = person
            lying.pop(obj, None)
            trail.setdefault(obj, [room[person]])
        elif m := DROP.fullmatch(fact):
            person, obj = m.groups()
            assert holder.pop(obj) == person
            lying[obj] = room[person]
        elif m := GIVE.fullmatch(fact):
            giver, obj, receiver = m.groups()
            assert holder[obj] == giver and giver != receiver
            assert room.get(receiver) == room[giver]
            holder[obj] = receiver
            gives.append((giver, obj, receiver))
        else:
            raise AssertionError(f"not a fact: {fact!r}")
    return room, {obj: where(obj) for obj in babi.OBJECTS}, trail, gives


def true_answer(task, facts, question):
    """The answer to the question according to the replayed facts."""
    if task == 4:
        position = {}
        for fact in facts:
            x, direction, y = RELATION.fullmatch(fact).groups()
            step = STEP[direction]
            if y in position or not position:
                position.setdefault(y, (0, 0))
                position[x] = (position[y][0] + step[0], position[y][1] + step[1])
            else:
                position[y] = (position[x][0] - step[0], position[x][1] - step[1])
        assert len(set(position.values())) == 3
        by_position = {p: name for name, p in position.items()}
        if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
            step, y = STEP[m.group(1)], position[m.group(2)]
            return by_position[(y[0] + step[0], y[1] + step[1])]
        x, direction = re.fullmatch(r"What is the (\w+) (\w+) of\?", question).groups()
        step, p = STEP[direction], position[x]
        return by_position[(p[0] - step[0], p[1] - step[1])]

    room, object_room, trail, gives = replay(facts)
    if m := re.fullmatch(r"Where is (\w+)\?", question):
        return room[m.group(1)]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        return object_room[m.group(1)]
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        rooms = trail[m.group(1)]
        assert rooms.count(m.group(2)) == 1, "asked only about a room entered once"
        return rooms[rooms.index(m.group(2)) - 1]
    patterns = [
        (r"Who gave the (?P<o>\w+) to (?P<r>\w+)\?", 0),
        (r"Who did (?P<a>\w+) give the (?P<o>\w+) to\?", 2),
        (r"What did (?P<a>\w+) give to (?P<r>\w+)\?", 1),
        (r"Who received the (?P<o>\w+)\?", 2),
        (r"Who gave the (?P<o>\w+)\?", 0),
    ]
    for pattern, asked in patterns:
        if m := re.fullmatch(pattern, question):
            named = {"aor".index(k): v for k, v in m.groupdict().items()}
            matching = [g for g in gives if all(g[i] == v for i, v in named.items())]
            return matching[-1][asked]
    raise AssertionError(f"unknown question {question!r}")


def check_example(example, task, length):
    """Checks the prompt's format, its facts, and the answer against the replayed state."""
    prompt, answer, question, facts = (
        example[k] for k in ("prompt", "answer", "question", "facts")
    )
    end = f"\nQuestion: {question}\nAnswer: "
    assert prompt.endswith(end) and prompt.isascii()
    context = prompt[: -len(end)]
    low, high = babi.NUM_FACTS[task]
    assert low <= len(facts) <= high
    if length == 0:
        assert context == " ".join(facts)
    else:
        assert len(prompt) + len(answer) == length
    # The facts are in the context in order, and nothing else names a person, room or object.
    rest, position = [], 0
    for fact in facts:
        found = context.index(fact, position)
        rest.append(context[position:found])
        position = found + len(fact)
    rest.append(context[position:])
    assert not WORLD_WORDS & set(re.findall(r"[a-z]+", " ".join(rest).lower()))

    assert " " not in answer
    assert answer == true_answer(task, facts, question)
    assert answer in (PEOPLE | set(babi.OBJECTS) if task == 5 else babi.ROOMS)


@pytest.mark.parametrize("task", babi.TASKS)
@pytest.mark.parametrize("length", [0, 1024, 4096])
def test_answers_are_true(task, length):
    rng = np.random.default_rng(10 * task + length)
    for _ in range(150 if length == 0 else 20):
        check_example(generate_example(rng, task, length), task, length)


@pytest.mark.parametrize("task", babi.TASKS)
def test_longest_lengths(task):
    rng = np.random.default_rng(task)
    for length in (babi.max_story_bytes(task), 16384):
        for _ in range(5):
            check_example(generate_example(rng, task, length), task, length)


def test_questions_and_answers_vary():
    rng = np.random.default_rng(0)
    for task in babi.TASKS:
        examples = [generate_example(rng, task, 0) for _ in range(300)]
        answers = collections.Counter(example["answer"] for example in examples)
        shapes = {re.sub(r"[A-Z]\w+|the \w+ ", "_", e["question"]) for e in examples}
        assert len(answers) >= (4 if task == 5 else 5), (task, answers)
        assert max(answers.values()) < 0.4 * len(examples), (task, answers)
        expected_shapes = {1: 1, 2: 1, 3: 1, 4: 2, 5: 5}[task]
        assert len(shapes) >= expected_shapes, (task, shapes)


def test_replay_catches_a_wrong_answer():
    # The checker must be able to fail: change the answer of a real example.
    example = generate_example(np.random.default_rng(5), 2, 0)
    wrong = next(room for room in babi.ROOMS if room != example["answer"])
    with pytest.raises(AssertionError):
        check_example({**example, "answer": wrong}, 2, 0)


def test_determinism_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [generate_example(rng, 3, 2048)["prompt"] for _ in range(10)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"task": 0}, "task must be between 1 and 5"),
        ({"task": 6}, "task must be between 1 and 5"),
        ({"task": "qa1"}, "task must be an integer"),
        ({"length": -1}, "length must be >= 0"),
        (
            {"task": 3, "length": 500},
            r"length=500 is too short for qa3: it must be 0 \(no filler\)",
        ),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        babi_config(**kwargs)
    params = {"task": 1, "length": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_example(np.random.default_rng(0), **params)


def test_config_names():
    names = {babi_config(task, length).name for task in babi.TASKS for length in (0, 1024, 4096)}
    assert len(names) == 15 and "qa3_len4096" in names
    assert babi_config(2, 2048, seed=1).name == "qa2_len2048_seed1"
    assert babi_config(5, 16384) in tfds_babi.MtaBabi.BUILDER_CONFIGS
    assert tfds.builder_cls("mta_babi") is tfds_babi.MtaBabi
    assert babi.max_story_bytes(3) < 1000, "every task must fit in 1k"


def test_tfds_build_and_read(tmp_path):
    config = babi_config(5, 1024, num_train=40, num_validation=8, num_test=8)
    builder = prepare_babi(config, str(tmp_path))
    sources = builder.as_data_source()
    assert {split: len(source) for split, source in sources.items()} == {
        "train": 40,
        "validation": 8,
        "test": 8,
    }
    records = [
        sources[split][i] for split in tfds_common.SPLITS for i in range(len(sources[split]))
    ]
    for record in records:
        example = {
            "prompt": record["prompt"].decode(),
            "answer": record["answer"].decode(),
            "question": record["question"].decode(),
            "facts": [fact.decode() for fact in record["facts"]],
        }
        check_example(example, 5, 1024)
        tokens, mask = record["tokens"], record["answer_mask"]
        assert tokens.shape == mask.shape == (1025,) and tokens[0] == tokenizer.BOS
        assert tokenizer.decode(tokens[mask == 1]) == example["answer"]
        assert mask.sum() == len(example["answer"])
    prompts = [record["prompt"] for record in records]
    assert len(set(prompts)) == len(prompts)


def test_small_story_space_is_deduplicated(tmp_path):
    # QA4 without filler has a few tens of thousands of stories: splits must still be disjoint.
    config = babi_config(4, 0, num_train=300, num_validation=100, num_test=100)
    builder = prepare_babi(config, str(tmp_path))
    prompts = {
        split: {source[i]["prompt"] for i in range(len(source))}
        for split, source in builder.as_data_source().items()
    }
    assert sum(len(p) for p in prompts.values()) == 500
    for a, b in itertools.combinations(prompts, 2):
        assert not prompts[a] & prompts[b]
