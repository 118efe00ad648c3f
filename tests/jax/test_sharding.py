"""Sharded training on the 8 fake CPU devices: specs, shard shapes, and the same losses as one device.

All meshes train the same tiny llama (64 wide, batch 8 = one row per device) from the same seed on
the same batches with the same dropout keys; the Trainers come from the session fixture
`sharded_runs` (tests/jax/conftest.py).
"""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from modgpt import memory
from modgpt_jax import sharding as S

MESHES = [(2, 4), (8, 1), (1, 8)]
N_EMBD = 64


def leaves(tree):
    """[(dotted path, array)] of a params dict (integer keys are block indices)."""
    out = []
    for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out.append((".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), a))
    return out


def adam_moments(opt_state):
    """(mu, nu) of optax.inject_hyperparams(adamw): chain(scale_by_adam, weight decay, lr)."""
    adam = opt_state.inner_state[0]
    return adam.mu, adam.nu


# The rules table at work on the 2x4 mesh: `embed` -> fsdp, everything else replicated; the vocab
# dim (65) could not be split 4 ways anyway. Only these five kinds of matrix exist in the model.
EXPECTED_2x4 = {
    "wte.embedding": P(None, "fsdp"),  # (vocab, embed)
    "blocks.0.attn.qkv.kernel": P("fsdp", None),  # (embed, heads)
    "blocks.0.attn.proj.kernel": P(None, "fsdp"),  # (heads, embed)
    "blocks.1.ffn.gate.kernel": P("fsdp", None),  # (embed, mlp)
    "blocks.1.ffn.proj.kernel": P(None, "fsdp"),  # (mlp, embed)
    "lm_head.kernel": P("fsdp", None),  # (embed, vocab)
    "norm_f.weight": P(None),  # (embed,) norms are tiny: replicated
}


def test_param_specs_on_2x4(sharded_runs):
    tr = sharded_runs[(2, 4)][0]
    specs = {k: a.sharding.spec for k, a in leaves(tr.params)}
    for k, want in EXPECTED_2x4.items():
        assert specs[k] == want, (k, specs[k])


@pytest.mark.parametrize("mesh", MESHES)
def test_params_and_optimizer_state_sharded(mesh, sharded_runs):
    """Every matrix is split over fsdp on its embed dim (replicated over data); Adam's mu and nu
    are placed exactly like their params, so per-device memory shrinks by the fsdp factor."""
    tr = sharded_runs[mesh][0]
    _, f = mesh
    assert dict(tr.mesh.shape) == {"data": mesh[0], "fsdp": f}
    mu, nu = adam_moments(tr.opt_state)
    full = per_device = 0
    for (k, p), (_, m), (_, v) in zip(leaves(tr.params), leaves(mu), leaves(nu)):
        assert m.sharding == p.sharding and v.sharding == p.sharding, k
        assert m.dtype == v.dtype == p.dtype == np.float32, k
        assert "data" not in jax.tree.leaves(tuple(p.sharding.spec)), k  # never split over data
        shard = p.addressable_shards[0].data.shape
        if p.ndim == 2:  # exactly one dim, an embed one (size n_embd), divided by the fsdp factor
            split = [i for i in range(2) if shard[i] != p.shape[i]]
            if f > 1:
                assert len(split) == 1 and p.shape[split[0]] == N_EMBD, (k, p.shape, shard)
                assert shard[split[0]] == N_EMBD // f, (k, shard)
            else:
                assert shard == p.shape, k
            # distinct pieces held across the mesh = fsdp factor (data replicas hold copies)
            assert len({str(s.index) for s in p.addressable_shards}) == f, k
        else:
            assert shard == p.shape, k
        full += 3 * p.size  # param + mu + nu
        per_device += 3 * math.prod(shard)
    vectors = sum(3 * p.size for _, p in leaves(tr.params) if p.ndim < 2)
    assert per_device == (full - vectors) // f + vectors


@pytest.mark.parametrize("mesh", MESHES)
def test_batch_split_over_both_axes(mesh, sharded_runs):
    tr, _, (xs, ys) = sharded_runs[mesh]
    assert xs.shape == (1, 8, 64)  # (accum, batch, T)
    assert xs.sharding.spec == P(None, ("data", "fsdp"), None) == ys.sharding.spec
    rows = sorted(s.index[1].start for s in xs.addressable_shards)
    assert rows == list(range(8))  # one distinct row per device, on every mesh shape
    assert all(s.data.shape == (1, 1, 64) for s in xs.addressable_shards)


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_losses_equal_one_device(mesh, sharded_runs):
    """Same seed, same batches. Tolerance: relative 1e-5 per step. The math is identical; only the
    float32 reduction order differs (the mean loss and the gradient all-reduce are summed over 8
    shards instead of in one pass), which moves the loss by an ulp or two (observed <= 2.4e-7
    relative over 4 AdamW steps); a wrong shard or a missing all-reduce moves it by ~1e-2."""
    ref = np.array(sharded_runs[(1, 1)][1])
    got = np.array(sharded_runs[mesh][1])
    assert len(got) == len(ref) == 4
    assert ref[-1] < ref[0]  # it trains
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_params_equal_one_device(mesh, sharded_runs):
    """After the steps the gathered params match one device's. Tolerance: 5e-5 absolute. Adam's
    update is scale-free (m / sqrt(v)), so for a weight whose gradient is near zero the rounding
    differences of the gradient reduction can flip part of an lr-sized step; the whole update is
    bounded by lr x steps = 4e-3, and the tolerance is 1.25% of that (observed max 4.9e-6). A
    wrong shard or a missing gradient all-reduce changes weights by the order of the update."""
    from modgpt_jax.model import build
    from modgpt_jax.weights import param_dict
    one = sharded_runs[(1, 1)][0]
    ref = dict(leaves(one.params))
    init = dict(leaves(param_dict(build(one.cfg, one.cfg.train.seed))))  # what the Trainers started from
    moved = max(float(np.abs(np.asarray(ref[k]) - np.asarray(v)).max()) for k, v in init.items())
    assert moved > 1e-3  # the steps moved the weights by about lr x steps
    for k, a in leaves(sharded_runs[mesh][0].params):
        np.testing.assert_allclose(np.asarray(a), np.asarray(ref[k]), atol=5e-5, rtol=0, err_msg=k)


def test_remat_on_2x4_equals_plain(train_steps, sharded_runs):
    """remat on the 2x4 mesh with dropout: the recomputed blocks (model._recomputed) take the same
    steps. Tolerance: relative 1e-5 per step, as above; recomputing the same ops with the same
    dropout keys differs at most in how XLA fuses them (observed: equal to a few ulps)."""
    _, losses, _ = train_steps({"remat": True}, 2, 4, 4)
    np.testing.assert_allclose(np.array(losses), np.array(sharded_runs[(2, 4)][1]), rtol=1e-5, atol=0)


def test_bfloat16_compute_float32_master(train_steps, sharded_runs):
    """bf16 compute on the 2x4 mesh: master params and Adam moments stay float32, losses finite and
    close to fp32's. Tolerance 0.01 on a loss of ~4.1: bf16 keeps 8 significant bits, so one
    rounding of a value near 4 is already up to 2^-9 x 4 = 0.008; the many roundings inside the net
    mostly average out (observed max difference 4.2e-4 over 4 steps). The difference must also be
    non-zero, or bf16 was not used."""
    tr, losses, _ = train_steps({"dtype": "bfloat16"}, 2, 4, 4)
    ref = sharded_runs[(2, 4)][1]
    for k, p in leaves(tr.params):
        assert p.dtype == np.float32, k
    mu, nu = adam_moments(tr.opt_state)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves((mu, nu)))
    diff = np.abs(np.array(losses) - np.array(ref))
    assert np.isfinite(losses).all()
    assert 0 < diff.max() < 0.01, (losses, ref)


def test_batch_not_divisible_by_mesh(tiny):
    from modgpt.config import ConfigError
    mesh = S.make_mesh(tiny(mesh_data=2, mesh_fsdp=4).system)
    with pytest.raises(ConfigError, match="batch_size=12 cannot be split over the 8 devices"):
        S.check_batch(12, mesh)
    S.check_batch(16, mesh)


def test_mesh_shape_rules(tiny):
    from modgpt.config import ConfigError
    assert S.mesh_shape(tiny(mesh_data=-1, mesh_fsdp=4).system, 8) == (2, 4)
    assert S.mesh_shape(tiny(mesh_data=1, mesh_fsdp=-1).system, 8) == (1, 8)
    with pytest.raises(ConfigError, match="does not fit"):
        S.mesh_shape(tiny(mesh_data=3, mesh_fsdp=-1).system, 8)


def test_step_memory_plan_is_per_device(sharded_runs):
    """Trainer.step_memory is XLA's plan of the compiled step (reported in the run log and by the
    bench). One device: its arguments are exactly the float32 params, the two Adam moments, the
    (x, y) batch and a few scalars (step count, hyperparameters, lr, dropout key), and the donated
    params + optimizer state alias the outputs. Pure FSDP over 8: each device holds about 1/8."""
    tr1 = sharded_runs[(1, 1)][0]
    plan = tr1.step_memory
    n_params = sum(a.size for _, a in leaves(tr1.params))
    t = tr1.cfg.train
    batch = 2 * t.gradient_accumulation_steps * t.batch_size * tr1.cfg.model.block_size * 4  # x, y int32
    # + scalars: two step counts and the 6 injected hyperparameters (32 bytes), lr (4), the key (8)
    assert 12 * n_params + batch <= plan["arguments"] <= 12 * n_params + batch + 64, (plan, n_params)
    assert 12 * n_params <= plan["aliased"] <= plan["outputs"]
    assert plan["temporaries"] > 0
    assert plan["total"] == plan["arguments"] + plan["outputs"] - plan["aliased"] + plan["temporaries"]
    fsdp8 = sharded_runs[(1, 8)][0].step_memory
    assert fsdp8["arguments"] < plan["arguments"] / 4  # 1/8 of each embed-split matrix, norms replicated
    # modgpt.memory's floor counts the same weights, moments and batch from the config alone
    floor = memory.for_run(tr1.cfg, "jax", 1)
    assert floor.params == 4 * n_params and floor.optimizer == 8 * n_params and floor.batch == batch
    assert floor.params + floor.optimizer + floor.batch <= plan["arguments"] <= floor.params + floor.optimizer + floor.batch + 64
    assert plan["total"] > floor.total  # the CPU kernels keep more than the floor (docs/performance.md)
