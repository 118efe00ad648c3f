"""The one config schema: frozen dataclasses of strings and numbers, validation, JSON io, names.

Both backends take a whole `Config` (or its `.model`) and map the strings to their own objects.
This module imports neither jax nor torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

# ---------------------------------------------------------------------------------------------
# Component names live here, once. Each backend registers exactly one implementation per name
# (tests/test_registries assert it), and the parity suite enumerates these lists.
CHOICES: dict[str, tuple[str, ...]] = {
    "normalization": ("layernorm", "layernorm_nobias", "rmsnorm"),
    "activation": ("gelu", "gelu_tanh", "silu", "relu", "leaky_relu"),
    "position_encoding": ("learned_absolute", "rope", "alibi", "none"),
    "attention_backend": ("sdpa", "manual"),
    "norm_position": ("pre", "post"),
    "ffn_type": ("standard", "swiglu", "glu"),
    "dtype": ("float32", "bfloat16", "float16"),
    "parallel": ("none", "ddp", "zero1", "fsdp"),
    "device": ("auto", "cpu", "cuda", "gpu"),
    "size": ("auto", "none"),  # plus the names in presets.SIZES, checked there
    "kernels": ("auto", "reference"),
    "task": ("hellaswag",),  # evaluation tasks (modgpt.tasks), for --tasks and --eval_tasks
}
# The registry kinds that both backends implement (a subset of CHOICES).
COMPONENT_KINDS = ("normalization", "activation", "position_encoding", "attention_backend", "ffn_type")
# nanoGPT's init_from names for OpenAI's GPT-2 checkpoints: here they mean hf:NAME
HF_NANOGPT_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# leaky_relu's negative slope: fixed, the default of both torch.nn.LeakyReLU and jax.nn.leaky_relu.
LEAKY_RELU_SLOPE = 0.01
# Gated FFN hidden size = 8/3 * n_embd rounded up to a multiple of this (unless ffn_hidden is set).
FFN_MULTIPLE_OF = 32
# Numeric/bool model options whose interesting values cannot be read off CHOICES or a bool type:
# the values the parity suite (and the backends' option tests) enumerate one at a time, on top of
# CHOICES and the bool options. Valid for any n_head divisible by 2 (the parity size has 4 heads):
# n_kv_head 1 = multi-query, 2 = grouped-query with n_head/2 query heads per key/value head.
OPTION_VALUES: dict[str, tuple] = {"n_kv_head": (1, 2)}


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the option and valid choices."""


# Options only one backend implements, each with what the other offers instead. The other backend
# refuses a non-default value (a key) or the named value (a (key, value) pair) rather than ignore it.
BACKEND_ONLY: dict = {
    ("dtype", "float16"): ("torch", "--dtype=bfloat16 (or float32)"),
    "parallel": ("torch", "--mesh_data=N (data parallel) and --mesh_fsdp=N (FSDP) over its device mesh"),
    "mesh_data": ("jax", "--parallel=ddp or zero1 under torchrun"),
    "mesh_fsdp": ("jax", "--parallel=fsdp under torchrun"),
    "remat": ("jax", "no activation checkpointing: lower --batch_size and raise "
                     "--gradient_accumulation_steps instead"),
    "scan_layers": ("jax", "nothing: it only changes how JAX compiles the blocks; drop the option"),
}


def check_backend_options(cfg: "Config", backend: str) -> None:
    """Refuse an option (or value) that only the other backend implements, naming the alternative."""
    flat = to_flat(cfg)
    for key, (owner, instead) in BACKEND_ONLY.items():
        if owner == backend:
            continue
        name, value = key if isinstance(key, tuple) else (key, None)
        if (flat[name] == value) if value is not None else (flat[name] != KEY_DEFAULT[name]):
            raise ConfigError(f"option '{name}={flat[name]}' is {owner}-only; the {backend} backend offers "
                              f"{instead}")


