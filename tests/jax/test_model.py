"""Model properties: registries match the schema, every option runs, causality, sdpa == manual,
jit == eager, remat/scan == plain, canonical round trip. The reference model, and with the CPU
kernels swapped in (`model_of(..., kernels="auto")`) where a property must hold for both."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modgpt import weights as W
from modgpt.config import CHOICES, COMPONENT_KINDS, OPTION_VALUES
from modgpt_jax.components import REGISTRIES
from modgpt_jax.model import build
from modgpt_jax.weights import load_canonical, to_canonical

KERNELS = ["reference", "auto"]


def model_of(cfg, seed: int = 0, kernels: str = "reference"):
    """build(cfg, seed), with --kernels applied as a run applies them (auto: the CPU kernels here)."""
    from modgpt_jax.kernels import apply_kernels
    model = build(cfg, seed)
    apply_kernels(model, cfg.replace(kernels=kernels))
    return model


def logits(model, x, key=None):
    return model(jnp.asarray(x), key=key)[0]


OPTIONS = [(kind, name) for kind in COMPONENT_KINDS for name in CHOICES[kind]]
OPTIONS += [("n_kv_head", v) for v in OPTION_VALUES["n_kv_head"]] + [("qk_norm", True)]


@pytest.mark.parametrize("kind", COMPONENT_KINDS)
def test_registry_covers_schema(kind):
    assert set(REGISTRIES[kind].names()) == set(CHOICES[kind])


@pytest.mark.parametrize("kind,name", OPTIONS)
def test_every_option_builds_and_runs(kind, name, tokens, tiny):
    cfg = tiny(**{kind: name})
    model = build(cfg, 0)
    out, loss = model(jnp.asarray(tokens), jnp.asarray(tokens))
    assert out.shape == (4, 32, 65) and out.dtype == jnp.float32 and loss.shape == ()
    assert np.isfinite(np.asarray(out)).all() and np.isfinite(float(loss))
    # the parameters are exactly the canonical set (names and shapes)
    W.check_tensors(cfg.model, to_canonical(model))


def _embedding_grads(cfg, tokens, t, kernels):
    """d(sum of logits at position t) / d(embedding rows) for the first row's tokens."""
    from flax import nnx
    model = model_of(cfg, 0, kernels)
    g, params = nnx.split(model, nnx.Param)

    def f(p):
        return logits(nnx.merge(g, p), tokens[:1])[0, t].sum()
    grads = jax.grad(f)(params)
    return np.abs(np.asarray(grads["wte"]["embedding"][...]))[tokens[0]]  # (T, D), row s = position s


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("backend", CHOICES["attention_backend"])
@pytest.mark.parametrize("pos", CHOICES["position_encoding"])
def test_causal_by_gradients(backend, pos, kernels, tokens, tiny):
    cfg = tiny(attention_backend=backend, position_encoding=pos, weight_tying=False)
    t = 10
    g = _embedding_grads(cfg, tokens, t, kernels)
    assert g[t + 1:].max() == 0.0  # no gradient from later positions
    assert g[:t + 1].sum(-1).min() > 0  # every earlier position contributes


@pytest.mark.parametrize("pos", CHOICES["position_encoding"])
def test_sdpa_equals_manual(pos, tokens, tiny):
    a = logits(build(tiny(attention_backend="sdpa", position_encoding=pos), 0), tokens)
    b = logits(build(tiny(attention_backend="manual", position_encoding=pos), 0), tokens)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5)


def test_jit_equals_eager(tokens, tiny):
    model = build(tiny(position_encoding="rope", ffn_type="swiglu", normalization="rmsnorm"), 0)
    eager = logits(model, tokens)
    jitted = jax.jit(lambda x: model(x)[0])(jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tying", [True, False])
def test_features_then_head_is_the_model(tying, tokens, tiny):
    """model(x) is head(features(x)) to the bit, tied (wte.attend) and untied (lm_head); the step
    breakdown (modgpt_jax/breakdown.py) times the two halves apart."""
    model = build(tiny(weight_tying=tying, dropout=0.1), 0)
    x, key = jnp.asarray(tokens), jax.random.key(3)
    h = model.features(x, key=key)
    assert h.shape == (4, 32, 32)
    np.testing.assert_array_equal(np.asarray(model.head(h)), np.asarray(logits(model, x, key)))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("flags", [dict(remat=True), dict(scan_layers=True), dict(remat=True, scan_layers=True)])
def test_remat_and_scan_equal_plain(flags, dropout, kernels, tokens, tiny):
    """Same seed -> same draws; forward and gradients agree (scan compiles one block, remat recomputes,
    and with dropout both draw each layer's masks from the same key, remat twice)."""
    from flax import nnx
    base = tiny(position_encoding="rope", ffn_type="swiglu", n_layer=3, dropout=dropout)
    x, y = jnp.asarray(tokens), jnp.asarray(np.roll(tokens, -1, axis=1))
    key = jax.random.key(5) if dropout else None

    def loss_and_grads(cfg):
        model = model_of(cfg, 0, kernels)
        g, p = nnx.split(model, nnx.Param)
        loss, grads = jax.jit(jax.value_and_grad(lambda p: nnx.merge(g, p)(x, y, key=key)[1]))(p)
        nnx.update(model, grads)  # grads in the model's layout -> canonical names
        return float(loss), to_canonical(model)
    l0, g0 = loss_and_grads(base)
    l1, g1 = loss_and_grads(base.replace(**flags))
    assert abs(l0 - l1) < 1e-6
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], atol=1e-6, rtol=1e-5, err_msg=k)


