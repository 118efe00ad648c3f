"""Hugging Face transformers checkpoints <-> modgpt's canonical tensors and config, in numpy.

Two families, each one table between canonical names and transformers' names:

    GPT2LMHeadModel   learned positions, LayerNorm, 4x MLP with biases (the gpt2 preset). Conv1D
                      weights are stored (in, out), as canonical ones are; only lm_head transposes.
    LlamaForCausalLM  RoPE, RMSNorm, gated MLP, optional grouped-query attention and biases (the
                      llama preset); MistralForCausalLM without a sliding window is the same model.
                      q/k/v are three nn.Linear (out, in) matrices: canonical attn.qkv is their
                      transposes side by side. Both use the half-split rotary layout, so no row
                      permutation is needed.

Anything modgpt cannot express exactly is refused (HFError naming the field and its value).
transformers is not imported here: reading and writing is safetensors + JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np

from modgpt import weights as W
from modgpt.config import HF_NANOGPT_NAMES, ModelConfig

PREFIX = "hf:"
# nanoGPT's init_from='gpt2' habit: these names mean the Hub's checkpoints of the same name
NANOGPT_NAMES = HF_NANOGPT_NAMES
# what a download fetches: the config, the weights, the tokenizer; never pytorch_model.bin
HUB_PATTERNS = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                "merges.txt", "tokenizer.model", "generation_config.json"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model")
LLAMA_CLASSES = ("LlamaForCausalLM", "MistralForCausalLM")

# transformers' activation names -> modgpt's, for the functions that are the same math
# (gelu_fast is gelu_new's tanh formula with the constant factored out)
ACTIVATIONS_IN = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "gelu_python_tanh": "gelu_tanh", "relu": "relu", "silu": "silu",
                  "swish": "silu", "leaky_relu": "leaky_relu"}
ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "leaky_relu": "leaky_relu"}

# canonical block name -> (transformers names joined along the output axis, stored (out, in))
GPT2_BLOCK = {"norm1": ("ln_1",), "attn.qkv": ("attn.c_attn",), "attn.proj": ("attn.c_proj",),
              "norm2": ("ln_2",), "ffn.fc": ("mlp.c_fc",), "ffn.proj": ("mlp.c_proj",)}
LLAMA_BLOCK = {"norm1": ("input_layernorm",), "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "attn.proj": ("self_attn.o_proj",), "norm2": ("post_attention_layernorm",),
               "ffn.fc": ("mlp.up_proj",), "ffn.gate": ("mlp.gate_proj",), "ffn.proj": ("mlp.down_proj",)}
GPT2_TOP = {"wte": "transformer.wte", "wpe": "transformer.wpe", "norm_f": "transformer.ln_f", "lm_head": "lm_head"}
LLAMA_TOP = {"wte": "model.embed_tokens", "norm_f": "model.norm", "lm_head": "lm_head"}
# buffers some checkpoints carry that are not parameters
BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


class HFError(ValueError):
    """A checkpoint or config modgpt cannot read or express; the message is one line."""


# ---------------------------------------------------------------------------------------------
# Where the files are.

def spec_of(init_from: str) -> str | None:
    """The NAME_OR_DIR of an init_from value (hf:X, or one of nanoGPT's gpt2 names), else None."""
    if init_from.startswith(PREFIX):
        return init_from[len(PREFIX):]
    return init_from if init_from in NANOGPT_NAMES else None


def locate(spec: str) -> str:
    """A local directory for NAME_OR_DIR: the directory itself, or the Hub snapshot (downloaded
    through huggingface_hub when not cached)."""
    if not spec:
        raise HFError("hf: needs a Hub name or a directory, e.g. hf:gpt2 or hf:/path/to/model")
    if os.path.isdir(spec):
        return spec
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise HFError(f"hf:{spec}: no such directory (a Hub name looks like gpt2 or ORG/NAME)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HFError(f"hf:{spec} is a Hub name and huggingface_hub is not installed: pip install huggingface_hub "
                      f"(or pass a local directory)") from None
    try:
        return snapshot_download(spec, allow_patterns=HUB_PATTERNS)
    except Exception as e:  # offline, unknown repo, gated model: all say the same thing to do
        why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:200]
        raise HFError(f"could not fetch hf:{spec} from the Hugging Face Hub ({type(e).__name__}: {why}); offline, "
                      f"download it where there is network (`hf download {spec}`), copy the directory here and "
                      f"pass hf:/path/to/it") from None