def opt(default: Any, help: str):
    """A schema field with its one-line --help text (shown by every entry point that takes it)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: sizes plus one name per component kind."""
    n_layer: int = opt(12, "transformer blocks")
    n_head: int = opt(12, "attention (query) heads; must divide n_embd")
    n_embd: int = opt(768, "model width (residual stream)")
    n_kv_head: int = opt(0, "key/value heads: 0 = n_head (multi-head), 1 = multi-query, else grouped-query")
    block_size: int = opt(1024, "context length in tokens")
    vocab_size: int = opt(50304, "embedding rows; follows the data's vocabulary (padded to a multiple of 64) unless set")
    normalization: str = opt("layernorm", "norm layer (layernorm_nobias: no bias, nanoGPT's bias=False)")
    norm_eps: float = opt(1e-5, "epsilon of every norm")
    activation: str = opt("gelu", "FFN activation (gelu is exact, erf; gelu_tanh is GPT-2's tanh approximation); "
                                           "the gate of ffn_type=glu")
    position_encoding: str = opt("learned_absolute", "positions: a learned table, rotary, ALiBi biases or none")
    rope_theta: float = opt(10000.0, "RoPE base frequency")
    attention_backend: str = opt("sdpa", "attention kernel: sdpa (fused/flash where available) or manual")
    qk_norm: bool = opt(False, "normalize q and k per head (over head_dim) with `normalization`")
    norm_position: str = opt("pre", "norm before each sub-block (pre, plus a final norm) or after it (post)")
    ffn_type: str = opt("standard", "FFN: standard (4x), swiglu (8/3x, SiLU gate) or glu (gate = activation)")
    ffn_hidden: int = opt(0, "FFN hidden size; 0 = 4 x n_embd (standard) or 8/3 x n_embd rounded up to 32 (gated)")
    bias: bool = opt(True, "biases in linear layers")
    weight_tying: bool = opt(True, "tie the LM head to the token embedding")
    dropout: float = opt(0.0, "dropout probability (embeddings, attention, residual branches)")
    init_std: float = opt(0.02, "std of the normal init of weights (residual projections scaled by 1/sqrt(2 n_layer))")

    # -- derived fields (computed from the frozen fields; never stored) --
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used (n_kv_head, with 0 meaning n_head)."""
        return self.n_kv_head or self.n_head

    @property
    def qkv_size(self) -> int:
        """Output width of attn.qkv: [q (n_head*hd) | k (kv_heads*hd) | v (kv_heads*hd)]."""
        return (self.n_head + 2 * self.kv_heads) * self.head_dim

    @property
    def gated(self) -> bool:
        return self.ffn_type in ("swiglu", "glu")

    @property
    def ffn_hidden_size(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.gated:
            return FFN_MULTIPLE_OF * math.ceil(8 * self.n_embd / 3 / FFN_MULTIPLE_OF)
        return 4 * self.n_embd

    @property
    def ffn_activation(self) -> str:
        """The activation the FFN applies: swiglu always gates with silu; glu/standard use `activation`."""
        return "silu" if self.ffn_type == "swiglu" else self.activation

    @property
    def final_norm(self) -> bool:
        """Pre-norm stacks end with a final norm; post-norm outputs are already normalized."""
        return self.norm_position == "pre"

    @property
    def norm_has_bias(self) -> bool:
        return self.normalization == "layernorm"


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, data, evaluation, logging and checkpointing."""
    batch_size: int = opt(12, "sequences per micro step, the global batch over all processes and devices")
    gradient_accumulation_steps: int = opt(1, "micro steps per optimizer step")
    learning_rate: float = opt(6e-4, "peak learning rate (AdamW)")
    min_lr: float = opt(6e-5, "learning rate at the end of the cosine decay")
    warmup_iters: int = opt(100, "linear warmup iterations; unset, at most 10% of max_iters")
    lr_decay_iters: int = opt(5000, "iteration where the cosine decay reaches min_lr; unset, it follows max_iters")
    max_iters: int = opt(5000, "optimizer steps of the run")
    weight_decay: float = opt(0.1, "AdamW decoupled weight decay, on matrices and embeddings only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    adam_eps: float = opt(1e-8, "AdamW epsilon (outside the square root)")
    grad_clip: float = opt(1.0, "clip gradients to this global norm; 0 disables clipping")
    eval_interval: int = opt(250, "evaluate and checkpoint every N iterations and at the end; 0 = never "
                                  "(a stop signal still saves a checkpoint)")
    eval_iters: int = opt(20, "batches per split in each evaluation")
    log_interval: int = opt(10, "log (and print) every N iterations")
    seed: int = opt(1337, "seed of the initial weights, the batches and dropout")
    dtype: str = opt("float32", "float32, bfloat16 (mixed precision, float32 master weights) or float16 (torch only)")
    compile: bool = opt(False, "torch.compile the model (torch; JAX always compiles)")
    dataset: str = opt("shakespeare_char", "prepared dataset name under data_dir (python -m modgpt.prepare)")
    data_dir: str = opt("data", "directory holding prepared datasets")
    out_dir: str = opt("", "run directory; empty = runs/<time>-<backend>-<arch>")
    init_from: str = opt("scratch", "scratch, resume (the run in out_dir), nanogpt:PATH (a nanoGPT ckpt.pt), "
                                    "hf:NAME_OR_DIR (a transformers GPT-2 or Llama model; gpt2 = hf:gpt2) "
                                    "or FILE.safetensors (a canonical weights file)")
    keep_checkpoints: int = opt(3, "newest checkpoints kept")
    skip_nonfinite: bool = opt(False, "skip steps with a non-finite loss or gradient instead of stopping")
    progress: bool = opt(True, "a progress bar on a terminal (plain lines with an ETA otherwise)")
    sample_at_end: bool = opt(True, "print a short seeded sample from the final weights")
    eval_tasks: str = opt("", "multiple-choice tasks scored at each evaluation, comma-separated (hellaswag)")
    eval_tasks_input: str = opt("", "the task's data file (default: downloaded once into data_dir/<task>/)")
    eval_tasks_limit: int = opt(0, "score only the first N items of each task at each evaluation; 0 = all")
    wandb: bool = opt(False, "log to Weights & Biases (pip install 'modgpt[track]'); WANDB_MODE=offline "
                             "writes the run locally for `wandb sync`")
    wandb_project: str = opt("modgpt", "W&B project")
    wandb_entity: str = opt("", "W&B entity (team or user); empty = your default")
    wandb_run_name: str = opt("", "W&B run name; empty = the architecture name")
    wandb_tags: str = opt("", "W&B tags, comma-separated")
    tensorboard: bool = opt(False, "write TensorBoard event files (pip install 'modgpt[track]')")
    tensorboard_dir: str = opt("", "TensorBoard log directory; empty = out_dir/tensorboard")


@dataclass(frozen=True)
class SystemConfig:
    """Where and how it runs: device, parallelism, memory/compile knobs, hardware peak override."""
    device: str = opt("auto", "auto (an accelerator when there is one), cpu, or cuda/gpu")
    size: str = opt("auto", "a named size (sets n_layer, n_head, n_embd, block_size); auto = a CPU-sized "
                            "model and budget on a machine without an accelerator; none = the options as given")
    parallel: str = opt("none", "torch under torchrun: ddp, zero1 (sharded optimizer state) or fsdp")
    mesh_data: int = opt(-1, "JAX mesh: data-parallel devices; -1 = all remaining")
    mesh_fsdp: int = opt(1, "JAX mesh: devices that shard parameters and optimizer state (FSDP)")
    remat: bool = opt(False, "JAX: recompute each block's activations in the backward pass (less memory)")
    scan_layers: bool = opt(False, "JAX: nnx.scan over the blocks (faster compiles of deep models)")
    peak_tflops: float = opt(0.0, "peak TFLOP/s per device for MFU; 0 = look the device up")
    kernels: str = opt("auto", "auto: the faster kernels measured on this platform (listed in the report); "
                               "reference: the plain model only")


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "system": SystemConfig}


