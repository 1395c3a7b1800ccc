"""The evaluation during training: exact-match error and loss on the answer tokens.

The eval step is jitted once per run (`Evaluator`), and every batch is padded to the eval batch
size (rounded up to the batch shards) with zero-weight rows, so it compiles once per shape
bucket (one for a task of fixed length) and each device scores its share of the rows.
"""

import jax

from mta.train.feed import shard_global_batch
from mta.train.mesh import batch_sharding
from mta.train.state import TrainSetup
from mta.train.step import make_eval_step


class Evaluator:
    """evaluator(params, batches) -> {eval/exact_match_error, eval/loss, eval/examples}."""

    def __init__(self, setup: TrainSetup):
        self.step_fn = make_eval_step(setup)
        self.sharding = batch_sharding(setup.mesh)
        self.rows = setup.cfg.eval.batch_size

    def compiles(self) -> int:
        """How many programs the eval step has been compiled into so far (one per shape)."""
        return self.step_fn._cache_size()

    def __call__(self, params: dict, batches: list[dict]) -> dict:
        sums = [
            self.step_fn(params, shard_global_batch(batch, self.sharding, self.rows))
            for batch in batches
        ]  # dispatched one after another; fetched once at the end
        totals = {}
        for out in jax.device_get(sums):
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return {
            "eval/exact_match_error": 100.0 * (1.0 - totals["exact"] / max(totals["examples"], 1)),
            "eval/loss": totals["loss_sum"] / max(totals["weight_sum"], 1.0),
            "eval/examples": int(totals["examples"]),
        }
