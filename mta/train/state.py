"""Creating the train state {params, opt_state, step} sharded on a mesh, abstractly or for real."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mta.config import Config
from mta.model import Transformer
from mta.resolve import resolve_model
from mta.train.mesh import param_shardings
from mta.train.optimizer import decay_mask, make_optimizer, make_schedule


def abstract_model(cfg: Config, tensor: int = 1) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graphdef and abstract state (shapes and metadata, no memory), for a mesh
    with `tensor` devices on its tensor axis."""
    settings = resolve_model(cfg.model, tensor)
    model = nnx.eval_shape(lambda: Transformer(settings, nnx.Rngs(cfg.train.seed)))
    return nnx.split(model)


def opt_state_shardings(
    optimizer: optax.GradientTransformation, opt_state_abstract, params_shardings: dict, mesh: Mesh
):
    """Shardings for the optimizer state: each copy of the parameter tree in it (Adam's moments),
    found structurally by optax.tree_map_params, gets the parameters' shardings leaf by leaf;
    everything else (step counts) is replicated."""
    return optax.tree_map_params(
        optimizer,
        lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
        opt_state_abstract,
        params_shardings,
        transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),  # masked-out parameters: no state
    )


class TrainSetup:
    """Everything fixed for a run: graphdef, optimizer, schedule, state shardings."""

    def __init__(self, cfg: Config, mesh: Mesh):
        self.cfg, self.mesh = cfg, mesh
        tensor = dict(mesh.shape).get("tensor", 1)
        self.model_settings = resolve_model(cfg.model, tensor)
        self.graphdef, abstract = abstract_model(cfg, tensor)
        abstract_params = abstract.to_pure_dict()
        self.schedule = make_schedule(cfg.train)
        self.optimizer = make_optimizer(cfg.train, decay_mask(abstract))
        params_sh = param_shardings(abstract, mesh, cfg.mesh.rules)
        opt_abstract = jax.eval_shape(self.optimizer.init, abstract_params)
        self.shardings = {
            "params": params_sh,
            "opt_state": opt_state_shardings(self.optimizer, opt_abstract, params_sh, mesh),
            "step": NamedSharding(mesh, PartitionSpec()),
            "skipped": NamedSharding(mesh, PartitionSpec()),
        }

    def _fresh_state(self) -> dict:
        model = Transformer(self.model_settings, nnx.Rngs(self.cfg.train.seed))
        params = nnx.state(model).to_pure_dict()
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "step": jnp.zeros((), jnp.int32),
            "skipped": jnp.zeros((), jnp.int32),  # non-finite updates skipped so far
        }

    def with_optimizer(self, state: dict) -> dict:
        """`state` (params, step, skipped) with a fresh optimizer state for its params, on the
        state's shardings: how a run continues from an imported checkpoint."""
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings["opt_state"])
        return {**state, "opt_state": opt_state(state["params"])}

    def init_state(self) -> dict:
        """A freshly initialised state, created directly on its shardings."""
        return jax.jit(self._fresh_state, out_shardings=self.shardings)()

    def abstract_state(self) -> dict:
        """ShapeDtypeStructs of the state with their shardings (restore target, dry run)."""
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            jax.eval_shape(self._fresh_state),
            self.shardings,
        )