@dataclass(frozen=True)
class Config:
    """Everything one run needs; passed whole into constructors."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def replace(self, **flat: Any) -> "Config":
        """A copy with flat keys (e.g. n_layer=4, dtype="bfloat16") changed, then validated."""
        return from_flat({**to_flat(self), **flat})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Flat key index: every option name is unique across sections, so `--n_layer=4` is unambiguous.
KEY_SECTION: dict[str, str] = {}
KEY_TYPE: dict[str, type] = {}
KEY_DEFAULT: dict[str, Any] = {}
KEY_HELP: dict[str, str] = {}
for _sec, _cls in SECTIONS.items():
    _defaults = _cls()
    for _f in fields(_cls):
        assert _f.name not in KEY_SECTION, f"duplicate option name {_f.name}"
        KEY_SECTION[_f.name] = _sec
        KEY_TYPE[_f.name] = type(getattr(_defaults, _f.name))
        KEY_DEFAULT[_f.name] = getattr(_defaults, _f.name)
        KEY_HELP[_f.name] = _f.metadata["help"]


def suggest(name: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def check_key(key: str) -> None:
    if key not in KEY_SECTION:
        raise ConfigError(f"unknown option '{key}'{suggest(key, KEY_SECTION)}; "
                          f"see `python -m modgpt.config --help` for the list")


def coerce(key: str, value: Any) -> Any:
    """Type-check (and convert strings from the command line) against the schema's type."""
    check_key(key)
    want = KEY_TYPE[key]
    if isinstance(value, str) and want is not str:
        return parse_str(key, value, want)
    if want is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"option '{key}' must be True or False, got {value!r}")
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"option '{key}' must be an integer, got {value!r}")
        return value
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"option '{key}' must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"option '{key}' must be a string, got {value!r}")
    return value


