"""The schema of a run: the typed dataclasses of every config section, with a comment per field
(docs/configs.md is generated from them), and the tables of allowed values."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from mta.data.tasks import TASKS  # the task registry: light modules, no TFDS
from mta.data.tasks.corpus import SourceConfig


class ConfigError(ValueError):
    """A user error in a config: the message is one line naming the key and what is allowed."""


@dataclass
class KQConvConfig:
    """A key-query convolution: `c_q` query taps (past only) x `c_k` key taps (centred, odd)."""

    enabled: bool = False  # use this convolution (in the layers of kq_layers)
    c_q: int = 6  # query taps: the current query and the c_q - 1 previous ones
    c_k: int = 11  # key taps, centred on the current key; must be odd


@dataclass
class AttentionConfig:
    """Attention variant. With every MTA part off this is standard causal attention."""

    # softmax (baseline, talking heads, MTA) | diff (DIFF Transformer) | fox (forgetting
    # attention: a per-head forget gate biases the logits) | stick_breaking (no softmax)
    kind: str = "softmax"
    # reference (the paper's equations, plain autodiff) | dense (tuned for XLA:CPU) | blockwise
    # (O(T) memory) | pallas (Pallas kernels: Mosaic on TPU, Triton-shaped on GPU, interpret
    # mode on CPU; O(T) memory) | auto (dense on CPU, reference elsewhere, blockwise when maps
    # are too big; never pallas)
    impl: str = "auto"
    kq_pre: KQConvConfig = field(default_factory=KQConvConfig)  # conv before the softmax
    kq_post: KQConvConfig = field(default_factory=KQConvConfig)  # conv after the softmax
    # Layers with key-query convolution: "all", an explicit list of 0-based layers like
    # [2, 6, 10], or {every: 4, start: 2}.
    kq_layers: Any = "all"
    # Head mixing of the logits: none | linear ([H, H]) | grouped ([H/c_h, c_h, c_h]) |
    # conv3d (a full 3-D kernel over heads, queries and keys in place of kq_pre + mixing).
    head_pre: str = "none"
    head_post: str = "none"  # head mixing of the probabilities: none | grouped
    head_group_size: int = 0  # c_h; 0 means all heads in one group
    # Per-head RMSNorm of the attention output, then: none (no norm at all) | gating (a
    # sigmoid gate per token and head) | depth_scaling (times 1 - lambda_init(layer)).
    group_norm: str = "none"
    # Init of the kq kernels: identity (MTA starts equal to the baseline) | constant | zero |
    # uniform. Head mixing always starts at the identity.
    kernel_init: str = "identity"
    kernel_init_value: float = 0.3  # the constant of `constant`, the half-width of `uniform`
    decay_mta_params: bool = True  # apply weight decay to MTA kernels, mixing and norm weights
    # RoPE on q and k: auto (on, except for fox and stick_breaking, which need no positional
    # embedding) | on | off
    rope: str = "auto"
    qk_norm: bool = False  # per-head RMSNorm of q and k, one [D] weight per head (FoX "Pro")
    # Gated attention: a sigmoid gate from the layer input on each head's output, before the
    # output projection: none | elementwise (one per channel; FoX "Pro"'s output gate) | headwise
    output_gate: str = "none"
    # stick_breaking: the query's own key breaks the stick like the others (no remainder);
    # false is the reference release's form (keys before the query, remainder on its own value)
    attend_current: bool = False


@dataclass
class RopeScalingConfig:
    """The rope_scaling types linear and llama3 of Hugging Face checkpoints."""

    # none | linear (every frequency / factor) | llama3 (Llama 3.1's: wavelengths beyond
    # original_max_position / low_freq_factor divided by factor, those below
    # original_max_position / high_freq_factor kept, a smooth blend between)
    kind: str = "none"
    factor: float = 8.0  # the division of the scaled frequencies
    low_freq_factor: float = 1.0  # llama3: the low-frequency wavelength bound's divisor
    high_freq_factor: float = 4.0  # llama3: the high-frequency wavelength bound's divisor
    original_max_position: int = 8192  # llama3: the context length of pretraining


@dataclass
class ModelConfig:
    # At least data.tokenizer's vocabulary; 259 is the byte tokenizer's (256 bytes + pad, bos, eos)
    vocab_size: int = 259
    dim: int = 64  # model (embedding) width
    num_layers: int = 4  # transformer blocks
    num_heads: int = 2  # query heads H
    num_kv_heads: int = 0  # 0 means num_heads (MHA); 1 is MQA; in between is GQA
    head_dim: int = 0  # 0 means dim // num_heads
    mlp_hidden: int = 256  # hidden width of the SwiGLU feed-forward layer
    tie_embeddings: bool = True  # the output layer reuses the input embedding matrix
    rope_theta: float = 10000.0  # base of the rotary position embedding's frequencies
    # Scaling of RoPE's frequencies (imported Llama 3.1/3.2 checkpoints use llama3)
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    norm_eps: float = 1e-5  # epsilon of every RMSNorm
    init_std: float = 0.02  # std of the normal init of embeddings and projections
    scale_output_init: bool = False  # divide output projections' init std by sqrt(2 * layers)
    compute_dtype: str = "float32"  # float32 | bfloat16 (parameters stay float32)
    remat: str = "none"  # none | block | attention: recompute these in the backward pass
    # Hand-written derivatives measured faster on XLA:CPU: auto (CPU only) | enabled | disabled.
    # Disabled, the model is plain autodiff (jax.jvp works, except through impl blockwise).
    tuned_vjp: str = "auto"
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    # Canon layers (a short causal depthwise conv on the normed hidden states, with a residual)
    # at places A (before attention) and C (before the MLP): none | A | C | AC
    canon: str = "none"
    canon_kernel: int = 4  # taps of each Canon conv: the current token and the K - 1 previous
    canon_residual: bool = True  # add the conv's input to its output


def _with_task_settings(base: type) -> type:
    """`base` plus one field per registered task (mta/data/tasks), `<task>: <its settings
    dataclass>` at its defaults; named like `base` without its leading underscore."""
    fields = [(name, t.settings, field(default_factory=t.settings)) for name, t in TASKS.items()]
    cls = dataclasses.make_dataclass(base.__name__.lstrip("_"), fields, bases=(base,))
    cls.__module__, cls.__doc__ = __name__, base.__doc__
    return cls


@dataclass
class TokenizerConfig:
    """The tokenizer of the data, the evaluation suite and generation (mta/data/tokenizers)."""

    # byte (utf-8 bytes + pad 256, bos 257, eos 258) | sentencepiece | tiktoken | huggingface
    kind: str = "byte"
    # The tokenizer file ("" for byte): sentencepiece: a .model file; tiktoken: a BPE rank file
    # like Llama-3's tokenizer.model; huggingface: a tokenizer.json. Make one with
    # `mta tokenizer train`. model.vocab_size must be at least its vocabulary.
    path: str = ""


@dataclass
class _MixtureMember:
    """One task of a mixture (data.task: mix), drawn with probability weight / sum of weights;
    its settings are its task's section, data.mixture[i].<task>."""

    task: str = ""  # one of the tasks of data.task (not mix)
    weight: float = 1.0  # relative: the share of examples is weight / sum of the weights


