"""lm-evaluation-harness on this codebase's checkpoints: the `mta` model of lm-eval.

    mta eval --workdir runs/x --harness hellaswag,arc_easy          # our CLI (mta/cli/eval.py)
    python -m mta.harness --model mta --model_args workdir=runs/x,batch_size=8 --tasks hellaswag

model.py is the lm-eval model (`HarnessLM`: loglikelihood, loglikelihood_rolling and
generate_until on a workdir's checkpoint with its tokenizer, batched in shape buckets, cached
decoding); run.py runs tasks through lm-eval's evaluator and writes WORKDIR/eval/STEP/harness/;
__main__.py is lm-eval's own command line with `mta` registered.

Why `python -m mta.harness` rather than plain `lm_eval`: lm-eval 0.4.13 (the newest release)
finds models only in its own registry, filled from its own package; it reads no entry points of
other packages, so something must import this package and register the model before lm-eval's
command line resolves `--model mta`. `register()` does that for Python callers
(`simple_evaluate(model="mta", ...)`).

lm-eval is an optional dependency (the `dev` and `harness` extras, no torch): nothing here
imports it until a model is registered or a task run.
"""

MODEL_NAME = "mta"
LM_EVAL_VERSION = "0.4.13"  # the version pinned in pyproject.toml


def require_lm_eval() -> None:
    """Raises ConfigError (one line saying how to install it) if lm-eval is not importable."""
    import importlib.util

    from mta.config import ConfigError

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            f"lm-eval is not installed: pip install 'lm_eval=={LM_EVAL_VERSION}' "
            "(or install this package with its [harness] or [dev] extra)"
        )


def register() -> None:
    """Registers `mta` in lm-eval's model registry (lazily: the class is imported on first use),
    after lm-eval's own models, so that `--model mta` resolves like `--model hf`."""
    require_lm_eval()
    import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's models first)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target="mta.harness.model:HarnessLM")
