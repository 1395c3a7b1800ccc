"""bAbI tasks QA1-QA5 in the BabiLong style (pure numpy): a small simulator of the bAbI world.

Actors move between rooms, take, drop and give objects; every event is one fact sentence, and
the question is answered from the simulated state, so the answer is always the true one:

1. single supporting fact: moves only; "Where is Mary?" -> the room of her last move.
2. two supporting facts: moves, takes, drops; "Where is the football?" -> the room of its holder,
   or where it was dropped.
3. three supporting facts: as 2; "Where was the football before the kitchen?" -> the room the
   object was in before it entered the kitchen (asked only about a room it entered once).
4. two-argument relations: two facts "The office is north of the kitchen." placing three rooms
   on a grid; "What is north of the kitchen?" or "What is the office north of?".
5. three-argument relations: as 2 plus "Fred gave the football to Bill."; "Who gave the football
   to Bill?", "Who did Fred give the football to?", "What did Fred give to Bill?", "Who received
   the football?", "Who gave the football?", answered by the most recent give that matches.

An actor's room is known once they moved; an object appears where it is first picked up. As in
BabiLong, the facts (in order) are spread at random sentence boundaries of filler text (here the
Python documentation's prose, without any sentence naming a person, room, object or direction)
so that len(prompt) + len(answer) == length exactly; length 0 means no filler. The prompt ends

    {facts and filler}
    Question: Where is the football?
    Answer: {answer}

and the answer is one word: a room, a person or an object.
"""

import dataclasses
import functools
import re

import numpy as np

from mta.data import text_corpus
from mta.data.checks import check_int

TASKS = (1, 2, 3, 4, 5)
ACTORS = ("Mary", "John", "Sandra", "Daniel")
QA5_ACTORS = ("Fred", "Bill", "Jeff", "Mary")
ROOMS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
# Number of facts per story, both ends included; chosen so that every story fits in 1000 bytes.
NUM_FACTS = {1: (2, 10), 2: (2, 15), 3: (4, 20), 4: (2, 2), 5: (2, 15)}
# Relative weights of moves, takes, drops and gives when the story is drawn.
WEIGHTS = {1: (1, 0, 0, 0), 2: (5, 3, 2, 0), 3: (5, 3, 1, 0), 5: (4, 3, 1, 3)}

TEMPLATES = {
    "move": (
        "{a} moved to the {x}.",
        "{a} went to the {x}.",
        "{a} journeyed to the {x}.",
        "{a} travelled to the {x}.",
        "{a} went back to the {x}.",
    ),
    "take": (
        "{a} picked up the {x}.",
        "{a} got the {x}.",
        "{a} grabbed the {x}.",
        "{a} took the {x}.",
        "{a} got the {x} there.",
        "{a} picked up the {x} there.",
    ),
    "drop": (
        "{a} dropped the {x}.",
        "{a} discarded the {x}.",
        "{a} put down the {x}.",
        "{a} left the {x}.",
        "{a} dropped the {x} there.",
        "{a} discarded the {x} there.",
    ),
    "give": (
        "{a} gave the {x} to {r}.",
        "{a} handed the {x} to {r}.",
        "{a} passed the {x} to {r}.",
    ),
}
QA5_QUESTIONS = (
    "Who gave the {o} to {r}?",
    "Who did {a} give the {o} to?",
    "What did {a} give to {r}?",
    "Who received the {o}?",
    "Who gave the {o}?",
)


