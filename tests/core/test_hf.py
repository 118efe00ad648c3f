"""modgpt.hf without transformers: config mapping and refusals, safetensors reading (bfloat16,
shards), the export family rules, hf tokenizers in prepare with uint32 token files."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from modgpt import config as C
from modgpt import data as D
from modgpt import hf

GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 96, "n_embd": 32, "n_layer": 2,
        "n_head": 4, "n_positions": 256, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96, "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 8, "hidden_act": "silu", "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
         "rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"}, "attention_bias": False,
         "mlp_bias": False, "tie_word_embeddings": False}


def test_gpt2_config_maps_to_the_gpt2_preset_with_tanh_gelu():
    m = C.from_flat(hf.model_config(GPT2)).model
    assert C.arch_name(m) == "2L-4H-32D-Learned-LN-GELUTanh-PreNorm-Bias-Tied"
    assert (m.block_size, m.vocab_size, m.ffn_hidden_size, m.norm_eps) == (256, 96, 128, 1e-5)
    exact = C.from_flat(hf.model_config({**GPT2, "activation_function": "gelu", "n_inner": 48,
                                         "tie_word_embeddings": False})).model
    assert (exact.activation, exact.ffn_hidden_size, exact.weight_tying) == ("gelu", 48, False)


@pytest.mark.parametrize("rope", [{"rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"}},
                                  {"rope_theta": 5000.0, "rope_scaling": None}], ids=["transformers5", "transformers4"])
def test_llama_config_maps_gqa_theta_eps_and_head(rope):
    cfg = {k: v for k, v in LLAMA.items() if k != "rope_parameters"} | rope
    m = C.from_flat(hf.model_config(cfg)).model
    assert C.arch_name(m) == "2L-4H-32D-RoPE-RMS-SwiGLU-PreNorm-GQA2"
    assert (m.rope_theta, m.norm_eps, m.ffn_hidden_size, m.kv_heads, m.bias) == (5000.0, 1e-6, 64, 2, False)
    mistral = C.from_flat(hf.model_config({**cfg, "architectures": ["MistralForCausalLM"], "sliding_window": None,
                                           "hidden_act": "gelu_pytorch_tanh", "attention_bias": True,
                                           "mlp_bias": True})).model
    assert (mistral.ffn_type, mistral.activation, mistral.bias) == ("glu", "gelu_tanh", True)


@pytest.mark.parametrize("base, change, field", [
    (LLAMA, {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}, "rope_parameters.rope_type='llama3'"),
    (LLAMA, {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type='linear'"),
    (LLAMA, {"architectures": ["MistralForCausalLM"], "sliding_window": 4096}, "sliding_window=4096"),
    (LLAMA, {"architectures": ["Qwen2ForCausalLM"]}, "architectures=['Qwen2ForCausalLM']"),
    (LLAMA, {"hidden_act": "quick_gelu"}, "hidden_act='quick_gelu'"),
    (LLAMA, {"head_dim": 16}, "head_dim=16"),
    (LLAMA, {"attention_bias": True}, "mlp_bias=False"),
    (LLAMA, {"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    (GPT2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    (GPT2, {"activation_function": "gelu_10"}, "activation_function='gelu_10'"),
])
def test_what_modgpt_cannot_express_is_refused_naming_the_field(base, change, field):
    with pytest.raises(hf.HFError) as e:
        hf.model_config({**base, **change})
    msg = str(e.value)
    assert msg.startswith(f"transformers config {field}:") and "\n" not in msg, msg


@pytest.mark.parametrize("options, first", [
    (dict(preset="gpt2", norm_position="post"), "norm_position=post"),
    (dict(preset="llama", qk_norm=True), "qk_norm=True"),
    (dict(preset="gpt2", position_encoding="alibi"), "position_encoding=alibi"),
    (dict(preset="gpt2", normalization="rmsnorm"), "normalization=rmsnorm"),
    (dict(preset="gpt2", ffn_type="swiglu"), "ffn_type=swiglu"),
    (dict(preset="gpt2", n_kv_head=2), "n_kv_head=2"),
    (dict(preset="gpt2", bias=False), "bias=False"),
    (dict(preset="llama", normalization="layernorm"), "normalization=layernorm"),
    (dict(preset="llama", ffn_type="standard"), "ffn_type=standard"),
])
def test_export_refuses_the_first_option_without_an_hf_equivalent(options, first):
    from modgpt.presets import PRESETS
    flat = {**PRESETS[options.pop("preset")], "n_layer": 1, "n_head": 4, "n_embd": 32, **options}
    with pytest.raises(hf.HFError, match=f"^option '{first}' has no Hugging Face equivalent"):
        hf.export_family(C.from_flat(flat).model)


def _write_bf16(path, tensors):
    """A safetensors file of bfloat16 tensors, written by hand (numpy has no bfloat16)."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = (np.asarray(a, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_bfloat16_shards_read_exactly(tmp_path):
    """bfloat16 is widened exactly (the values are bf16-representable), shards are joined by their index."""
    rng = np.random.default_rng(0)
    want = {f"t{i}": (rng.standard_normal((3, 5)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
            for i in range(4)}
    _write_bf16(tmp_path / "model-1.safetensors", {k: want[k] for k in ("t0", "t1")})
    _write_bf16(tmp_path / "model-2.safetensors", {k: want[k] for k in ("t2", "t3")})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"t0": "model-1.safetensors", "t1": "model-1.safetensors", "t2": "model-2.safetensors",
                        "t3": "model-2.safetensors"}}))
    got = hf.read_tensors(str(tmp_path))
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float32 and got[k].flags.writeable
        np.testing.assert_array_equal(got[k], want[k])
    os.unlink(tmp_path / "model-2.safetensors")
    with pytest.raises(hf.HFError, match="shard 'model-2.safetensors' named by the index is missing"):
        hf.read_tensors(str(tmp_path))


