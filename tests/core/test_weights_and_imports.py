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


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (function bodies included), read from the
    source; a module's `if __name__ == "__main__":` block (its command's entry) is left out."""
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    paths = {}
    for pkg in ("modgpt", "modgpt_jax", "modgpt_torch", "parity_tests"):
        for p in (root / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(root).with_suffix("").parts)
            paths[name.removesuffix(".__init__")] = p

    def target(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in paths.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(getattr(node.test, "left", None), "id", None) == "__name__" for n in ast.walk(node)}
        out = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                out |= {target(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out |= {target(f"{node.module}.{a.name}") or target(node.module) for a in node.names}
        graph[mod] = {t for t in out if t and t != mod}
    return graph


def test_no_import_cycles():
    """Library modules import downwards only: a command's main lives apart from the library module
    it is named after (modgpt.commands), so no two project modules import each other, however
    indirectly."""
    graph = _import_graph()
    assert {"modgpt.config", "modgpt.cli", "modgpt_jax.train", "modgpt_jax.inference"} <= set(graph)
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for t in sorted(graph[m]):
            visit(t)
        path.pop()
        done.add(m)
    for m in sorted(graph):
        visit(m)
