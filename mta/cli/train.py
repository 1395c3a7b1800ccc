"""Train a model from a YAML config into a workdir (resuming if it has checkpoints).

    mta train --config configs/toy/block_mta.yaml --workdir runs/x train.steps=200
    mta train --config configs/lm/880M_mta.yaml --dry-run
    mta train --config configs/toy/block_mta.yaml --workdir runs/x --profile-steps 10:15

(`python scripts/train.py ...` in a checkout is the same command.)

Exit codes: 0 success (also after SIGTERM, with a checkpoint at the stop step); 2 user error
(one line naming what is wrong, e.g. a workdir in use by another run: WORKDIR/run.lock names
it); 3 NaN/Inf in the loss or gradients; 4 a checkpoint could not be written; 5 another process
of a multi-process run died or hangs (train.peer_timeout; relaunch to resume); 130 after SIGINT
(Ctrl-C), with a checkpoint at the stop step.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from mta.cli.args import command_parser, user_error
from mta.config import ConfigError, load_config


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--workdir", help="run directory (required unless --dry-run)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, build the model abstractly, compile the train step (nothing is "
        "allocated) and print a JSON summary with XLA's memory analysis per device",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="with --dry-run: skip compiling; memory is then modelled (mta/train/memory.py)",
    )
    parser.add_argument(
        "--profile-steps",
        type=_step_window,
        metavar="START:STOP",
        help="write a jax.profiler trace of these steps to WORKDIR/profile (log.profile_steps)",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a workdir even though model/data/optimizer keys differ (logs the diff)",
    )
    group = parser.add_argument_group(
        "multi-process (one process per host; or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,"
        " JAX_PROCESS_ID)"
    )
    group.add_argument("--coordinator", help="host:port of process 0")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)
    group.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() and let it detect the cluster (TPU pods, SLURM)",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides like train.steps=200")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.workdir:
        parser.error("--workdir is required (or use --dry-run)")
    if args.profile_steps:
        args.overrides.append(f"log.profile_steps={args.profile_steps}")
    return args


def _step_window(text: str) -> str:
    """'10:15' -> '[10,15]' (the override's value); argparse reports a malformed one."""
    first, sep, last = text.partition(":")
    if not (sep and first.isdigit() and last.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not START:STOP, e.g. 10:15")
    return f"[{int(first)},{int(last)}]"


def init_distributed(args, peer_timeout: float = 0.0) -> None:
    """Joins the multi-process JAX runtime when launched as several processes (its own
    heartbeat set beyond `peer_timeout`, which mta/train/peers.py watches)."""
    import jax

    explicit = {
        "coordinator_address": args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS"),
        "num_processes": args.num_processes or _env_int("JAX_NUM_PROCESSES"),
        "process_id": args.process_id
        if args.process_id is not None
        else _env_int("JAX_PROCESS_ID"),
    }
    given = {k: v for k, v in explicit.items() if v is not None}
    if not given and not args.distributed:
        return
    if given and len(given) < 3:
        missing = ", ".join(k for k in explicit if k not in given)
        raise ConfigError(
            f"multi-process launch needs --coordinator, --num-processes and "
            f"--process-id; missing: {missing}"
        )
    from mta.train.peers import jax_heartbeat_seconds

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used on CPU
    jax.distributed.initialize(
        **given, heartbeat_timeout_seconds=jax_heartbeat_seconds(peer_timeout)
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value is None else int(value)


def load(config: str, overrides: list[str]):
    """The validated config, including the checks that need the task's rules, the tokenizer's
    file or the devices, so that every config error is reported before any compute (ablate
    checks sweeps with it)."""
    return check(load_config(config, overrides))


def check(cfg):
    """`cfg` after the checks that need the task's rules, the tokenizer's file or the devices
    (ConfigError)."""
    from mta.data import pipeline
    from mta.train.mesh import check_batch, tensor_parallel_plan

    pipeline.configured_tokenizer(cfg)  # a readable file of its kind, within model.vocab_size
    try:
        pipeline.sequence_length(cfg.data)
    except ValueError as err:
        raise ConfigError(f"data.{cfg.data.task}: {err}") from None
    check_batch(cfg)
    tensor_parallel_plan(cfg)
    return cfg


def dry_run(cfg, compile_step: bool = True) -> dict:
    import jax

    from mta.data import pipeline
    from mta.train.memory import modelled_memory, xla_memory
    from mta.train.mesh import make_mesh
    from mta.train.state import TrainSetup
    from mta.train.summary import summary

    setup = TrainSetup(cfg, make_mesh(cfg.mesh))
    seq_len = pipeline.sequence_length(cfg.data)
    abstract = setup.abstract_state()
    modelled = modelled_memory(cfg, abstract, seq_len, jax.device_count())
    memory = (xla_memory(setup, seq_len) if compile_step else None) or modelled
    result = summary(cfg, abstract, seq_len, setup.shardings["params"], memory)
    if memory is not modelled:
        result["memory_modelled_gb"] = round(modelled["total"] / 2**30, 3)
    return result | {"tokenizer": pipeline.configured_tokenizer(cfg).record()}


def run(args, cfg) -> int:
    """Trains holding the workdir's lock (process 0), with a peer watchdog when multi-process."""
    import jax

    from mta.train.lock import WorkdirLock
    from mta.train.peers import PeerWatchdog

    lock = WorkdirLock(args.workdir, enabled=jax.process_index() == 0)
    watchdog = None
    if jax.process_count() > 1 and cfg.train.peer_timeout > 0:
        watchdog = PeerWatchdog(cfg.train.peer_timeout, args.workdir, lock.release).start()
    try:
        with lock:
            code = _train(args, cfg, lock, watchdog)
    except Exception as err:
        if watchdog is not None:  # the peers stop too, naming this process
            if not isinstance(err, ConfigError):
                watchdog.settle()  # an error in a collective: a lost peer is the one line
            watchdog.stop(failed=True)
        raise
    if watchdog is not None:
        watchdog.stop()
    return code


def _train(args, cfg, lock, watchdog) -> int:
    from mta.train import faults
    from mta.train.loop import train

    try:
        result = train(cfg, args.workdir, allow_config_change=args.allow_config_change)
    except faults.NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return faults.EXIT_NONFINITE
    except faults.CheckpointWriteError as err:
        # A save's collective fails first when a peer dies: then the lost peer is the one line
        if watchdog is not None:
            watchdog.settle()
        # Metrics and the manager are closed by now. Orbax's writer threads keep failing and
        # printing after a write error, burying this line, so the process ends here at once.
        print(f"error: {err}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        lock.release()
        os._exit(faults.EXIT_SAVE_FAILED)
    print(json.dumps(result))
    if "stopped_by" in result:
        print(
            f"stopped at step {result['step']} ({result['stopped_by']}) with a checkpoint there",
            file=sys.stderr,
        )
        return faults.EXIT_SIGINT if result["stopped_by"] == "SIGINT" else 0
    print(
        f"step {result['step']}: exact-match error {result['eval/exact_match_error']:.1f}% on "
        f"{result['eval/examples']} {cfg.eval.split} examples; metrics in "
        f"{Path(args.workdir) / 'metrics.jsonl'}",
        file=sys.stderr,
    )
    return 0


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    try:
        cfg = load_config(args.config, args.overrides)
        init_distributed(args, cfg.train.peer_timeout)
        cfg = check(cfg)
        if args.dry_run:
            print(json.dumps(dry_run(cfg, not args.no_compile), indent=1))
            return 0
        return run(args, cfg)
    except ConfigError as err:
        return user_error(err)


if __name__ == "__main__":
    sys.exit(main())
