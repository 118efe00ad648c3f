"""The canonical weight file, and the import boundaries between packages."""
import subprocess
import sys

import numpy as np
import pytest

from modgpt import config as C
from modgpt import weights as W


def tiny(**kw):
    return C.from_flat({"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 65, **kw})


@pytest.mark.parametrize("kw", [{}, {"ffn_type": "swiglu", "bias": False, "weight_tying": False,
                                     "normalization": "rmsnorm", "position_encoding": "rope"},
                                {"norm_position": "post"}])
def test_save_load_roundtrip(tmp_path, kw):
    cfg = tiny(**kw)
    rng = np.random.default_rng(0)
    t = {k: rng.standard_normal(s).astype(np.float32) for k, s in W.canonical_shapes(cfg.model).items()}
    p = str(tmp_path / "w.safetensors")
    W.save(p, t, cfg)
    back, cfg2 = W.load(p)
    assert cfg2 == cfg and set(back) == set(t)
    assert all(np.array_equal(back[k], t[k]) for k in t)
    assert ("norm_f.weight" in t) == (cfg.model.norm_position == "pre")
    assert ("lm_head.weight" in t) == (not cfg.model.weight_tying)


def test_bad_tensors_rejected(tmp_path):
    cfg = tiny()
    t = {k: np.zeros(s, np.float32) for k, s in W.canonical_shapes(cfg.model).items()}
    bad = dict(t)
    del bad["blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match="missing tensor 'blocks.1.attn.qkv.weight'"):
        W.save(str(tmp_path / "a.safetensors"), bad, cfg)
    bad = {**t, "blocks.0.attn.proj.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"has shape \(3, 3\), expected \(32, 32\)"):
        W.check_tensors(cfg.model, bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        W.load(str(tmp_path / "junk.safetensors"))
    assert not (tmp_path / "a.safetensors").exists()


CORE_MODULES = ["modgpt", "modgpt.config", "modgpt.presets", "modgpt.cli", "modgpt.flops", "modgpt.hardware",
                "modgpt.data", "modgpt.prepare", "modgpt.runlog", "modgpt.loop", "modgpt.weights", "modgpt.io",
                "modgpt.registry"]


def _imports(code: str) -> set:
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_core_imports_neither_framework():
    import pkgutil

    import modgpt
    mods = set(CORE_MODULES) | {f"modgpt.{m.name}" for m in pkgutil.iter_modules(modgpt.__path__)}
    mods = sorted(m for m in mods if not m.endswith("__main__"))
    loaded = _imports("\n".join(f"import {m}" for m in mods))
    assert "jax" not in loaded and "torch" not in loaded and "flax" not in loaded


def _backend_modules(pkg: str) -> list:
    import importlib
    import pkgutil
    try:
        p = importlib.import_module(pkg)
    except ImportError:
        pytest.skip(f"{pkg} not installed")
    return [m.name for m in pkgutil.walk_packages(p.__path__, pkg + ".") if not m.name.endswith("__main__")]


def test_torch_backend_never_imports_jax():
    loaded = _imports("\n".join(f"import {m}" for m in ["modgpt_torch"] + _backend_modules("modgpt_torch")))
    assert "torch" in loaded and "jax" not in loaded and "flax" not in loaded


def test_jax_backend_never_imports_torch():
    loaded = _imports("\n".join(f"import {m}" for m in ["modgpt_jax"] + _backend_modules("modgpt_jax")))
    assert "jax" in loaded and "torch" not in loaded