@dataclasses.dataclass
class World:
    """The state of a story: rooms of actors, objects' holders or rooms, and what happened."""

    room: dict[str, str] = dataclasses.field(default_factory=dict)  # actor -> room
    holder: dict[str, str] = dataclasses.field(default_factory=dict)  # object -> actor
    lying: dict[str, str] = dataclasses.field(default_factory=dict)  # object -> room
    history: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # object -> rooms
    gives: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (a, o, r)

    def where(self, obj: str) -> str | None:
        """The room of an object, None while it has not appeared."""
        if obj in self.holder:
            return self.room[self.holder[obj]]
        return self.lying.get(obj)

    def legal(self, kind: str, actors: tuple[str, ...]) -> list[tuple]:
        """Every event of `kind` possible now: (kind, actor, room or object[, recipient])."""
        if kind == "move":
            return [("move", a, x) for a in actors for x in ROOMS if x != self.room.get(a)]
        if kind == "take":
            return [
                ("take", a, o)
                for a in actors
                if a in self.room
                for o in OBJECTS
                if o not in self.holder and self.lying.get(o, self.room[a]) == self.room[a]
            ]
        if kind == "drop":
            return [("drop", a, o) for o, a in self.holder.items()]
        return [
            ("give", a, o, r)
            for o, a in self.holder.items()
            for r in actors
            if r != a and self.room.get(r) == self.room[a]
        ]

    def apply(self, event: tuple) -> None:
        """Updates the state with one event (assumed legal)."""
        kind, actor, thing = event[:3]
        if kind == "move":
            self.room[actor] = thing
            for obj, holder in self.holder.items():
                if holder == actor and self.history[obj][-1] != thing:
                    self.history[obj].append(thing)
        elif kind == "take":
            self.holder[thing] = actor
            self.lying.pop(thing, None)
            self.history.setdefault(thing, [self.room[actor]])
        elif kind == "drop":
            del self.holder[thing]
            self.lying[thing] = self.room[actor]
        else:
            self.holder[thing] = event[3]
            self.gives.append((actor, thing, event[3]))


def fact(rng: np.random.Generator, event: tuple) -> str:
    """A sentence for the event, in one of the templates of its kind."""
    templates = TEMPLATES[event[0]]
    template = templates[int(rng.integers(len(templates)))]
    return template.format(a=event[1], x=event[2], r=event[3] if len(event) > 3 else "")


def _question(rng: np.random.Generator, task: int, world: World) -> tuple[str, str] | None:
    """(question, answer) about the state, or None if the story allows none."""
    if task == 1:
        actors = sorted(world.room)
        actor = actors[int(rng.integers(len(actors)))]
        return f"Where is {actor}?", world.room[actor]
    if task == 2:
        objects = [o for o in OBJECTS if world.where(o) is not None]
        if not objects:
            return None
        obj = objects[int(rng.integers(len(objects)))]
        return f"Where is the {obj}?", world.where(obj)
    if task == 3:
        choices = [
            (obj, i)
            for obj, rooms in sorted(world.history.items())
            for i in range(1, len(rooms))
            if rooms.count(rooms[i]) == 1
        ]
        if not choices:
            return None
        obj, i = choices[int(rng.integers(len(choices)))]
        return f"Where was the {obj} before the {world.history[obj][i]}?", world.history[obj][i - 1]
    if not world.gives:
        return None
    a, o, r = world.gives[int(rng.integers(len(world.gives)))]
    kind = int(rng.integers(len(QA5_QUESTIONS)))
    # Which parts of a give (a, o, r) the question names, and which one it asks for.
    known, asked = [((1, 2), 0), ((0, 1), 2), ((0, 2), 1), ((1,), 2), ((1,), 0)][kind]
    latest = [g for g in world.gives if all(g[k] == (a, o, r)[k] for k in known)][-1]
    return QA5_QUESTIONS[kind].format(a=a, o=o, r=r), latest[asked]


def _story(rng: np.random.Generator, task: int) -> tuple[list[tuple], str, str]:
    """(events, question, answer) of a QA1, 2, 3 or 5 story."""
    actors = QA5_ACTORS if task == 5 else ACTORS
    weights = np.array(WEIGHTS[task], np.float64)
    low, high = NUM_FACTS[task]
    for _ in range(1000):  # a question is possible in most stories; bound it all the same
        world, events = World(), []
        for _ in range(int(rng.integers(low, high + 1))):
            options = [world.legal(kind, actors) for kind in ("move", "take", "drop", "give")]
            p = weights * [bool(o) for o in options]
            kind = int(rng.choice(4, p=p / p.sum()))
            event = options[kind][int(rng.integers(len(options[kind])))]
            world.apply(event)
            events.append(event)
        if (qa := _question(rng, task, world)) is not None:
            return events, *qa
    raise RuntimeError(f"no qa{task} story allowed a question in 1000 attempts")