def parse_str(key: str, text: str, want: type) -> Any:
    if want is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"option '{key}' must be True or False, got '{text}'")
    try:
        if want is int:
            f = float(text)
            if not f.is_integer():
                raise ValueError
            return int(f)
        return float(text)
    except ValueError:
        kind = "an integer" if want is int else "a number"
        raise ConfigError(f"option '{key}' must be {kind}, got '{text}'") from None


def to_flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sec in SECTIONS:
        out.update(dataclasses.asdict(getattr(cfg, sec)))
    return out


def from_flat(flat: dict[str, Any]) -> Config:
    """Build and validate a Config from flat keys (missing keys take the defaults)."""
    parts: dict[str, dict[str, Any]] = {sec: {} for sec in SECTIONS}
    for key, value in flat.items():
        parts[KEY_SECTION[key] if key in KEY_SECTION else check_key(key)][key] = coerce(key, value)
    cfg = Config(**{sec: SECTIONS[sec](**kw) for sec, kw in parts.items()})
    validate(cfg)
    return cfg


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of Config.to_dict (sections of keys); unknown sections or keys are errors."""
    flat: dict[str, Any] = {}
    for sec, kw in d.items():
        if sec not in SECTIONS:
            raise ConfigError(f"unknown config section '{sec}'{suggest(sec, SECTIONS)}; "
                              f"valid sections: {', '.join(SECTIONS)}")
        for key, value in kw.items():
            check_key(key)
            if KEY_SECTION[key] != sec:
                raise ConfigError(f"option '{key}' belongs in section '{KEY_SECTION[key]}', not '{sec}'")
            flat[key] = value
    return from_flat(flat)


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


def load_json(path: str) -> Config:
    with open(path) as f:
        return from_json(f.read())


def _choice(key: str, value: str) -> None:
    if value not in CHOICES[key]:
        raise ConfigError(f"option '{key}' must be one of {', '.join(CHOICES[key])}; "
                          f"got '{value}'{suggest(value, CHOICES[key])}")


def validate(cfg: Config) -> None:
    """Raise ConfigError (one line) for the first problem found."""
    m, t, s = cfg.model, cfg.train, cfg.system
    for key in ("normalization", "activation", "position_encoding", "attention_backend",
                "norm_position", "ffn_type"):
        _choice(key, getattr(m, key))
    _choice("dtype", t.dtype)
    _choice("parallel", s.parallel)
    _choice("device", s.device)
    _choice("kernels", s.kernels)
    from modgpt.presets import SIZES  # local import: presets imports this module
    if s.size not in CHOICES["size"] and s.size not in SIZES:
        valid = list(CHOICES["size"]) + list(SIZES)
        raise ConfigError(f"option 'size' must be one of {', '.join(valid)}; got '{s.size}'"
                          f"{suggest(s.size, valid)}")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size",
                "gradient_accumulation_steps", "eval_iters", "log_interval", "keep_checkpoints"):
        sec = getattr(cfg, KEY_SECTION[key])
        if getattr(sec, key) < 1:
            raise ConfigError(f"option '{key}' must be >= 1, got {getattr(sec, key)}")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "ffn_hidden", "seed", "n_kv_head", "eval_interval"):
        sec = getattr(cfg, KEY_SECTION[key])
        if getattr(sec, key) < 0:
            raise ConfigError(f"option '{key}' must be >= 0, got {getattr(sec, key)}")
    if m.n_embd % m.n_head:
        raise ConfigError(f"n_embd ({m.n_embd}) must be divisible by n_head ({m.n_head})")
    if m.n_head % m.kv_heads:
        valid = ", ".join(str(d) for d in range(1, m.n_head + 1) if m.n_head % d == 0)
        raise ConfigError(f"option 'n_kv_head' must divide n_head ({m.n_head}): got {m.n_kv_head}; "
                          f"valid: {valid} (0 = n_head)")
    if m.position_encoding == "rope" and m.head_dim % 2:
        raise ConfigError(f"position_encoding 'rope' needs an even head dim; "
                          f"n_embd/n_head = {m.n_embd}/{m.n_head} = {m.head_dim}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"option 'dropout' must be in [0, 1), got {m.dropout}")
    for key, val in (("norm_eps", m.norm_eps), ("rope_theta", m.rope_theta), ("init_std", m.init_std)):
        if not val > 0:
            raise ConfigError(f"option '{key}' must be > 0, got {val}")
    for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "adam_eps"):
        if getattr(t, key) < 0:
            raise ConfigError(f"option '{key}' must be >= 0, got {getattr(t, key)}")
    if t.min_lr > t.learning_rate:
        raise ConfigError(f"min_lr ({t.min_lr}) must not exceed learning_rate ({t.learning_rate})")
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(t, key) < 1.0:
            raise ConfigError(f"option '{key}' must be in [0, 1), got {getattr(t, key)}")
    if s.peak_tflops < 0:
        raise ConfigError(f"option 'peak_tflops' must be >= 0 (0 = look up the device), got {s.peak_tflops}")
    for key in ("mesh_data", "mesh_fsdp"):
        v = getattr(s, key)
        if v == 0 or v < -1:
            raise ConfigError(f"option '{key}' must be a positive device count or -1 (all remaining), got {v}")
    if s.mesh_data == -1 and s.mesh_fsdp == -1:
        raise ConfigError("only one of mesh_data and mesh_fsdp may be -1")
    init = t.init_from
    if not (init in ("scratch", "resume") or init.startswith(("nanogpt:", "hf:")) or init.endswith(".safetensors")
            or init in HF_NANOGPT_NAMES):
        raise ConfigError(f"option 'init_from' must be scratch, resume, nanogpt:PATH, hf:NAME_OR_DIR, "
                          f"{', '.join(HF_NANOGPT_NAMES)} or FILE.safetensors; got '{init}'")
    if not t.dataset:
        raise ConfigError("option 'dataset' must not be empty")
    tasks = [x.strip() for x in t.eval_tasks.split(",") if x.strip()]
    for name in tasks:
        if name not in CHOICES["task"]:
            raise ConfigError(f"option 'eval_tasks': unknown task '{name}'{suggest(name, CHOICES['task'])}; "
                              f"known: {', '.join(CHOICES['task'])}")
    if t.eval_tasks_input and len(tasks) != 1:
        raise ConfigError("option 'eval_tasks_input' is the data file of one task: set eval_tasks to that task")
    if t.eval_tasks_limit < 0:
        raise ConfigError(f"option 'eval_tasks_limit' must be >= 0 (0 = all items), got {t.eval_tasks_limit}")


# ---------------------------------------------------------------------------------------------
# Names and the summary tree.
_POS = {"learned_absolute": "Learned", "rope": "RoPE", "alibi": "ALiBi", "none": "NoPE"}
_NORM = {"layernorm": "LN", "layernorm_nobias": "LNnb", "rmsnorm": "RMS"}
_ACT = {"gelu": "GELU", "gelu_tanh": "GELUTanh", "silu": "SiLU", "relu": "ReLU", "leaky_relu": "LeakyReLU"}
_GLU = {"gelu": "GeGLU", "gelu_tanh": "GeGLUTanh", "silu": "SwiGLU", "relu": "ReGLU", "leaky_relu": "LeakyGLU"}
# (a name missing from these label tables appears in architecture names as itself)


def ffn_label(m: ModelConfig) -> str:
    return _GLU.get(m.ffn_activation, m.ffn_activation + "GLU") if m.gated else _ACT.get(m.activation, m.activation)


def attention_label(m: ModelConfig) -> str:
    """'' for multi-head attention, MQA for one key/value head, GQA<n_kv> for grouped-query."""
    if m.kv_heads == m.n_head:
        return ""
    return "MQA" if m.kv_heads == 1 else f"GQA{m.kv_heads}"


def arch_name(m: ModelConfig) -> str:
    """e.g. 12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm; flags that differ between runs are appended."""
    parts = [f"{m.n_layer}L", f"{m.n_head}H", f"{m.n_embd}D", _POS.get(m.position_encoding, m.position_encoding),
             _NORM.get(m.normalization, m.normalization), ffn_label(m),
             "PreNorm" if m.norm_position == "pre" else "PostNorm"]
    if attention_label(m):
        parts.append(attention_label(m))
    if m.qk_norm:
        parts.append("QKNorm")
    if m.bias:
        parts.append("Bias")
    if m.weight_tying:
        parts.append("Tied")
    if m.attention_backend != "sdpa":
        parts.append(m.attention_backend.capitalize())
    if m.dropout:
        parts.append(f"Drop{m.dropout:g}")
    return "-".join(parts)


if __name__ == "__main__":
    from modgpt.commands import config_main
    raise SystemExit(config_main())
