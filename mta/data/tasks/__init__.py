"""The task registry: `data.task` name -> `Task` (see `base.Task`).

Each task is one module of this package: its typed settings (the config section `data.<task>`),
its TFDS builder config and build (usually in `mta/data/tfds_<task>.py`, loaded lazily), its
evaluations (suite settings + scoring) and `TASK = Task(...)`. The config schema, the input
pipeline, the evaluation suite and its scoring all read `TASKS`. Adding a task is its module plus
one line in MODULES below (docs/architecture.md shows a whole example).
"""

import importlib

from mta.data.tasks.base import Eval, Task

MODULES = (
    "block",
    "mqar",
    "niah",
    "babi",
    "vartrack",
    "text",
    "corpus",
)

TASKS: dict[str, Task] = {
    task.name: task
    for task in (importlib.import_module(f"{__name__}.{name}").TASK for name in MODULES)
}

# Evaluation name (a key of a suite file's `tasks`) -> (the task it reads, its Eval).
EVALS: dict[str, tuple[Task, Eval]] = {
    name: (task, evaluation) for task in TASKS.values() for name, evaluation in task.evals.items()
}