MixtureMember = _with_task_settings(_MixtureMember)


@dataclass
class _DataConfig:
    """Then one section of settings per task (data.<task>): data.task's is the one used."""

    task: str = "block"  # a task of mta/data/tasks (block | mqar | niah | ...) or mix
    data_dir: str = "~/tensorflow_datasets"  # where TFDS builds and reads datasets
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seq_len: int = 2048  # tokens per training row (the block task with byte tokens sets its own)
    packing: str = "pad"  # pad (one example per row) | pack (first-fit, with segment ids)
    too_long: str = "drop"  # an example longer than seq_len: drop | truncate (text is chunked)
    # training loss on the answer tokens of task examples (answer) or on every token (all:
    # language modelling on the task data); evaluation always scores the answers
    train_loss: str = "answer"
    # The members of task `mix`, e.g. [{task: mqar, weight: 0.4, mqar: {num_pairs: 8}},
    # {task: block, weight: 0.6, block: {num_blocks: 5}}] (see mta/data/mixture.py).
    mixture: list[MixtureMember] = field(default_factory=list)
    prefetch: int = 2  # batches read and put on the devices ahead by a thread; 0: none
    # The sources of task corpus, e.g. [{path: "shards/**/*.jsonl.zst", weight: 0.3, text_key:
    # text}, {path: "tfds:lm1b", weight: 0.7}] (see mta/data/tasks/corpus.py).
    sources: list[SourceConfig] = field(default_factory=list)


DataConfig = _with_task_settings(_DataConfig)


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps of the whole run
    batch_size: int = 32  # global, over all devices and hosts
    seed: int = 0  # seed of the parameter init and of the training data order
    lr: float = 1e-3  # peak learning rate (reached after warmup)
    warmup_steps: int = 100  # linear warmup from 0 to lr
    schedule: str = "constant"  # constant | linear | cosine (after warmup)
    min_lr_ratio: float = 0.0  # final lr of linear/cosine as a fraction of lr
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.98  # Adam's second-moment decay
    eps: float = 1e-8  # Adam's epsilon
    clip_norm: float = 1.0  # global-norm clipping; 0 disables it
    skip_nonfinite: bool = False  # skip (and count) updates with NaN/Inf instead of stopping
    grad_accum: int = 1  # micro-batches per step (gradient accumulation)
    # Dispatch step k+1 before reading whether step k was finite or any process was signalled
    # (no host wait per step; a NaN stops the run one step later, never checkpointed); false
    # waits for every step.
    run_ahead: bool = True
    peer_timeout: float = 300.0  # multi-process: seconds a peer may be silent before all exit
    # A run directory (its newest checkpoint) or a checkpoint step directory whose parameters
    # start this run (fresh optimizer, step 0, data from the start): a curriculum's next stage,
    # or a baseline continued with MTA (parameters it lacks keep their init). Empty: none.
    init_from: str = ""


