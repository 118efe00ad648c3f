"""Hugging Face transformers models in and out of both backends (--init_from=hf:DIR, export
--format hf), checked against transformers itself: tiny random models saved with save_pretrained,
imported into each backend with transformers' logits (TOL["logits"], fp32, T = 256), exported back
so that transformers loads them with no missing or unused weight and the same logits, and a
modgpt-trained run carried through the Hugging Face format into the other backend bit for bit."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from modgpt import config as C
from modgpt import hf
from modgpt import weights as W
from parity_tests import compare as X

transformers = pytest.importorskip("transformers")
V, T = 96, 256


def _models():
    """name -> (transformers model class, config): GPT-2 tied with its tanh GELU and untied with exact
    GELU and a non-default MLP width; Llama grouped-query with rope_theta 5000 and eps 1e-6, tied;
    Llama untied with biases and a tanh-GELU gate; Mistral (no sliding window) as Llama."""
    tf = transformers
    small = dict(vocab_size=V)
    return {
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(**small, n_embd=32, n_layer=2, n_head=4, n_positions=T)),
        "gpt2-untied-gelu": (tf.GPT2LMHeadModel, tf.GPT2Config(**small, n_embd=32, n_layer=2, n_head=4, n_positions=T,
                                                               n_inner=48, activation_function="gelu",
                                                               tie_word_embeddings=False)),
        "llama-gqa": (tf.LlamaForCausalLM, tf.LlamaConfig(**small, hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2, rope_theta=5000.0, rms_norm_eps=1e-6,
                                                          max_position_embeddings=T, tie_word_embeddings=True)),
        "llama-bias-untied": (tf.LlamaForCausalLM, tf.LlamaConfig(**small, hidden_size=32, intermediate_size=48,
                                                                  num_hidden_layers=2, num_attention_heads=4,
                                                                  max_position_embeddings=T, attention_bias=True,
                                                                  mlp_bias=True, hidden_act="gelu_pytorch_tanh",
                                                                  tie_word_embeddings=False)),
        "mistral": (tf.MistralForCausalLM, tf.MistralConfig(**small, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=1, sliding_window=None,
                                                            max_position_embeddings=T, tie_word_embeddings=False)),
    }


ARCH = {"gpt2": "2L-4H-32D-Learned-LN-GELUTanh-PreNorm-Bias-Tied", "gpt2-untied-gelu": "2L-4H-32D-Learned-LN-GELU-PreNorm-Bias",
        "llama-gqa": "2L-4H-32D-RoPE-RMS-SwiGLU-PreNorm-GQA2-Tied", "llama-bias-untied": "2L-4H-32D-RoPE-RMS-GeGLUTanh-PreNorm-Bias",
        "mistral": "2L-4H-32D-RoPE-RMS-SwiGLU-PreNorm-MQA"}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """name -> (directory of the saved model, the model in eval mode). Every parameter (norm weights
    included) is drawn N(0, 0.2), so a wrong mapping of any tensor shows in the logits."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (name, (cls, cfg)) in enumerate(_models().items()):
        torch.manual_seed(i)
        model = cls(cfg).eval()
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        model.save_pretrained(root / name)
        out[name] = (str(root / name), model)
    return out


def _tokens():
    return torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(7))


def _hf_logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(x).logits.numpy()


def _modgpt_logits(m: C.ModelConfig, tensors: dict, x) -> dict[str, np.ndarray]:
    import jax.numpy as jnp

    from modgpt_jax.model import build
    from modgpt_jax.weights import load_canonical as jax_load
    from modgpt_torch.model import GPT
    from modgpt_torch.weights import load_canonical as torch_load
    with torch.no_grad():
        tm = GPT(m).eval()
        torch_load(tm, tensors)
        got_torch = tm(x)[0].numpy()
    jm = build(m, seed=3)
    jax_load(jm, tensors)
    return {"torch": got_torch, "jax": np.asarray(jm(jnp.asarray(x.numpy(), dtype=jnp.int32))[0])}


@pytest.mark.parametrize("name", list(ARCH))
def test_import_computes_transformers_logits_in_both_backends(hf_dirs, name):
    directory, model = hf_dirs[name]
    tensors, flat, _ = hf.load(directory)
    m = C.from_flat(flat).model
    assert C.arch_name(m) == ARCH[name]
    x = _tokens()
    want = _hf_logits(model, x)
    rows = [X.row(f"hf-{name}", f"logits.{b}", got, want, X.TOL["logits"])
            for b, got in _modgpt_logits(m, tensors, x).items()]
    assert all(r.passed for r in rows), X.format_table(rows)


