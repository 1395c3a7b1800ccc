"""Requests/s of the lm-eval model `mta` (mta/harness/) on a small LM (`mta bench harness`).

The model is a checkpoint (--workdir, with its tokenizer) or a config's model randomly
initialised (--config, default configs/lm/small_mta.yaml, its tokenizer). --requests synthetic
requests per kind: loglikelihood (a context of --context-chars random lowercase words and a
continuation of about 8 characters) and generate_until (a context of the same kind, until a
string a random model never writes, so each request generates --gen-tokens tokens). One untimed
call compiles every shape bucket; then --repeats timed calls of all the requests, median.
Contexts longer than the model's max_length keep their last tokens, as in evaluation. Records:
requests/s per kind. --tiny: a two-layer
model, a handful of short requests (a smoke test, not a measurement).
"""

import random
import statistics
import time
from types import SimpleNamespace

from mta.bench.harness import Recorder, UserError, load_cfg

DEFAULT_CONFIG = "configs/lm/small_mta.yaml"
TINY_CONFIG = "configs/toy/block_mta_cpu.yaml"
TINY_OVERRIDES = ["model.dim=32", "model.num_layers=2", "model.mlp_hidden=64"]
KINDS = ("loglikelihood", "generate_until")
COLUMNS = [  # (markdown header, record key)
    ("model", "model"),
    ("request", "request"),
    ("requests", "requests"),
    ("batch size", "batch_size"),
    ("context chars", "context_chars"),
    ("new tokens", "gen_tokens"),
    ("s per call (median)", "time_s_median"),
    ("requests/s", "requests_per_s"),
]


def add_options(parser) -> None:
    """This benchmark's options (the CLI adds --out, --markdown, --note)."""
    from mta.cli.args import positive_int

    parser.add_argument("--workdir", help="a trained checkpoint (default: a random --config)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config of a random model")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for --config")
    parser.add_argument("--requests", type=positive_int, default=64, help="per request kind")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="rows per call")
    parser.add_argument("--context-chars", type=positive_int, default=400, help="per context")
    parser.add_argument("--gen-tokens", type=positive_int, default=32, help="per generation")
    parser.add_argument("--max-length", type=positive_int, help="default: the data.seq_len")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls (median)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")


def _random_model(config: str, overrides: list[str]):
    """What HarnessLM needs of a checkpoint (cfg, graphdef, params, mesh, tok), random init."""
    from flax import nnx

    from mta.data import pipeline
    from mta.model import Transformer
    from mta.resolve import resolve_model
    from mta.train.mesh import make_mesh

    cfg = load_cfg(config, overrides)
    graphdef, params = nnx.split(Transformer(resolve_model(cfg.model), nnx.Rngs(0)))
    tok = pipeline.configured_tokenizer(cfg)
    return SimpleNamespace(cfg=cfg, graphdef=graphdef, params=params, tok=tok, step=0,
                           mesh=make_mesh(cfg.mesh))  # fmt: skip


def _text(rng: random.Random, chars: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)))
    return " ".join(words)[:chars]


def _requests(kind: str, args, rng: random.Random) -> list:
    from lm_eval.api.instance import Instance

    out = []
    for i in range(args.requests):
        context = _text(rng, args.context_chars)
        if kind == "loglikelihood":
            arguments = (context, " " + _text(rng, 7))
        else:
            arguments = (context, {"until": ["\x00never\x00"], "max_gen_toks": args.gen_tokens})
        out.append(Instance(request_type=kind, doc={}, arguments=arguments, idx=i))
    return out


def run(args, rec: Recorder) -> None:
    """One record per request kind."""
    from mta.config import ConfigError
    from mta.data.tokenizers import TokenizerError
    from mta.harness import require_lm_eval
    from mta.harness.errors import ModelArgError

    if args.tiny:
        args.config, args.overrides = TINY_CONFIG, [*TINY_OVERRIDES, *args.overrides]
        args.requests, args.context_chars = min(args.requests, 6), min(args.context_chars, 24)
        args.gen_tokens, args.repeats, args.batch_size = min(args.gen_tokens, 4), 1, 4
    try:
        require_lm_eval()
        from mta.harness.model import HarnessLM

        common = {"batch_size": args.batch_size, "max_length": args.max_length}
        if args.workdir:
            lm, model = HarnessLM(workdir=args.workdir, **common), args.workdir
        else:
            lm = HarnessLM(loaded=_random_model(args.config, args.overrides), **common)
            model = " ".join([args.config, *args.overrides])
    except (ConfigError, ModelArgError, TokenizerError) as err:
        raise UserError(str(err)) from None
    if args.gen_tokens >= lm.max_length:
        raise UserError(f"--gen-tokens {args.gen_tokens} must be < max_length {lm.max_length}")
    rng = random.Random(0)
    for kind in KINDS:
        requests = _requests(kind, args, rng)
        call = getattr(lm, kind)
        call(requests)  # compiles every bucket these requests need
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            call(requests)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        record = {
            "model": model,
            "request": kind,
            "status": "ok",
            "requests": len(requests),
            "batch_size": lm.batch_size,
            "max_length": lm.max_length,
            "context_chars": args.context_chars,
            "gen_tokens": args.gen_tokens if kind == "generate_until" else None,
            "time_s_median": round(median, 4),
            "requests_per_s": round(len(requests) / median, 3),
        }
        rec.emit(record)