def test_locate_names_a_missing_directory_and_needs_a_name():
    with pytest.raises(hf.HFError, match="^hf:./nowhere: no such directory"):
        hf.locate("./nowhere")
    with pytest.raises(hf.HFError, match="needs a Hub name or a directory"):
        hf.locate("")
    assert hf.spec_of("gpt2-medium") == "gpt2-medium" and hf.spec_of("hf:org/m") == "org/m"
    assert hf.spec_of("scratch") is None


def _big_word_tokenizer(directory, n_words: int, text: str) -> int:
    """A word-level tokenizer.json whose vocabulary passes uint16 (filler words w0..w{n}); returns its size."""
    tokenizers = pytest.importorskip("tokenizers")
    words = sorted(set(text.split()))
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    for i in range(n_words):
        vocab.setdefault(f"w{i}", len(vocab))
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    return len(vocab)


def test_hf_tokenizer_writes_uint32_tokens_that_the_sampler_reads(tmp_path, shakespeare_path):
    """--tokenizer hf:DIR: past 65,535 ids the token files are uint32; meta says so, the tokenizer's
    files are copied beside the data, and batches carry the large ids."""
    from modgpt.prepare import prepare
    text = open(shakespeare_path, encoding="utf-8").read()[:20000]
    vocab = _big_word_tokenizer(tmp_path / "tok", 70000, text)
    src = tmp_path / "in.jsonl"
    lines = [p for p in text.split("\n\n") if p.strip()] + ["w69999 w65536 " * 20] * 20
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    out = prepare("text", [str(src)], f"hf:{tmp_path / 'tok'}", str(tmp_path / "data"), 0.5, progress=False,
                  workers=1)
    meta = D.load_meta(out)
    assert (meta["tokenizer"], meta["token_dtype"], meta["vocab_size"]) == ("hf", "uint32", vocab) and vocab > 65536
    assert meta["eot_token"] == 1  # its </s> ends each document
    val_files = [os.path.join(out, s["file"]) for s in meta["shards"]["val"]]
    assert sum(os.path.getsize(f) for f in val_files) == 4 * meta["val_tokens"]
    tok = D.get_tokenizer(meta, out)
    big = tok.encode("w69999 w65536")
    assert min(big) > 65535 and tok.decode(big) == "w69999 w65536"
    s = D.BatchSampler(out, block_size=16, batch_size=64, seed=0)
    x, _ = s.get("val", 0)
    assert x.max() > 65535 and set(np.unique(x)) <= set(range(vocab))
    # a file of the wrong size for its type is caught
    with open(val_files[0], "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(D.DataError, match="uint32 tokens"):
        D.BatchSampler(out, block_size=16, batch_size=4, seed=0)


def test_prepare_refuses_a_tokenizer_without_tokenizer_json(tmp_path, shakespeare_path):
    from modgpt.prepare import main
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{}")
    code = main(["text", "--input", shakespeare_path, "--tokenizer", f"hf:{tmp_path / 'tok'}",
                 "--data_dir", str(tmp_path / "data"), "--no_progress"])
    assert code == 2 and not (tmp_path / "data" / "text" / "meta.json").exists()


def test_an_unreachable_hub_name_is_one_line_naming_what_to_do(tmp_path):
    """Offline (HF_HUB_OFFLINE, an empty cache), a Hub name fails in one line that says how to get the
    files onto this machine; nothing is downloaded or written."""
    import subprocess
    import sys
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    code = "from modgpt import hf\ntry:\n    hf.locate('someorg/somemodel')\nexcept hf.HFError as e:\n    print(e)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = r.stdout.strip()
    pytest.importorskip("huggingface_hub")
    assert line.startswith("could not fetch hf:someorg/somemodel from the Hugging Face Hub (") and "\n" not in line
    assert line.endswith("offline, download it where there is network (`hf download someorg/somemodel`), copy the "
                         "directory here and pass hf:/path/to/it"), line