@pytest.mark.parametrize("name", list(ARCH))
def test_export_loads_in_transformers_with_the_same_logits(hf_dirs, tmp_path, name):
    """transformers loads the export with no missing, unexpected or misshaped weight and computes the
    original model's logits; importing the export again gives the same tensors and config, bit for bit."""
    directory, model = hf_dirs[name]
    tensors, flat, _ = hf.load(directory)
    m = C.from_flat(flat).model
    hf.write_dir(str(tmp_path / "out"), tensors, m)
    back, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert type(back).__name__ == ("GPT2LMHeadModel" if name.startswith("gpt2") else "LlamaForCausalLM")
    x = _tokens()
    r = X.row(f"hf-{name}", "export.logits", _hf_logits(back.eval(), x), _hf_logits(model, x), X.TOL["logits"])
    assert r.passed, X.format_table([r])
    again, flat2, _ = hf.load(str(tmp_path / "out"))
    assert flat2 == flat and sorted(again) == sorted(tensors)
    for k in tensors:
        np.testing.assert_array_equal(again[k], tensors[k], err_msg=k)


def test_gpt2_tokenizer_goes_with_a_bpe_run(tmp_path, data_dir, shakespeare_path):
    """A run on GPT-2 BPE data exports GPT-2's tokenizer files (rebuilt offline from tiktoken's ranks)
    that transformers' AutoTokenizer loads and that tokenize as tiktoken does."""
    from modgpt.data import GPT2Tokenizer
    from modgpt.prepare import prepare
    bpe_dir = tmp_path / "data"
    prepare("shakespeare", [shakespeare_path], data_dir=str(bpe_dir), progress=False)
    from modgpt.presets import PRESETS
    cfg = C.from_flat({**PRESETS["gpt2"], "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 64,
                       "vocab_size": 50304, "data_dir": str(bpe_dir), "dataset": "shakespeare"})
    write, note = hf.run_tokenizer(cfg)
    assert note.startswith("tokenizer: GPT-2 BPE (the run's data)")
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in W.canonical_shapes(cfg.model).items()}
    hf.write_dir(str(tmp_path / "out"), tensors, cfg.model, tokenizer=write)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = open(shakespeare_path, encoding="utf-8").read()[:20000] + " héllo 日本語\n\n  x<|endoftext|>"
    assert tok(text)["input_ids"] == GPT2Tokenizer().enc.encode(text, allowed_special="all")
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_cfg["bos_token_id"] == hf_cfg["eos_token_id"] == 50256
    # a char-level run has no transformers tokenizer: nothing written, and the note says so
    _, note = hf.run_tokenizer(cfg.replace(data_dir=data_dir, dataset="shakespeare_char"))
    assert note.startswith("tokenizer: none written") and "char-level" in note


# CI runs one direction (the other is slow): both export and both import in the other tests here
@pytest.mark.parametrize("preset, first, second", [pytest.param("gpt2", "jax", "torch", marks=pytest.mark.slow),
                                                   ("llama", "torch", "jax")])