def test_rope_rotation_is_rotate_half_bit_for_bit():
    """The half-by-half rotation computes x * cos + rotate_half(x) * sin exactly (the same products
    and sums), in float32 and bfloat16."""
    from modgpt.config import ModelConfig
    from modgpt_jax.components.positions import RoPE, rope_cos_sin

    def rotate_half(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([-x2, x1], axis=-1)
    rope = RoPE(ModelConfig(n_head=4, n_embd=128, block_size=64))
    pos = jnp.arange(64)
    for dtype in (jnp.float32, jnp.bfloat16):
        q, k = (jax.random.normal(jax.random.key(i), (2, 64, 4, 32)).astype(dtype) for i in range(2))
        cos, sin = rope_cos_sin(pos, 32, 10000.0)
        cos, sin = cos[:, None, :], sin[:, None, :]
        with jax.disable_jit():
            got = rope.rotate(q, k, pos)
            want = [(x32 * cos + rotate_half(x32) * sin).astype(dtype)
                    for x32 in (q.astype(jnp.float32), k.astype(jnp.float32))]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))


@pytest.mark.parametrize("scan", [False, True])
def test_canonical_round_trip_bit_exact(scan, tmp_path, tiny):
    cfg = tiny(position_encoding="learned_absolute", ffn_type="glu", scan_layers=scan)
    src = to_canonical(build(cfg, 1))
    path = str(tmp_path / "w.safetensors")
    W.save(path, src, cfg)
    tensors, cfg2 = W.load(path)
    dst = build(cfg2.replace(scan_layers=scan), 2)
    load_canonical(dst, tensors)
    out = to_canonical(dst)
    assert list(out) == list(W.canonical_shapes(cfg.model))
    for k in src:
        assert out[k].dtype == np.float32 and np.array_equal(out[k], src[k]), k


def test_init_distributions(tiny):
    cfg = tiny(n_embd=64, n_layer=4, bias=True, weight_tying=False)
    t = to_canonical(build(cfg, 0))
    std = cfg.model.init_std
    assert abs(t["wte.weight"].std() - std) < 0.1 * std
    assert abs(t["blocks.0.attn.proj.weight"].std() - std / np.sqrt(8)) < 0.1 * std / np.sqrt(8)
    assert (t["blocks.0.norm1.weight"] == 1).all() and (t["blocks.0.norm1.bias"] == 0).all()
    assert (t["blocks.0.attn.qkv.bias"] == 0).all()


# ---- grouped-query attention, qk_norm, ALiBi ---------------------------------------------------
def _repeat_kv_heads(t, m):
    """Canonical GQA tensors -> the equivalent multi-head ones: each kv head's columns repeated for
    its n_head/n_kv_head query heads (query head h reads kv head h // group)."""
    out = dict(t)
    nh, kv, hd, G = m.n_head, m.kv_heads, m.head_dim, m.n_head // m.kv_heads
    for name in [n for n in t if n.endswith(("attn.qkv.weight", "attn.qkv.bias"))]:
        q, k, v = np.split(t[name], [nh * hd, (nh + kv) * hd], axis=-1)
        rep = [np.repeat(x.reshape(x.shape[:-1] + (kv, hd)), G, axis=-2).reshape(x.shape[:-1] + (nh * hd,))
               for x in (k, v)]
        out[name] = np.concatenate([q] + rep, axis=-1)
    return out


@pytest.mark.parametrize("n_kv_head", [1, 2])
@pytest.mark.parametrize("backend", CHOICES["attention_backend"])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_gqa_equals_mha_with_repeated_kv_heads(n_kv_head, backend, pos, tokens, tiny):
    """Same function, different storage: fp32, only summation order differs (atol 2e-6 on O(1) logits)."""
    kw = dict(n_head=4, position_encoding=pos, attention_backend=backend, qk_norm=True)
    gqa_cfg = tiny(n_kv_head=n_kv_head, **kw)
    gqa, mha = build(gqa_cfg, 0), build(tiny(**kw), 1)
    t = to_canonical(gqa)
    assert t["blocks.0.attn.qkv.weight"].shape == (32, (4 + 2 * n_kv_head) * 8)
    load_canonical(mha, _repeat_kv_heads(t, gqa_cfg.model))
    np.testing.assert_allclose(np.asarray(logits(gqa, tokens)), np.asarray(logits(mha, tokens)), atol=2e-6, rtol=1e-5)