def read_config(directory: str) -> dict:
    p = os.path.join(directory, "config.json")
    try:
        with open(p) as f:
            return json.load(f)
    except FileNotFoundError:
        raise HFError(f"'{directory}' has no config.json (not a transformers model directory)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise HFError(f"'{p}' is not readable JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# safetensors, read by hand: numpy has no bfloat16, and most Hub checkpoints are bfloat16.

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32 numpy (bfloat16 widened exactly)."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    except (OSError, ValueError, struct.error) as e:
        raise HFError(f"'{path}' is not a readable safetensors file ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise HFError(f"'{path}': tensor '{name}' has dtype {info['dtype']}; readable: {', '.join(_DTYPES)}")
        start, end = info["data_offsets"]
        a = raw[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = np.array(a, dtype=np.float32)  # a copy: the file's pages stay read-only
    return out


def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """The checkpoint's tensors: model.safetensors, or the shards its index names."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise HFError(f"'{index}' is not a safetensors index ({e})") from None
    elif os.path.isfile(os.path.join(directory, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        other = [f for f in ("pytorch_model.bin", "model.pt") if os.path.isfile(os.path.join(directory, f))]
        extra = f" (it has {other[0]}; save it with safe_serialization=True)" if other else ""
        raise HFError(f"'{directory}' has no model.safetensors or model.safetensors.index.json{extra}")
    out = {}
    for name in files:
        p = os.path.join(directory, name)
        if not os.path.isfile(p):
            raise HFError(f"'{directory}': shard '{name}' named by the index is missing")
        out.update(read_safetensors(p))
    return out


# ---------------------------------------------------------------------------------------------
# Config: transformers -> modgpt (refusing what modgpt cannot express) and back.

def _refuse(field: str, value, why: str) -> HFError:
    return HFError(f"transformers config {field}={value!r}: {why}; modgpt cannot express it exactly")


def _activation(field: str, value) -> str:
    if value not in ACTIVATIONS_IN:
        raise _refuse(field, value, f"no modgpt activation computes it (readable: {', '.join(ACTIVATIONS_IN)})")
    return ACTIVATIONS_IN[value]


def family(hf: dict) -> str:
    arch = (hf.get("architectures") or [None])[0]
    if arch == "GPT2LMHeadModel" or (arch is None and hf.get("model_type") == "gpt2"):
        return "gpt2"
    if arch in LLAMA_CLASSES or (arch is None and hf.get("model_type") in ("llama", "mistral")):
        return "llama"
    readable = ", ".join(("GPT2LMHeadModel",) + LLAMA_CLASSES)
    raise _refuse("architectures", hf.get("architectures"), f"not a family modgpt maps (readable: {readable})")


def model_config(hf: dict) -> dict:
    """Flat modgpt model options for a transformers config.json (dropout is the run's, not the file's)."""
    fam = family(hf)
    return _gpt2_config(hf) if fam == "gpt2" else _llama_config(hf)


def _gpt2_config(hf: dict) -> dict:
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if hf.get(key, want) != want:
            raise _refuse(key, hf[key], "a different attention than GPT-2's")
    D = hf["n_embd"]
    inner = hf.get("n_inner") or 4 * D
    return dict(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=D, n_kv_head=0, block_size=hf["n_positions"],
                vocab_size=hf["vocab_size"], normalization="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                activation=_activation("activation_function", hf.get("activation_function", "gelu_new")),
                position_encoding="learned_absolute", qk_norm=False, norm_position="pre", ffn_type="standard",
                ffn_hidden=0 if inner == 4 * D else inner, bias=True,
                weight_tying=bool(hf.get("tie_word_embeddings", True)))


def _rope_theta(hf: dict) -> float:
    """rope_theta from transformers 5's rope_parameters or 4's top-level fields; scaled RoPE refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for src, d in (("rope_parameters", params), ("rope_scaling", scaling)):
        kind = d.get("rope_type", d.get("type", "default"))
        if kind != "default":
            raise _refuse(f"{src}.rope_type", kind, "scaled rotary positions")
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise _refuse("partial_rotary_factor", factor, "rotary positions on part of each head")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _llama_config(hf: dict) -> dict:
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, D // H) or D % H:
        raise _refuse("head_dim", hf.get("head_dim"), f"heads narrower or wider than hidden_size/num_attention_heads "
                                                      f"= {D}/{H}")
    if hf.get("sliding_window") is not None and hf.get("use_sliding_window", True):
        raise _refuse("sliding_window", hf["sliding_window"], "sliding-window attention")
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise _refuse("mlp_bias", hf.get("mlp_bias", False), f"attention_bias={attn_bias} with a different mlp_bias "
                                                             f"(modgpt's bias is on every linear layer or none)")
    act = _activation("hidden_act", hf.get("hidden_act", "silu"))
    kv = hf.get("num_key_value_heads") or H
    return dict(n_layer=hf["num_hidden_layers"], n_head=H, n_embd=D, n_kv_head=0 if kv == H else kv,
                block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"], normalization="rmsnorm",
                norm_eps=hf.get("rms_norm_eps", 1e-6), activation=act,
                position_encoding="rope", rope_theta=_rope_theta(hf), qk_norm=False, norm_position="pre",
                ffn_type="swiglu" if act == "silu" else "glu", ffn_hidden=hf["intermediate_size"], bias=attn_bias,
                weight_tying=bool(hf.get("tie_word_embeddings", False)))


def export_family(m: ModelConfig) -> str:
    """'gpt2' or 'llama': the transformers class this architecture is; HFError naming the first option
    that has none."""
    def no(option: str, value, why: str) -> HFError:
        return HFError(f"option '{option}={value}' has no Hugging Face equivalent ({why}); export it with "
                       f"--format canonical")
    if m.norm_position != "pre":
        raise no("norm_position", m.norm_position, "GPT-2 and Llama are pre-norm")
    if m.qk_norm:
        raise no("qk_norm", m.qk_norm, "GPT-2 and Llama normalize neither q nor k")
    if m.position_encoding == "learned_absolute":
        if m.normalization != "layernorm":
            raise no("normalization", m.normalization, "learned positions export as GPT-2, which uses LayerNorm with bias")
        if m.ffn_type != "standard":
            raise no("ffn_type", m.ffn_type, "learned positions export as GPT-2, whose MLP is not gated")
        if m.kv_heads != m.n_head:
            raise no("n_kv_head", m.n_kv_head, "GPT-2 has no grouped-query attention")
        if not m.bias:
            raise no("bias", m.bias, "GPT-2's linear layers all have biases")
        return "gpt2"
    if m.position_encoding == "rope":
        if m.normalization != "rmsnorm":
            raise no("normalization", m.normalization, "rotary positions export as Llama, which uses RMSNorm")
        if not m.gated:
            raise no("ffn_type", m.ffn_type, "rotary positions export as Llama, whose MLP is gated")
        if m.ffn_activation not in ACTIVATIONS_OUT:
            raise no("activation", m.ffn_activation, "transformers has no such activation")
        return "llama"
    raise no("position_encoding", m.position_encoding, "transformers' GPT-2 and Llama use learned or rotary positions")


def hf_config(m: ModelConfig, dropout: float = 0.0, special: dict | None = None) -> dict:
    """transformers config.json for a model export_family accepts (special: bos/eos token ids)."""
    fam = export_family(m)
    # transformers' GPT-2 defaults both to 50256, which a smaller vocabulary does not have
    special = {"bos_token_id": None, "eos_token_id": None, **(special or {})}
    if fam == "gpt2":
        F = m.ffn_hidden_size
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
                "n_positions": m.block_size, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head,
                "n_inner": None if F == 4 * m.n_embd else F, "activation_function": ACTIVATIONS_OUT[m.activation],
                "layer_norm_epsilon": m.norm_eps, "resid_pdrop": dropout, "embd_pdrop": dropout,
                "attn_pdrop": dropout, "initializer_range": m.init_std, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "tie_word_embeddings": m.weight_tying, "use_cache": True, "torch_dtype": "float32", **special}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": m.vocab_size,
            "hidden_size": m.n_embd, "intermediate_size": m.ffn_hidden_size, "num_hidden_layers": m.n_layer,
            "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim,
            "hidden_act": ACTIVATIONS_OUT[m.ffn_activation], "max_position_embeddings": m.block_size,
            "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_theta, "rope_scaling": None,
            "attention_bias": m.bias, "mlp_bias": m.bias, "attention_dropout": 0.0, "pretraining_tp": 1,
            "initializer_range": m.init_std, "tie_word_embeddings": m.weight_tying, "use_cache": True,
            "torch_dtype": "float32", **special}


# ---------------------------------------------------------------------------------------------
# Tensors: one table per family, read in both directions.

def table(m: ModelConfig, fam: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    """canonical name -> (transformers names concatenated along the output axis, transposed?)."""
    top, block, prefix = (GPT2_TOP, GPT2_BLOCK, "transformer.h") if fam == "gpt2" else \
        (LLAMA_TOP, LLAMA_BLOCK, "model.layers")
    out = {}
    for name in W.canonical_shapes(m):
        head, _, leaf = name.rpartition(".")
        if head.startswith("blocks."):
            _, i, part = head.split(".", 2)
            hf_names = tuple(f"{prefix}.{i}.{n}.{leaf}" for n in block[part])
        else:
            hf_names = (f"{top[head]}.{leaf}",)
        # GPT-2's Conv1D keeps (in, out) like the canonical format; every nn.Linear is (out, in)
        transposed = W.is_matrix(name) and (fam == "llama" or head == "lm_head")
        out[name] = (hf_names, transposed)
    return out


def _normalize(tensors: dict, fam: str) -> dict:
    """Drop buffers; the Hub's original gpt2 files name GPT2Model's tensors without 'transformer.'."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(BUFFERS):
            continue
        if fam == "gpt2" and not k.startswith(("transformer.", "lm_head.")):
            k = "transformer." + k
        out[k] = v
    return out


def to_canonical(tensors: dict, m: ModelConfig, fam: str, source: str) -> dict[str, np.ndarray]:
    tensors = _normalize(tensors, fam)
    if m.weight_tying:
        tensors.pop("lm_head.weight", None)  # a tied head is the embedding, whatever the file holds
    out, used = {}, set()
    for name, (hf_names, transposed) in table(m, fam).items():
        missing = [n for n in hf_names if n not in tensors]
        if missing:
            raise HFError(f"{source}: missing tensor '{missing[0]}' for canonical '{name}'")
        parts = [tensors[n].T if transposed else tensors[n] for n in hf_names]
        out[name] = np.ascontiguousarray(np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0])
        used.update(hf_names)
    extra = sorted(set(tensors) - used)
    if extra:
        raise HFError(f"{source}: tensor '{extra[0]}' has no place in this architecture ({len(extra)} unused in all)")
    W.check_tensors(m, out, source)
    return out


def from_canonical(tensors: dict, m: ModelConfig) -> dict[str, np.ndarray]:
    fam = export_family(m)
    out = {}
    for name, (hf_names, transposed) in table(m, fam).items():
        t = np.asarray(tensors[name], dtype=np.float32)
        widths = [m.n_embd if n.endswith(("q_proj.weight", "q_proj.bias")) else m.kv_heads * m.head_dim
                  for n in hf_names]
        parts = np.split(t, np.cumsum(widths)[:-1], axis=-1) if len(hf_names) > 1 else [t]
        for n, p in zip(hf_names, parts):
            out[n] = np.ascontiguousarray(p.T if transposed else p)
    return out


def load(spec: str, crop_block_size: int | None = None) -> tuple[dict[str, np.ndarray], dict, str]:
    """(canonical tensors, flat model options, local directory) of hf:NAME_OR_DIR. A smaller
    crop_block_size keeps the first rows of a learned position table (nanoGPT's crop_block_size)."""
    directory = locate(spec)
    hf = read_config(directory)
    flat = model_config(hf)
    m = ModelConfig(**flat)
    tensors = to_canonical(read_tensors(directory), m, family(hf), f"hf:{spec}")
    if crop_block_size is not None and crop_block_size < m.block_size:
        if "wpe.weight" in tensors:
            tensors["wpe.weight"] = np.ascontiguousarray(tensors["wpe.weight"][:crop_block_size])
        flat = {**flat, "block_size": crop_block_size}
    return tensors, flat, directory


# ---------------------------------------------------------------------------------------------
# The exported directory.

def write_dir(to: str, tensors: dict, m: ModelConfig, dropout: float = 0.0, tokenizer=None,
              overwrite: bool = False) -> list[str]:
    """Write a transformers model directory atomically (built beside `to`, then renamed into place).
    tokenizer: a callable that writes tokenizer files into a directory and returns bos/eos ids, or None.
    Returns the file names written."""
    from safetensors.numpy import save_file

    from modgpt.io import fsync_dir, write_json
    m_hf = from_canonical(tensors, m)
    parent = os.path.dirname(os.path.abspath(to))
    tmp = os.path.join(parent, f".{os.path.basename(to)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        special = tokenizer(tmp) if tokenizer else {}
        save_file(m_hf, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), hf_config(m, dropout, special))
        files = sorted(os.listdir(tmp))
        old = None
        if os.path.exists(to):
            if not overwrite:
                raise HFError(f"'{to}' exists; pass --overwrite to replace it")
            old = os.path.join(parent, f".{os.path.basename(to)}.old-{os.getpid()}")
            os.replace(to, old)
        os.replace(tmp, to)
        fsync_dir(parent)
        if old:
            shutil.rmtree(old) if os.path.isdir(old) else os.unlink(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def copy_tokenizer(src_dir: str):
    """A `tokenizer` for write_dir copying a transformers tokenizer's files (None if it has none)."""
    files = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(src_dir, f))]
    if not files:
        return None

    def write(dst: str) -> dict:
        for f in files:
            shutil.copyfile(os.path.join(src_dir, f), os.path.join(dst, f))
        return special_ids(src_dir)
    return write


def special_ids(src_dir: str) -> dict:
    """bos/eos token ids of a model directory's config.json, when it has them."""
    try:
        hf = read_config(src_dir)
    except HFError:
        return {}
    return {k: hf[k] for k in ("bos_token_id", "eos_token_id") if hf.get(k) is not None}


def _merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The last merge that builds token: run byte-pair merging on its bytes with the merges ranked
    below it until two parts are left."""
    parts = [token[i:i + 1] for i in range(len(token))]
    limit = ranks[token]
    while len(parts) > 2:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise HFError(f"token {token!r} is not a merge of two tokens")
    return parts[0], parts[1]


def gpt2_tokenizer(model_max_length: int):
    """A `tokenizer` for write_dir writing GPT-2's vocab.json and merges.txt, rebuilt from tiktoken's
    ranks (no download), plus the tokenizer config transformers reads."""
    def write(dst: str) -> dict:
        from modgpt.data import GPT2Tokenizer
        from modgpt.io import write_json, write_text
        enc = GPT2Tokenizer()
        ranks = enc.enc._mergeable_ranks
        from modgpt.data import byte_chars
        chars = byte_chars()

        def text(b: bytes) -> str:
            return "".join(chars[x] for x in b)
        vocab = {text(b): r for b, r in ranks.items()}
        eot = "<|endoftext|>"
        vocab[eot] = enc.EOT
        merges = [_merge_of(b, ranks) for b, r in sorted(ranks.items(), key=lambda kv: kv[1]) if len(b) > 1]
        write_json(os.path.join(dst, "vocab.json"), vocab)
        write_text(os.path.join(dst, "merges.txt"), "#version: 0.2\n" + "".join(f"{text(a)} {text(b)}\n" for a, b in merges))
        special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
        write_json(os.path.join(dst, "special_tokens_map.json"), special)
        write_json(os.path.join(dst, "tokenizer_config.json"), {"tokenizer_class": "GPT2Tokenizer", **special,
                   "add_prefix_space": False, "model_max_length": model_max_length})
        return {"bos_token_id": enc.EOT, "eos_token_id": enc.EOT}
    return write


def run_tokenizer(cfg) -> tuple:
    """(tokenizer writer or None, one line saying which) for a run's export: the tokenizer of the
    data it trained on, else that of the hf: model it started from."""
    from modgpt import data as D
    path = D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
    try:
        meta = D.load_meta(path)
    except D.DataError:
        meta = None
    if meta is not None and meta["tokenizer"] == "gpt2":
        return gpt2_tokenizer(cfg.model.block_size), "tokenizer: GPT-2 BPE (the run's data), rebuilt from tiktoken's ranks"
    if meta is not None and meta["tokenizer"] == "hf":
        write = copy_tokenizer(os.path.join(path, D.TOKENIZER_DIR))
        if write is not None:
            return write, f"tokenizer: {meta.get('tokenizer_source', 'hf')} (the run's data), copied"
    if meta is not None and meta["tokenizer"] == "char":
        return None, (f"tokenizer: none written: the run's data ({path}) is char-level, which transformers has no "
                      f"tokenizer for; map characters with its meta.json")
    spec = spec_of(cfg.train.init_from)
    if spec is not None:
        try:
            write = copy_tokenizer(locate(spec))
        except HFError:
            write = None
        if write is not None:
            return write, f"tokenizer: hf:{spec}'s (the model the run started from), copied"
    return None, (f"tokenizer: none written: no tokenizer is known for this run (its data '{path}' is not "
                  f"readable here); copy one into the directory before loading it with AutoTokenizer")
