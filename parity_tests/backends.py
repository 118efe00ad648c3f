"""One adapter per backend with the same methods, all speaking the canonical layout.

Each adapter builds its model once per configuration from canonical tensors and is reused by every
check (weights are reloaded and the optimizer reset between checks). Every result is numpy in the
canonical names and (in, out) layout, so the checks compare dicts without knowing the framework.
The training-step checks run each backend's own step: parity_tests/torch_side.train_step (the
clip_grad_norm_ + AdamW sequence of modgpt_torch/train.py) and modgpt_jax.trainer.Trainer.step
(the jitted step `python -m modgpt_jax.train` runs).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from modgpt import config as C
from modgpt import loop


class TorchBackend:
    name = "torch"

    def __init__(self, cfg: C.Config, tensors: dict, device: str = "cpu"):
        import torch

        from parity_tests import torch_side as R
        self.torch, self.R = torch, R
        self.cfg, self.device = cfg, torch.device(device)
        if self.device.type == "cuda":  # fp32 parity means true fp32 matmuls (no TF32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.model = R.build_model(cfg.model, tensors).to(self.device)
        from modgpt_torch.kernels import apply_kernels
        self.kernels = apply_kernels(self.model, cfg, self.device.type)  # cfg.system.kernels

    def load(self, tensors: dict) -> None:
        from modgpt_torch.weights import load_canonical
        load_canonical(self.model, tensors)

    def to_canonical(self) -> dict:
        from modgpt_torch.weights import to_canonical
        return to_canonical(self.model)

    def _ids(self, a):
        return self.R._ids(a, self.device)

    def forward_grad(self, x, y) -> tuple[np.ndarray, float, dict]:
        """(float32 logits, loss, canonical grads) in eval mode."""
        self.model.eval()
        self.model.zero_grad(set_to_none=True)
        logits, loss = self.model(self._ids(x), self._ids(y))
        loss.backward()
        return logits.detach().float().cpu().numpy(), float(loss.item()), self.R.canonical_grads(self.model)

    def logits(self, x, dtype: str = "float32", train: bool = False) -> np.ndarray:
        self.model.train(train)
        try:
            return self.R.logits(self.model, x, dtype)
        finally:
            self.model.eval()

    def loss(self, x, y, dtype: str = "float32") -> float:
        self.model.eval()
        return self.R.loss(self.model, x, y, dtype)

    def train_steps(self, tensors: dict, batches, its) -> dict:
        """Fresh AdamW from `tensors`, one step per (x, y) at iteration it (lr = lr_at(it)):
        per-step losses and pre-clip grad norms, final params and both moments (canonical)."""
        t = self.cfg.train
        self.load(tensors)
        self.model.train()  # dropout is 0 in these configs: train mode is eval mode (checked)
        opt = self.R.make_optimizer(self.model, t)
        losses, norms = [], []
        for (x, y), it in zip(batches, its):
            lo, no = self.R.train_step(self.model, opt, self._ids(x), self._ids(y), t, loop.lr_at(it, t))
            losses.append(lo)
            norms.append(no)
        self.model.eval()
        m, v = self.R.moments(self.model, opt)
        return dict(loss=losses, grad_norm=norms, params=self.to_canonical(), m=m, v=v)

    def greedy(self, prompt, n_new: int) -> np.ndarray:
        self.model.eval()
        return self.R.greedy(self.model, prompt, n_new)

    def loglik(self, x, y, mask) -> np.ndarray:
        """The evaluate command's per-row sums of log p(y | x) over the mask (modgpt.tasks)."""
        from modgpt_torch.evaluate import loglik_fn
        self.model.eval()
        return loglik_fn(self.model, self.device)(x, y, mask)

    def dropout_losses(self, tensors: dict, p: float, x, y, draws: int, seed: int = 0) -> np.ndarray:
        """Train-mode losses of the same weights with dropout p, one per dropout draw."""
        from modgpt_torch.weights import load_canonical
        torch = self.torch
        model = self.R.build_model(dataclasses.replace(self.cfg.model, dropout=p))
        load_canonical(model, tensors)
        model.to(self.device).train()
        torch.manual_seed(seed)
        xi, yi = self._ids(x), self._ids(y)
        with torch.no_grad():
            out = [float(model(xi, yi)[1].item()) for _ in range(draws)]
        self._drop_module = model.drop
        return np.asarray(out)

    def dropout_ones(self, n: int, seed: int = 0) -> np.ndarray:
        return self.R.dropout_ones(self._drop_module.cpu(), n, seed)