def test_a_trained_run_crosses_backends_through_hf_bit_for_bit(run_cli, data_dir, tmp_path, preset, first, second):
    """train in one backend, export --format hf, train --init_from=hf:DIR --max_iters=0 in the other:
    both runs export the same canonical tensors, bit for bit."""
    common = ("--eval_iters=1", "--batch_size=2", "--progress=False", "--sample_at_end=False", f"--data_dir={data_dir}")
    a, b, d = tmp_path / "a", tmp_path / "b", tmp_path / "hf"
    r = run_cli(f"modgpt_{first}.train", f"--preset={preset}", "--n_layer=2", "--n_head=4", "--n_embd=32",
                "--block_size=32", "--max_iters=3", *common, f"--out_dir={a}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(f"modgpt_{first}.export", f"--out_dir={a}", "--to", str(d), "--format", "hf")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"] and "tokenizer: none written" in r.stdout
    r = run_cli(f"modgpt_{second}.train", f"--init_from=hf:{d}", "--max_iters=0", *common, f"--out_dir={b}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"hf:{d}" in r.stdout  # the report names where the weights came from
    for run, backend in ((a, first), (b, second)):
        r = run_cli(f"modgpt_{backend}.export", f"--out_dir={run}", "--to", str(run / "w.safetensors"))
        assert r.returncode == 0, r.stderr[-2000:]
    want, cfg_a = W.load(str(a / "w.safetensors"))
    got, cfg_b = W.load(str(b / "w.safetensors"))
    assert C.arch_name(cfg_a.model) == C.arch_name(cfg_b.model)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_refusals_write_nothing(run_cli, data_dir, tmp_path, hf_dirs):
    """An architecture transformers has no class for, an HF config modgpt cannot express and a model
    option that contradicts the checkpoint: one error line each, exit 2, nothing written."""
    common = ("--eval_iters=1", "--batch_size=2", "--progress=False", "--sample_at_end=False", f"--data_dir={data_dir}")
    run = tmp_path / "alibi"
    r = run_cli("modgpt_torch.train", "--preset=gpt2", "--position_encoding=alibi", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=32", "--max_iters=0", *common, f"--out_dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("modgpt_torch.export", f"--out_dir={run}", "--to", str(tmp_path / "x"), "--format", "hf")
    assert r.returncode == 2 and r.stderr.strip() == ("error: option 'position_encoding=alibi' has no Hugging Face "
                                                      "equivalent (transformers' GPT-2 and Llama use learned or "
                                                      "rotary positions); export it with --format canonical")
    assert not (tmp_path / "x").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".x")]
    scaled = tmp_path / "scaled"
    scaled.mkdir()
    src, _ = hf_dirs["llama-gqa"]
    cfg = json.loads(open(os.path.join(src, "config.json")).read())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0}
    (scaled / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(src, "model.safetensors"), scaled / "model.safetensors")
    for bad, want in ((f"--init_from=hf:{scaled}", "error: transformers config rope_parameters.rope_type='yarn': "
                                                   "scaled rotary positions; modgpt cannot express it exactly"),
                      (f"--init_from=hf:{src}", f"error: hf:{src} holds n_layer=2 but the run asks for 3 (--n_layer); "
                                                f"drop --n_layer: the file fixes the architecture")):
        r = run_cli("modgpt_jax.train", bad, "--n_layer=3" if "scaled" not in bad else "--max_iters=0", *common,
                    f"--out_dir={tmp_path / 'never'}")
        assert r.returncode == 2 and r.stderr.strip() == want, r.stderr[-2000:]
        assert not (tmp_path / "never").exists()


def test_data_tokenized_with_an_hf_tokenizer_trains_samples_and_exports_it(run_cli, tmp_path, shakespeare_path):
    """prepare --tokenizer hf:DIR (GPT-2's tokenizer as transformers saves it) gives the same tokens as
    the GPT-2 BPE; a run on that data samples text through it and its export carries its files."""
    from modgpt.prepare import prepare
    hf.write_dir(str(tmp_path / "gpt2"), {k: np.zeros(s, np.float32) for k, s in W.canonical_shapes(
        C.from_flat({"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 50304}).model).items()},
        C.from_flat({"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 50304}).model,
        tokenizer=hf.gpt2_tokenizer(1024))
    transformers.AutoTokenizer.from_pretrained(str(tmp_path / "gpt2")).save_pretrained(str(tmp_path / "tok"))
    data = tmp_path / "data"
    via_hf = prepare("text", [shakespeare_path], f"hf:{tmp_path / 'tok'}", str(data), progress=False, workers=1)
    via_bpe = prepare("text", [shakespeare_path], "gpt2", str(data), progress=False, workers=1, name="bpe")
    shards_of = {d: json.loads(open(os.path.join(d, "meta.json")).read())["shards"] for d in (via_hf, via_bpe)}
    assert shards_of[via_hf] == shards_of[via_bpe]  # the same files, checksums included
    assert os.path.isfile(os.path.join(via_hf, "tokenizer", "tokenizer.json"))
    run = tmp_path / "run"
    r = run_cli("modgpt_torch.train", "--dataset=text", f"--data_dir={data}", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=32", "--max_iters=1", "--eval_iters=1", "--batch_size=2",
                "--progress=False", "--sample_at_end=False", f"--out_dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("modgpt_torch.sample", f"--out_dir={run}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=5")
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:"), r.stderr[-2000:]
    r = run_cli("modgpt_torch.export", f"--out_dir={run}", "--to", str(tmp_path / "out"), "--format", "hf")
    assert r.returncode == 0 and "tokenizer: hf:" in r.stdout, r.stderr[-2000:]
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    # a run whose data is not here, started from an hf: model, exports that model's tokenizer
    cfg = C.from_flat({"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 50304, "init_from": f"hf:{tmp_path / 'tok'}",
                       "data_dir": str(tmp_path / "elsewhere"), "dataset": "text"})
    write, note = hf.run_tokenizer(cfg)
    assert note == f"tokenizer: hf:{tmp_path / 'tok'}'s (the model the run started from), copied"
    (tmp_path / "copy").mkdir()
    write(str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    # bits per byte: a byte-level Hugging Face tokenizer's tokens have the same byte lengths as tiktoken's
    from modgpt import data as D
    np.testing.assert_array_equal(D.token_bytes(D.load_meta(via_hf), via_hf), D.token_bytes({"tokenizer": "gpt2"}))