def test_qk_norm_params_and_scan(tokens, tiny):
    """q_norm/k_norm are (head_dim,) per layer, init 1 (+ bias 0 for layernorm); scan_layers stacks
    them like every block param: plain and scanned forward agree (atol 1e-6, fp32 same math)."""
    cfg = tiny(qk_norm=True, normalization="layernorm", n_head=4, n_kv_head=2, position_encoding="alibi")
    t = to_canonical(build(cfg, 0))
    assert t["blocks.1.attn.q_norm.weight"].shape == (8,) and (t["blocks.1.attn.k_norm.weight"] == 1).all()
    assert (t["blocks.0.attn.q_norm.bias"] == 0).all()
    a, b = logits(build(cfg, 0), tokens), logits(build(cfg.replace(scan_layers=True), 0), tokens)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_head, slopes", [
    (8, [2.0 ** -i for i in range(1, 9)]),  # 2^(-8i/8)
    # not a power of 2: the 4 slopes of n=4, then slopes 1 and 3 of n=8 (2^-1, 2^-3)
    (6, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
])
def test_alibi_bias_values(n_head, slopes, tiny):
    from modgpt_jax.components.positions import ALiBi
    b = np.asarray(ALiBi(tiny(n_head=n_head, n_embd=8 * n_head, position_encoding="alibi").model).bias(jnp.arange(5)))
    assert b.shape == (n_head, 5, 5) and b.dtype == np.float32
    i, j = np.tril_indices(5)  # the causal part: -slope * distance (exact in float32 here)
    for h, s in enumerate(slopes):
        assert (b[h, i, j] == -s * (i - j)).all(), h


def _dot_dtypes(jaxpr, out):
    """Counts of the operand dtypes of every dot_general in a jaxpr, nested jaxprs included."""
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general":
            key = tuple(str(v.aval.dtype) for v in e.invars)
            out[key] = out.get(key, 0) + 1
        for p in e.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _dot_dtypes(inner, out)
    return out


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_bfloat16_step_computes_in_bfloat16(preset, kernels, tiny):
    """Under --dtype=bfloat16 every matmul of forward and backward takes bf16 operands: the residual
    stream stays bf16 from the embedding lookup on (nnx.Embed would promote the bf16 table back to
    the float32 it was built with, and every matmul with it), but for the float32 score gradient
    XLA's attention itself hands to its dq and dk products. Float32 runs stay float32."""
    from flax import nnx
    from modgpt.presets import PRESETS
    from modgpt_jax.step import make_loss_fn
    from modgpt_jax.weights import param_dict
    cfg = tiny(**PRESETS[preset])
    m = model_of(cfg, 0, kernels)
    g = nnx.split(m)[0]
    x = jnp.zeros((2, cfg.model.block_size), jnp.int32)
    for dtype in (jnp.bfloat16, jnp.float32):
        loss = make_loss_fn(g, dtype)
        dots = _dot_dtypes(jax.make_jaxpr(jax.grad(lambda p: loss(p, x, x)))(param_dict(m)).jaxpr, {})
        name = jnp.dtype(dtype).name
        # XLA's attention (the reference's sdpa) takes its float32 score gradient into dq and dk
        mixed = {("float32", name): 2 * cfg.model.n_layer} if kernels == "reference" and name != "float32" else {}
        assert {k: v for k, v in dots.items() if k != (name, name)} == mixed, dots
        assert dots[(name, name)] >= 6 * cfg.model.n_layer, dots


def test_embedding_gradient_accumulates_in_float32():
    """The lookup's gradient sums every position's row gradient: 4096 ones into one row give 4096
    (a bf16 accumulator stalls at 256, where adding 1 no longer changes it), rounded once to bf16."""
    from flax import nnx
    from modgpt_jax.components.layers import embed
    with nnx.use_eager_sharding(False):  # as the model builds it
        graph, state = nnx.split(embed(4, 2, 0.02, (None, None), nnx.Rngs(0)))

    def lookup(table, idx):
        return nnx.merge(graph, jax.tree.map(lambda _: table, state))(idx)

    table = jax.tree.leaves(state)[0].astype(jnp.bfloat16)
    g = jax.grad(lambda t: lookup(t, jnp.zeros((4096,), jnp.int32)).astype(jnp.float32).sum())(table)
    assert g.dtype == jnp.bfloat16 and lookup(table, jnp.zeros((3,), jnp.int32)).dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g, np.float32), [[4096, 4096], [0, 0], [0, 0], [0, 0]])