class JaxBackend:
    name = "jax"

    def __init__(self, cfg: C.Config, tensors: dict, device: str = "cpu"):
        import jax

        from parity_tests import jax_side as R
        self.jax, self.R = jax, R
        self.cfg = cfg
        self.dev = jax.devices("gpu")[0] if device == "cuda" else jax.devices("cpu")[0]
        with self.eager():
            self.tr = R.trainer(cfg, tensors, self.dev)  # its Trainer applies cfg.system.kernels
        self.kernels = self.tr.kernels

    def eager(self):
        """One-shot checks run op by op (jax.disable_jit): every primitive is compiled once per
        shape and reused by all configurations, where a jit would compile each configuration's
        whole graph again (seconds per case on a CPU). Same functions, same numbers to roundoff."""
        return self.jax.disable_jit()

    def load(self, tensors: dict) -> None:
        self.tr.load_canonical(tensors)

    def to_canonical(self) -> dict:
        from modgpt_jax.weights import to_canonical
        return to_canonical(self.tr.sync_model())

    def _ids(self, a):
        return self.jax.device_put(np.asarray(a, np.int32), self.dev)

    def forward_grad(self, x, y) -> tuple[np.ndarray, float, dict]:
        with self.eager():
            logits, loss, g = self.R.forward_grad(self.tr.graphdef, self.tr.params, self._ids(x), self._ids(y))
        return np.asarray(logits), float(loss), self.R.canonical_tree(self.cfg.model, g, self.cfg.system.scan_layers)

    def logits(self, x, dtype: str = "float32", train: bool = False) -> np.ndarray:
        """train=True passes a dropout key (train mode); the model draws masks only when dropout > 0."""
        key = self.jax.random.key(0) if train else None
        with self.eager():
            return np.asarray(self.R.forward(self.tr.graphdef, self.tr.params, self._ids(x), key, dtype))

    def loss(self, x, y, dtype: str = "float32") -> float:
        with self.eager():
            return float(self.R.loss(self.tr.graphdef, self.tr.params, self._ids(x), self._ids(y), None, dtype))

    def train_steps(self, tensors: dict, batches, its) -> dict:
        """The same as TorchBackend.train_steps, through Trainer.step (lr = lr_at(it) inside):
        eager for a single step, the jitted step (one compile) for a trajectory."""
        import contextlib
        self.load(tensors)
        self.R.reset_optimizer(self.tr)
        losses, norms = [], []
        with self.eager() if len(batches) == 1 else contextlib.nullcontext():
            for (x, y), it in zip(batches, its):
                xs = self.jax.device_put(np.asarray(x, np.int32)[None], self.tr.batch_sh)
                ys = self.jax.device_put(np.asarray(y, np.int32)[None], self.tr.batch_sh)
                m = self.tr.step(xs, ys, it)
                losses.append(m["loss"])
                norms.append(m["grad_norm"])
        mu, nu = self.R.moments(self.tr)
        return dict(loss=losses, grad_norm=norms, params=self.R.params(self.tr), m=mu, v=nu)

    def greedy(self, prompt, n_new: int) -> np.ndarray:
        with self.eager():
            return self.R.greedy(self.tr, prompt, n_new)

    def loglik(self, x, y, mask) -> np.ndarray:
        """What --eval_tasks scores with (Trainer.task_loglik), op by op."""
        with self.eager():
            return self.tr.task_loglik()(x, y, mask)

    def dropout_losses(self, tensors: dict, p: float, x, y, draws: int, seed: int = 0) -> np.ndarray:
        """Train-mode losses of the same weights with dropout p, one per dropout key (vmapped)."""
        from flax import nnx

        from modgpt_jax.model import build
        from modgpt_jax.weights import load_canonical, param_dict
        jax = self.jax
        with self.eager():
            model = build(dataclasses.replace(self.cfg.model, dropout=p))
            load_canonical(model, tensors)
            self._drop_module = model.drop
            graphdef, _ = nnx.split(model)
            params = jax.device_put(param_dict(model), self.dev)
            keys = jax.random.split(jax.random.key(seed), draws)
            xi, yi = self._ids(x), self._ids(y)
            out = jax.vmap(lambda k: self.R.loss(graphdef, params, xi, yi, k))(keys)
        return np.asarray(out)

    def dropout_ones(self, n: int, seed: int = 0) -> np.ndarray:
        with self.eager():
            return self.R.dropout_ones(self._drop_module, n, seed)


BACKENDS = {"torch": TorchBackend, "jax": JaxBackend}
