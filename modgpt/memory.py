"""What one training step needs in device memory, from the config alone: the yardstick for peak memory.

    python -m modgpt.memory --preset gpt2 --size=124M --batch_size=16 --dtype=bfloat16 [--remat] [--shards N] [--json]

(--batch_size: the sequences of one micro batch on one device; --shards: FSDP shards of the weights.)

The estimate is the floor an implementation can reach without recomputing anything it did not
choose to recompute (the target: peak device memory within 10% of it):

- params: the float32 master weights; grads: one float32 gradient per weight (a second one, the
  accumulator, under gradient accumulation); optimizer: AdamW's two float32 moments;
  compute_copy: the bfloat16/float16 copy of the weights the step computes with (0 in float32);
  batch: the int32 inputs and targets.
- activations: what the backward pass needs, saved during the forward pass, for one micro batch.
  Per layer and token, in the compute dtype unless noted: the norm input (plus float32 mean/rstd
  statistics), the qkv input, the q, k, v the attention kernel reads (the pre-norm q and k too
  under qk_norm), the attention output (which is also the output projection's input) and its float32
  log-sum-exp per head (a flash-style kernel, with or without dropout; the `manual` backend keeps
  the T x S probabilities instead), the second norm input and the FFN input, the FFN hidden tensors
  (standard: the activation's input and output; gated: gate, up and their product) and one byte
  per element for each dropout mask. Then the final norm and LM-head input, and the float32
  logits with their gradient (B x T x V each: at GPT-2's vocabulary, more than all 12 layers).
- remat (JAX system.remat): each block keeps only its input; one block's activations are live
  again while its backward runs.

Per device: parameters, gradients and optimizer state divide over the FSDP shards, activations and
the batch over all data-parallel devices. The figures are bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from modgpt.config import Config, ModelConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
F32 = 4
NORM_STATS = {"layernorm": 2, "layernorm_nobias": 2, "rmsnorm": 1}  # float32 statistics per row


@dataclass(frozen=True)
class Estimate:
    params: int
    grads: int
    optimizer: int
    compute_copy: int
    batch: int
    activations: int  # all layers + the head, at the remat policy
    per_layer: dict  # activation bytes of one layer by component (without remat)
    head: dict  # final norm, LM-head input, logits and their gradient
    tokens: int  # tokens per device per micro batch
    remat: bool
    total: int

    @property
    def state(self) -> int:
        """Weights, gradients, optimizer state and compute copy: what does not depend on the batch."""
        return self.params + self.grads + self.optimizer + self.compute_copy

    def to_dict(self) -> dict:
        d = asdict(self)
        d["state"] = self.state
        return d


def layer_activations(m: ModelConfig, T: int, a: int) -> dict:
    """Bytes per token saved by one block for its backward, by component (a: compute dtype bytes)."""
    D, H, KV, hd, F = m.n_embd, m.n_head, m.kv_heads, m.head_dim, m.ffn_hidden_size
    norm = a * D + F32 * NORM_STATS[m.normalization]
    drop = m.dropout > 0
    out = {
        "norm1": norm,
        "qkv_input": a * D,
        "qkv": a * (H + 2 * KV) * hd,
        "attention_output": a * D,
        "norm2": norm,
        "ffn_input": a * D,
        "ffn_hidden": a * F * (3 if m.gated else 2),
    }
    if m.qk_norm:
        out["qk_norm"] = a * (H + KV) * hd + F32 * NORM_STATS[m.normalization] * (H + KV)
    if m.attention_backend == "manual":
        out["attention_probs"] = a * H * T  # the full T x S square, as the manual path computes it
    else:
        out["attention_lse"] = F32 * H
    if drop:
        out["dropout_masks"] = H * T + 2 * D  # attention probabilities, attention and FFN residuals
    return out


def head_activations(m: ModelConfig, a: int) -> dict:
    out = {"lm_head_input": a * m.n_embd, "logits_and_grad": 2 * F32 * m.vocab_size}
    if m.final_norm:
        out["norm_f"] = a * m.n_embd + F32 * NORM_STATS[m.normalization]
    if m.dropout > 0:
        out["dropout_masks"] = m.n_embd  # after the embedding
    return out


def estimate(cfg: Config, *, batch_per_device: int | None = None, param_shards: int = 1,
             optimizer_shards: int | None = None, remat: bool | None = None, params: int | None = None) -> Estimate:
    """The step's memory floor on one device. batch_per_device: sequences in one micro batch on this
    device (default train.batch_size); param_shards: FSDP shards of the weights and gradients;
    optimizer_shards: shards of the optimizer state (default param_shards; ZeRO-1 shards only it);
    remat: default system.remat; params: parameter count (default from the config)."""
    from modgpt.flops import param_count
    m, t = cfg.model, cfg.train
    B = t.batch_size if batch_per_device is None else batch_per_device
    T = m.block_size
    tokens = B * T
    a = DTYPE_BYTES[t.dtype]
    remat = cfg.system.remat if remat is None else remat
    total = param_count(m) if params is None else params
    n = -(-total // param_shards)
    n_opt = -(-total // (optimizer_shards or param_shards))
    per_layer = layer_activations(m, T, a)
    head = head_activations(m, a)
    layer = sum(per_layer.values())
    if remat:  # every block input kept, one block recomputed at a time
        blocks = m.n_layer * a * m.n_embd + layer
    else:
        blocks = m.n_layer * layer
    activations = tokens * (blocks + sum(head.values()))
    accum = t.gradient_accumulation_steps > 1
    e = dict(params=F32 * n, grads=F32 * n * (2 if accum else 1), optimizer=2 * F32 * n_opt,
             compute_copy=0 if a == F32 else a * n, batch=2 * 4 * tokens * t.gradient_accumulation_steps,
             activations=activations)
    return Estimate(**e, per_layer={k: v * tokens for k, v in per_layer.items()},
                    head={k: v * tokens for k, v in head.items()}, tokens=tokens, remat=remat,
                    total=sum(e.values()))


def fmt_bytes(n: int | None) -> str:
    """Bytes for people: KiB/MiB/GiB/TiB ("-" for none)."""
    if not n:
        return "-"
    if n >= 2**40:
        return f"{n / 2**40:.1f}TiB"
    if n >= 2**30:
        return f"{n / 2**30:.2f}GiB"
    return f"{n / 2**20:.0f}MiB" if n >= 2**20 else f"{n / 2**10:.0f}KiB"


def for_run(cfg: Config, backend: str, n_devices: int) -> Estimate:
    """The floor of a training run as the backend lays it out: the global batch split over the
    devices; JAX shards weights, gradients and optimizer state over the mesh's fsdp axis and honours
    remat; torch FSDP shards all three over the processes, ZeRO-1 the optimizer state only."""
    s = cfg.system
    if backend == "jax":
        shards = opt_shards = max(s.mesh_fsdp, 1)
        remat = s.remat
    else:
        shards = n_devices if s.parallel == "fsdp" else 1
        opt_shards = n_devices if s.parallel in ("fsdp", "zero1") else 1
        remat = False
    return estimate(cfg, batch_per_device=max(cfg.train.batch_size // max(n_devices, 1), 1),
                    param_shards=shards, optimizer_shards=opt_shards, remat=remat)


def summary(e: Estimate) -> str:
    """One line: the floor and its two parts."""
    return (f"{fmt_bytes(e.total)} per device (weights, gradients, AdamW state{', compute copy' if e.compute_copy else ''}: "
            f"{fmt_bytes(e.state)}; activations{' with remat' if e.remat else ''}: {fmt_bytes(e.activations)}; "
            f"python -m modgpt.memory)")


def report(e: Estimate) -> str:
    lines = [f"memory floor of one training step, per device ({e.tokens} tokens per micro batch"
             f"{', remat' if e.remat else ''}): {fmt_bytes(e.total)}"]
    for k in ("params", "grads", "optimizer", "compute_copy", "batch", "activations"):
        lines.append(f"  {k:<14}{fmt_bytes(getattr(e, k)):>10}")
    lines.append("  one layer's activations" + (" (kept by every layer without remat):" if not e.remat else ":"))
    for k, v in e.per_layer.items():
        lines.append(f"    {k:<20}{fmt_bytes(v):>10}")
    lines.append("  head:")
    for k, v in e.head.items():
        lines.append(f"    {k:<20}{fmt_bytes(v):>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    from modgpt.commands import memory_main
    raise SystemExit(memory_main())
