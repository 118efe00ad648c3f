"""XLA:CPU's memory plans of the training step with the CPU kernels (--kernels=auto): each kernel
keeps what the memory floor counts (modgpt.memory) and no more. These pin what one jaxlib's
compiler plans, so they are a group of their own (`-m xla_memory`): a jaxlib upgrade that plans
differently breaks this group, not the model's tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from modgpt_jax.kernels import apply_kernels
from modgpt_jax.model import build

pytestmark = pytest.mark.xla_memory


def model_of(cfg):
    model = build(cfg, 0)
    apply_kernels(model, cfg.replace(kernels="auto"), platform="cpu")
    return model


def step_temporaries(cfg, batch: int = 16, train: bool = False) -> int:
    """Bytes of temporaries XLA plans for the compiled forward+backward of cfg's model with the CPU
    kernels (a fresh trace each call, so patched kernels are picked up); train: with a dropout key."""
    x = jnp.zeros((batch, cfg.model.block_size), jnp.int32)
    g, p = nnx.split(model_of(cfg), nnx.Param)
    key = jax.random.key(0) if train else None
    f = jax.jit(jax.value_and_grad(lambda p: nnx.merge(g, p)(x, x, key=key)[1]))
    return f.lower(p).compile().memory_analysis().temp_size_in_bytes


def test_dropout_keeps_no_masks(tiny):
    """Training with dropout 0.2 plans the memory of training without: the masks are drawn again in
    the backward (kernels/dropout.py) and the causal kernel drops its probability blocks anew (with
    jax.random.bernoulli's masks XLA keeps the threefry words and the dropped probabilities)."""
    cfg = tiny(n_layer=4, block_size=64)
    plain, dropped = step_temporaries(cfg, train=True), step_temporaries(cfg.replace(dropout=0.2), train=True)
    assert dropped <= 1.1 * plain, dropped / plain


def test_remat_lowers_the_step_memory_plan(tiny):
    """remat must change what XLA plans to keep, not only the jaxpr: the compiled forward+backward of
    a 4-layer model keeps each block's input and one block's activations (kernels/remat.py), within
    5% of the scanned blocks, whose weights are stacked parameters already."""
    base = tiny(n_layer=4, block_size=64)
    plain, remat = step_temporaries(base), step_temporaries(base.replace(remat=True))
    scanned = step_temporaries(base.replace(remat=True, scan_layers=True))
    assert remat < 0.5 * plain, (remat, plain)
    assert remat <= 1.05 * scanned, (remat, scanned)


@pytest.mark.parametrize("remat", [False, True])
def test_the_model_recomputes_the_attention_probabilities(tiny, monkeypatch, remat):
    """With and without remat the CPU attention kernel is traced with keep=False: its backward makes
    the probabilities again from the scores (bit for bit the kept ones, test_kernels.py)."""
    from modgpt_jax.kernels import cpu_attention as A
    seen, causal = [], A._causal

    def spy(q, k, v, bias, n_blocks, rate, keep, key):
        seen.append(keep)
        return causal(q, k, v, bias, n_blocks, rate, keep, key)
    monkeypatch.setattr(A, "_causal", spy)
    cfg = tiny(n_layer=2, attention_backend="sdpa", remat=remat)
    x = jnp.zeros((2, cfg.model.block_size), jnp.int32)
    g, p = nnx.split(model_of(cfg), nnx.Param)
    jax.jit(jax.grad(lambda p: nnx.merge(g, p)(x, x)[1])).lower(p)
    assert seen and set(seen) == {False}


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_positions_keep_no_more_than_no_positions(tiny, pos):
    """A rope or alibi model's step plans the memory of one without positions, within one (B, T, D)
    tensor. RoPE: the rotated q and k are the tensors the attention reads, and v keeps only its own
    columns (CPUAttention.project). ALiBi: its bias goes into the causal block kernel, which keeps
    a log-sum-exp per row, not the T x S scores."""
    cfg = tiny(n_layer=4, block_size=64)
    none = step_temporaries(cfg.replace(position_encoding="none"))
    got = step_temporaries(cfg.replace(position_encoding=pos))
    one = 16 * 64 * cfg.model.n_embd * 4  # one float32 (B, T, D) tensor
    assert got <= none + one, (got - none) / one


def test_grouped_query_heads_save_what_the_floor_says(tiny):
    """With half as many kv heads a llama-shaped model's step plans less by what k and v shrink in
    the floor (modgpt.memory): the split projection's two blocks share one layout of its input for
    their weight gradients (cpu_linear.matmul_split), so it is not kept twice."""
    from modgpt import memory as MEM
    cfg = tiny(n_layer=4, n_head=4, n_embd=64, block_size=64, position_encoding="rope",
               normalization="rmsnorm", ffn_type="swiglu", activation="silu", bias=False)
    gqa = cfg.replace(n_kv_head=2)
    saved = step_temporaries(cfg) - step_temporaries(gqa)
    want = MEM.estimate(cfg, batch_per_device=16).activations - MEM.estimate(gqa, batch_per_device=16).activations
    assert want > 0 and saved >= 0.9 * want, (saved, want)


def test_qk_norm_keeps_what_the_floor_adds(tiny):
    """Per-head q/k norms under RoPE add to a llama-shaped step's plan what they add to the floor
    (the pre-norm q and k and their row statistics): the norms' backward reads its residuals anew,
    so XLA does not keep their statistics broadcast to (B, T, heads, head_dim)."""
    from modgpt import memory as MEM
    cfg = tiny(n_layer=4, n_head=4, n_embd=64, block_size=64, position_encoding="rope",
               normalization="rmsnorm", ffn_type="swiglu", activation="silu", bias=False)
    qk = cfg.replace(qk_norm=True)
    added = step_temporaries(qk) - step_temporaries(cfg)
    floor = MEM.estimate(qk, batch_per_device=16).activations - MEM.estimate(cfg, batch_per_device=16).activations
    assert added <= 1.1 * floor, (added, floor)




@pytest.mark.parametrize("ffn_type,activation,extra", [("standard", "gelu", 1), ("swiglu", "silu", 2)])
def test_ffn_backward_keeps_only_the_activation_inputs(tiny, monkeypatch, ffn_type, activation, extra):
    """The FFN recomputes its activation in the backward (kernels/ffn.py). With autodiff of the plain
    formula XLA keeps what the derivative reads as well: GELU's erf (one more hidden-size tensor per
    layer), SiLU's sigmoid and output (two). The compiled plans with the plain formula patched back
    in must be larger by at least that much for all but one layer (the last layer's backward runs
    first, so its extra tensors may be transient either way)."""
    from modgpt_jax.kernels import ffn as FF
    cfg = tiny(n_layer=4, block_size=64, ffn_type=ffn_type, activation=activation)
    kept = step_temporaries(cfg)
    monkeypatch.setattr(FF, "recomputed", lambda f: f)
    monkeypatch.setattr(FF, "gated", lambda act: lambda g, u: act(g) * u)
    plain = step_temporaries(cfg)
    hidden = 16 * 64 * cfg.model.ffn_hidden_size * 4  # one float32 (B, T, F) tensor
    assert plain - kept >= extra * (cfg.model.n_layer - 1) * hidden, (plain, kept, hidden)