@dataclass
class MeshConfig:
    """Device mesh sizes; -1 fills the remaining devices. Product must equal the device count."""

    data: int = -1  # devices on the data axis: the batch is split over data x fsdp
    fsdp: int = 1  # devices on the fsdp axis: batch split, parameters sharded by `rules`
    tensor: int = 1  # devices on the tensor axis: parameters sharded by `rules`
    # Logical parameter axis -> mesh axis (or null: replicated along that dimension).
    rules: dict[str, Any] = field(
        default_factory=lambda: {
            "embed": "fsdp",
            "vocab": "tensor",
            "heads": "tensor",
            "kv_heads": "tensor",
            "mlp": "tensor",
            "norm": None,
        }
    )


@dataclass
class CheckpointConfig:
    every: int = 500  # save every this many steps (and always at the last step)
    keep: int = 3  # newest checkpoints kept; older ones are deleted
    async_save: bool = True  # write in the background while training goes on


@dataclass
class LogConfig:
    every: int = 50  # write a metrics record every this many steps
    tensorboard: bool = True  # also write TensorBoard event files to WORKDIR/tensorboard
    progress: str = "auto"  # auto (only in a terminal) | on | off
    # [START, STOP]: a jax.profiler trace of steps START..STOP in WORKDIR/profile ([]: none);
    # `mta train --profile-steps START:STOP` sets it
    profile_steps: list[int] = field(default_factory=list)


@dataclass
class EvalConfig:
    every: int = 500  # 0 evaluates only at the end
    split: str = "validation"  # the dataset split evaluated
    num_examples: int = 1000  # examples evaluated (the first ones of the split)
    batch_size: int = 100  # examples per evaluation batch


@dataclass
class Config:
    # The decoder-only transformer (mta/model.py).
    model: ModelConfig = field(default_factory=ModelConfig)
    # The task, its TFDS dataset and the grain input pipeline (mta/data/).
    data: DataConfig = field(default_factory=DataConfig)
    # Optimisation: AdamW, warmup, learning-rate schedule, clipping (mta/train/).
    train: TrainConfig = field(default_factory=TrainConfig)
    # The device mesh and how parameters are sharded over it (mta/train/mesh.py).
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # Orbax checkpoints in WORKDIR/checkpoints (mta/train/checkpoint.py).
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # WORKDIR/metrics.jsonl, TensorBoard event files and the progress bar.
    log: LogConfig = field(default_factory=LogConfig)
    # The evaluation during training: exact-match error and loss on the answer tokens.
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES = {
    "model.attention.kind": ("softmax", "diff", "fox", "stick_breaking"),
    "model.attention.rope": ("auto", "on", "off"),
    "model.attention.output_gate": ("none", "elementwise", "headwise"),
    "model.canon": ("none", "A", "C", "AC"),
    "model.rope_scaling.kind": ("none", "linear", "llama3"),
    "model.attention.impl": ("reference", "dense", "blockwise", "pallas", "auto"),
    "model.tuned_vjp": ("auto", "enabled", "disabled"),
    "model.attention.head_pre": ("none", "linear", "grouped", "conv3d"),
    "model.attention.head_post": ("none", "grouped"),
    "model.attention.group_norm": ("none", "gating", "depth_scaling"),
    "model.attention.kernel_init": ("identity", "constant", "zero", "uniform"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "block", "attention"),
    "data.task": (*TASKS, "mix"),
    "data.tokenizer.kind": ("byte", "sentencepiece", "tiktoken", "huggingface"),
    "data.packing": ("pad", "pack"),
    "data.too_long": ("drop", "truncate"),
    "data.train_loss": ("answer", "all"),
    "train.schedule": ("constant", "linear", "cosine"),
    "log.progress": ("auto", "on", "off"),
    "eval.split": ("train", "validation", "test"),
}

POSITIVE = (
    "model.vocab_size",
    "model.dim",
    "model.num_layers",
    "model.num_heads",
    "model.mlp_hidden",
    "model.rope_theta",
    "model.rope_scaling.factor",
    "model.rope_scaling.original_max_position",
    "model.norm_eps",
    "model.canon_kernel",
    "model.attention.kq_pre.c_q",
    "model.attention.kq_pre.c_k",
    "model.attention.kq_post.c_q",
    "model.attention.kq_post.c_k",
    "data.seq_len",
    "train.steps",
    "train.batch_size",
    "train.grad_accum",
    "checkpoint.every",
    "checkpoint.keep",
    "log.every",
    "eval.num_examples",
    "eval.batch_size",
)
NON_NEGATIVE = (
    "model.num_kv_heads",
    "model.head_dim",
    "model.init_std",
    "model.attention.head_group_size",
    "train.seed",
    "train.lr",
    "train.warmup_steps",
    "train.weight_decay",
    "train.clip_norm",
    "train.min_lr_ratio",
    "train.peer_timeout",
    "eval.every",
    "data.prefetch",
)


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts and lists."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable again by load_config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Keys that may change when a run resumes: they do not change what is computed.
