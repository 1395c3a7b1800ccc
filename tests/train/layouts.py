"""Run by tests/train/test_mesh.py in a subprocess with 8 CPU devices: trains one config on
several mesh layouts in one process (one start-up for all) and prints {layout: losses} as JSON.

    python tests/train/layouts.py ROOT CONFIG OVERRIDES_JSON LAYOUTS_JSON

LAYOUTS_JSON maps a name to extra overrides, or to a pair [first, then] of them: train the first
half of the run under `first`, then continue that checkpoint under `then` (a resharding restore).
"""

import json
import sys
from pathlib import Path

from mta.config import load_config
from mta.train.loop import train
from mta.train.metrics import read_metrics


def main(root: str, config: str, overrides: str, layouts: str) -> None:
    overrides, layouts = json.loads(overrides), json.loads(layouts)
    losses = {}
    for name, extra in layouts.items():
        workdir = Path(root) / name.replace(">", "_to_")
        if isinstance(extra[0], list):
            first, extra = extra
            cfg = load_config(config, overrides + first)
            train(cfg, workdir, until_step=cfg.train.steps // 2)
        train(load_config(config, overrides + extra), workdir)
        losses[name] = [r["loss"] for r in read_metrics(workdir)]
    print(json.dumps(losses))


if __name__ == "__main__":
    main(*sys.argv[1:])
