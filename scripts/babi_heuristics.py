"""Accuracy of two answers that need no reasoning on the BabiLong-style QA tasks, the reference
lines for a model's bAbI accuracy: the last room the story mentions, and a room drawn uniformly
from those it mentions (expected accuracy). A uniform guess over all rooms scores 1/6.

    python scripts/babi_heuristics.py --tasks 1 2 --lengths 0 480 640 768 --num-examples 2000
"""

import argparse
import re

import numpy as np

from mta.data.babi import ROOMS, check_babi, generate_example

ROOM_PATTERN = re.compile("|".join(ROOMS))


def heuristics(task: int, length: int, num_examples: int, seed: int = 0) -> tuple[float, float]:
    """(last-room accuracy, expected accuracy of a uniform pick among the mentioned rooms)."""
    rng = np.random.default_rng(seed)
    last = uniform = 0.0
    for _ in range(num_examples):
        example = generate_example(rng, task, length)
        mentioned = ROOM_PATTERN.findall(example["prompt"])
        answer = example["answer"]
        last += bool(mentioned) and mentioned[-1] == answer
        uniform += answer in mentioned and 1 / len(set(mentioned))
    return last / num_examples, uniform / num_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lengths", type=int, nargs="+", default=[0])
    parser.add_argument("--num-examples", type=int, default=2000)
    args = parser.parse_args()
    print("| qa | length | last room mentioned | uniform among mentioned |\n|---|---|---|---|")
    for task in args.tasks:
        for length in args.lengths:
            try:
                check_babi(task, length)
            except ValueError:
                continue  # too short for this task's stories (the eval suites skip it too)
            last, uniform = heuristics(task, length, args.num_examples)
            print(f"| {task} | {length} | {last:.2f} | {uniform:.2f} |")


if __name__ == "__main__":
    main()