def _relations(rng: np.random.Generator) -> tuple[list[str], str, str]:
    """(facts, question, answer) of a QA4 story: three rooms on a grid, two relations."""
    a, b, c = (ROOMS[i] for i in rng.choice(len(ROOMS), 3, replace=False))
    names = list(DIRECTIONS)
    d1 = names[int(rng.integers(4))]
    d2 = [d for d in names if d != OPPOSITE[d1]][int(rng.integers(3))]
    # (x, d, y): x is d of y. b is d1 of a, c is d2 of b; stated either way round.
    relations = [(b, d1, a), (c, d2, b)]
    stated = [r if rng.integers(2) else (r[2], OPPOSITE[r[1]], r[0]) for r in relations]
    facts = [f"The {x} is {d} of the {y}." for x, d, y in stated]
    facts = [facts[i] for i in rng.permutation(2)]
    x, d, y = relations[int(rng.integers(2))]
    if rng.integers(2):
        x, d, y = y, OPPOSITE[d], x
    if rng.integers(2):
        return facts, f"What is {d} of the {y}?", x
    return facts, f"What is the {x} {d} of?", y


def max_story_bytes(task: int) -> int:
    """The longest facts, question and answer of a task, with separators: the least length > 0."""
    check_int("task", task, 1, 5)
    longest = functools.partial(max, key=len)
    actor, room, obj = longest(ACTORS + QA5_ACTORS), longest(ROOMS), longest(OBJECTS)
    if task == 4:
        facts = 2 * len(f"The {room} is {longest(DIRECTIONS)} of the {room}.")
        questions = [f"What is the {room} {longest(DIRECTIONS)} of?"]
    else:
        kinds = ("move", "take", "drop", "give") if task == 5 else ("move", "take", "drop")
        sentences = [
            t.format(a=actor, x=longest((room, obj)), r=actor) for k in kinds for t in TEMPLATES[k]
        ]
        facts = NUM_FACTS[task][1] * len(longest(sentences))
        questions = [
            f"Where is {actor}?",
            f"Where was the {obj} before the {room}?",
            *(q.format(a=actor, o=obj, r=actor) for q in QA5_QUESTIONS),
        ]
    facts += NUM_FACTS[task][1]  # a separator per fact
    return facts + len(_prompt_end(longest(questions))) + len(longest((actor, room, obj)))


def _prompt_end(question: str) -> str:
    return f"\nQuestion: {question}\nAnswer: "


def check_babi(task: int, length: int) -> None:
    """ValueError with a clear message unless the parameters make a valid task."""
    check_int("task", task, 1, 5)
    check_int("length", length, 0)
    least = max_story_bytes(task)
    if 0 < length < least:
        raise ValueError(
            f"length={length} is too short for qa{task}: it must be 0 (no filler) or >= {least}"
        )


@functools.cache
def filler_sentences() -> tuple[str, ...]:
    """Prose sentences naming no actor, room, object or direction (see text_corpus)."""
    world_words = {w.lower() for w in ACTORS + QA5_ACTORS + ROOMS + OBJECTS} | set(DIRECTIONS)
    return tuple(
        s
        for s in text_corpus.prose_sentences()
        if not world_words & set(re.findall(r"[a-z]+", s.lower()))
    )


def generate_example(rng: np.random.Generator, task: int, length: int) -> dict:
    """Draws one example (see the module doc).

    Returns a dict: `prompt`, `answer`, `question` (str) and `facts` (list of str, in order).
    """
    check_babi(task, length)
    if task == 4:
        facts, question, answer = _relations(rng)
    else:
        events, question, answer = _story(rng, task)
        facts = [fact(rng, event) for event in events]
    end = _prompt_end(question)
    if length == 0:
        context = " ".join(facts)
    else:
        budget = length - len(end) - len(answer) - sum(len(f) + 1 for f in facts)
        sentences = filler_sentences()
        filler = text_corpus.fill(sentences, int(rng.integers(len(sentences))), budget)
        gaps = np.sort(rng.integers(0, len(filler) + 1, len(facts)))
        context = text_corpus.weave(filler, facts, gaps.tolist())
    return {"prompt": context + end, "answer": answer, "question": question, "facts": facts}
