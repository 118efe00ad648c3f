"""The parity suite's torch side: build, forward, gradients, one training step (train.py's
sequence), all in the canonical (numpy float32, matrices (in, out)) layout. Imports no jax."""
from __future__ import annotations

import numpy as np
import torch

from modgpt import config as C
from modgpt import weights as W
from modgpt_torch.model import GPT
from modgpt_torch.weights import load_canonical


def build_model(m: C.ModelConfig, tensors: dict | None = None, seed: int = 0) -> GPT:
    """A float32 CPU model in eval mode (no dropout), loaded from canonical tensors when given."""
    torch.manual_seed(seed)
    model = GPT(m)
    if tensors is not None:
        load_canonical(model, tensors)
    return model.eval()


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay on ndim >= 2 (matrices and embeddings) only, as the contract says."""
    return [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]


def make_optimizer(model, t: C.TrainConfig, lr: float | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.learning_rate if lr is None else lr,
                             betas=(t.beta1, t.beta2), eps=t.adam_eps)


def _ids(a, dev) -> torch.Tensor:
    """Token ids (numpy, list or a tensor on any device) as int64 on `dev`. np.asarray of a tensor
    works only on the CPU, so a tensor is moved, never converted."""
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t.long().to(dev)


def canonical_grads(model) -> dict[str, np.ndarray]:
    """Gradients in canonical names/layout (tied models: wte's grad includes the LM head's)."""
    params = dict(model.named_parameters())
    out = {}
    for name in W.canonical_shapes(model.cfg):
        g = params[name].grad.detach().to("cpu", torch.float32)
        out[name] = np.ascontiguousarray((g.T if W.is_matrix(name) else g).numpy())
    return out


def train_step(model, opt, x, y, t: C.TrainConfig, lr: float) -> tuple[float, float]:
    """One optimizer step as train.py takes it (no accumulation): (loss, pre-clip grad norm)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    dev = next(model.parameters()).device
    x, y = _ids(x, dev), _ids(y, dev)
    if t.dtype == "float32":
        _, loss = model(x, y)
    else:  # mixed precision as modgpt_torch/train.py runs it (float16 would also need a GradScaler)
        with torch.autocast(dev.type, dtype=getattr(torch, t.dtype)):
            _, loss = model(x, y)
    loss.backward()
    clip = t.grad_clip if t.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
    opt.step()
    return float(loss.item()), float(norm.item())


def to_numpy_canonical(model, per_param: dict) -> dict[str, np.ndarray]:
    """{parameter: tensor} (e.g. AdamW's exp_avg per parameter) -> canonical names/layout."""
    params = dict(model.named_parameters())
    out = {}
    for name in W.canonical_shapes(model.cfg):
        t = per_param[params[name]].detach().to("cpu", torch.float32)
        out[name] = np.ascontiguousarray((t.T if W.is_matrix(name) else t).numpy())
    return out


def moments(model, opt) -> tuple[dict, dict]:
    """(exp_avg, exp_avg_sq) of a torch AdamW after at least one step, canonical."""
    m = {p: s["exp_avg"] for p, s in opt.state.items()}
    v = {p: s["exp_avg_sq"] for p, s in opt.state.items()}
    return to_numpy_canonical(model, m), to_numpy_canonical(model, v)


@torch.no_grad()
def logits(model, x, dtype: str = "float32") -> np.ndarray:
    """float32 numpy logits of (B, T) ids; bfloat16/float16 through autocast, as train.py runs it."""
    dev = next(model.parameters()).device
    idx = _ids(x, dev)
    if dtype == "float32":
        out, _ = model(idx)
    else:
        with torch.autocast(dev.type, dtype=getattr(torch, dtype)):
            out, _ = model(idx)
    return out.float().cpu().numpy()


@torch.no_grad()
def loss(model, x, y, dtype: str = "float32") -> float:
    dev = next(model.parameters()).device
    idx, tgt = _ids(x, dev), _ids(y, dev)
    if dtype == "float32":
        return float(model(idx, tgt)[1].item())
    with torch.autocast(dev.type, dtype=getattr(torch, dtype)):
        return float(model(idx, tgt)[1].item())


@torch.no_grad()
def greedy(model, prompt, n_new: int) -> np.ndarray:
    """n_new greedy tokens after prompt (1-D ids) with GPT.generate (temperature 0)."""
    dev = next(model.parameters()).device
    idx = torch.as_tensor(np.asarray(prompt)[None]).long().to(dev)
    return model.generate(idx, n_new, temperature=0.0)[0, len(prompt):].cpu().numpy()


def dropout_ones(module, n: int, seed: int = 0) -> np.ndarray:
    """A model's nn.Dropout applied in train mode to ones(n): inverted dropout gives 0 or 1/(1-p)."""
    torch.manual_seed(seed)
    was = module.training
    module.train()
    out = module(torch.ones(n)).numpy()
    module.train(was)
    return out
