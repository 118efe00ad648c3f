"""The parity checks for one configuration, shared by pytest and `python -m parity_tests`.

A `Case` builds both backends once from the same random canonical weights and runs the checks named
in CHECKS, each returning compare.Row objects. Weights are random in every tensor (biases and norm
weights too: the default init's zero biases and unit norm weights would hide a swapped or missing
bias), scaled so activations and logits are O(1).
"""
from __future__ import annotations

import os
import tempfile
import zlib

import numpy as np

from modgpt import config as C
from modgpt import data as D
from modgpt import loop
from modgpt import weights as W
from parity_tests import compare as X
from parity_tests.backends import JaxBackend, TorchBackend

# Optimizer settings of every case. lr_at(ADAMW_ITER) is inside warmup (8/11 of the peak), so the
# AdamW check covers the schedule, and GRAD_CLIP is far below the pre-clip gradient norm of these
# weights (about 1-3), so clipping scales every step; the check fails if it did not trigger.
TRAIN = dict(batch_size=4, learning_rate=3e-3, min_lr=3e-4, warmup_iters=10, lr_decay_iters=50,
             weight_decay=0.1, beta1=0.9, beta2=0.95, adam_eps=1e-8, grad_clip=0.25, seed=1337,
             dtype="float32", dropout=0.0, kernels="reference")
ADAMW_ITER = 7
TRAJ_STEPS = 50
GEN_NEW = 32
DROP_P = 0.2
DROP_DRAWS = 16
# Gradient-like tensors are compared relative to max(own scale, GRAD_FLOOR x the largest one):
# see compare.worst (second moments, ~g^2, use GRAD_FLOOR^2).
GRAD_FLOOR = 1e-3
CHECKS = ("forward", "grads", "adamw", "kernels", "generate", "eval", "bf16", "dropout", "roundtrip", "trajectory")


def random_weights(m: C.ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """Canonical tensors: matrices N(0, 1/fan_in), embeddings N(0, 0.3^2), norm weights 1 + N(0,
    0.1^2), biases N(0, 0.05^2); float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in W.canonical_shapes(m).items():
        if W.is_matrix(name):
            a = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        elif name.endswith(("wte.weight", "wpe.weight")):
            a = rng.normal(0.0, 0.3, shape)
        elif name.endswith("bias"):
            a = rng.normal(0.0, 0.05, shape)
        else:  # norm weights
            a = 1.0 + rng.normal(0.0, 0.1, shape)
        out[name] = a.astype(np.float32)
    return out


def case_config(cfg: C.Config) -> C.Config:
    """The case's model with the parity training settings: the backends' reference models, which
    the kernels check compares each backend's --kernels=auto with."""
    return cfg.replace(**TRAIN)


class Case:
    """Both backends for one configuration, built on first use and shared by every check."""

    def __init__(self, name: str, cfg: C.Config, data_path: str, device: str = "cpu"):
        self.name, self.device = name, device
        self.cfg = case_config(cfg)
        self.tensors = random_weights(self.cfg.model, zlib.crc32(name.encode()))
        T, B = self.cfg.model.block_size, self.cfg.train.batch_size
        self.sampler = D.BatchSampler(data_path, T, B, self.cfg.train.seed, vocab_size=self.cfg.model.vocab_size)
        self._b = {}

    @property
    def torch(self) -> TorchBackend:
        if "torch" not in self._b:
            self._b["torch"] = TorchBackend(self.cfg, self.tensors, self.device)
        return self._b["torch"]

    @property
    def jax(self) -> JaxBackend:
        if "jax" not in self._b:
            self._b["jax"] = JaxBackend(self.cfg, self.tensors, self.device)
        return self._b["jax"]

    def batch(self, it: int):
        return self.sampler.get("train", it)

    def run(self, checks=CHECKS, dtype: str = "float32") -> list[X.Row]:
        rows: list[X.Row] = []
        for c in checks:
            try:
                rows += getattr(self, f"check_{c}")(dtype) if c in ("forward", "trajectory") else \
                    getattr(self, f"check_{c}")()
            except Exception as e:  # a crash is a failed check, reported in the table
                rows.append(X.Row(self.name, c, float("inf"), float("inf"), 0.0, False,
                                  f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]))
        return rows

    # -- checks --------------------------------------------------------------------------------
    def check_forward(self, dtype: str = "float32") -> list[X.Row]:
        """Logits and loss on one (B, T) batch in eval mode."""
        x, y = self.batch(ADAMW_ITER)
        if dtype != "float32":
            return self.check_bf16(dtype) + [
                X.row(self.name, f"loss.{dtype}", self.jax.loss(x, y, dtype), self.torch.loss(x, y, dtype),
                      X.TOL["bf16_loss"])]
        lt, _, _ = self._fg_torch = self.torch.forward_grad(x, y)
        lj, _, _ = self._fg_jax = self.jax.forward_grad(x, y)
        return [X.row(self.name, "logits", lj, lt, X.TOL["logits"]),
                X.row(self.name, "loss", self._fg_jax[1], self._fg_torch[1], X.TOL["loss"])]

    def check_grads(self) -> list[X.Row]:
        if not hasattr(self, "_fg_torch"):
            self.check_forward()
        return [X.worst(self.name, "grads", self._fg_jax[2], self._fg_torch[2], X.TOL["grad"], GRAD_FLOOR)]

    def check_adamw(self) -> list[X.Row]:
        """One step of a fresh AdamW at iteration ADAMW_ITER: params, both moments, clip norm."""
        x, y = self.batch(ADAMW_ITER)
        rt = self.torch.train_steps(self.tensors, [(x, y)], [ADAMW_ITER])
        rj = self.jax.train_steps(self.tensors, [(x, y)], [ADAMW_ITER])
        n = rt["grad_norm"][0]
        clip = X.row(self.name, "adamw.grad_norm", rj["grad_norm"][0], n, X.TOL["grad_norm"])
        if not n > self.cfg.train.grad_clip:
            clip.passed, clip.note = False, f"clipping did not trigger (norm {n:.3g} <= {self.cfg.train.grad_clip})"
        moved = X.rel_err(rt["params"]["wte.weight"], self.tensors["wte.weight"])[0]
        t = self.cfg.train
        p = X.adamw_params(self.name, rj["params"], rt["params"], rj["m"], rt["m"], loop.lr_at(ADAMW_ITER, t),
                           t.beta1, t.adam_eps, X.TOL["adamw_param"])
        if not moved > 0:
            p.passed, p.note = False, "the torch step did not change wte"
        return [p, X.worst(self.name, "adamw.exp_avg", rj["m"], rt["m"], X.TOL["adamw_m"], GRAD_FLOOR),
                X.worst(self.name, "adamw.exp_avg_sq", rj["v"], rt["v"], X.TOL["adamw_v"], GRAD_FLOOR ** 2), clip]

    def check_trajectory(self, dtype: str = "float32") -> list[X.Row]:
        """TRAJ_STEPS steps from the same weights on the shared sampler's batches 0..N-1."""
        its = list(range(TRAJ_STEPS))
        batches = [self.batch(it) for it in its]
        if dtype == "float32":
            lt = self.torch.train_steps(self.tensors, batches, its)["loss"]
            lj = self.jax.train_steps(self.tensors, batches, its)["loss"]
            tol, name = X.TOL["trajectory"], "trajectory"
        else:
            lt = self._with_dtype(dtype, lambda b: b.train_steps(self.tensors, batches, its)["loss"], "torch")
            lj = self._with_dtype(dtype, lambda b: b.train_steps(self.tensors, batches, its)["loss"], "jax")
            tol, name = X.TOL["bf16_trajectory"], f"trajectory.{dtype}"
        d = np.abs(np.asarray(lj) - np.asarray(lt))
        r = d / np.abs(np.asarray(lt))
        k = int(np.argmax(r))
        learned = lt[-1] < lt[0] - 0.1
        row = X.Row(self.name, name, float(d.max()), float(r.max()), tol, bool(r.max() <= tol and learned),
                    f"worst step {k}; loss {lt[0]:.3f} -> {lt[-1]:.3f}" + ("" if learned else " (did not learn)"))
        return [row]

    def _with_dtype(self, dtype, fn, which):
        """Run fn on a separate backend whose train config uses `dtype` (mixed precision)."""
        key = f"{which}.{dtype}"
        if key not in self._b:
            cls = TorchBackend if which == "torch" else JaxBackend
            self._b[key] = cls(self.cfg.replace(dtype=dtype), self.tensors, self.device)
        return fn(self._b[key])

    def check_generate(self) -> list[X.Row]:
        """Greedy decoding of GEN_NEW tokens after a block_size - GEN_NEW token prompt, float32."""
        self.torch.load(self.tensors)
        self.jax.load(self.tensors)
        T = self.cfg.model.block_size
        prompt = self.sampler.get("val", 0)[0][0, :T - GEN_NEW]
        gt = self.torch.greedy(prompt, GEN_NEW)
        gj = self.jax.greedy(prompt, GEN_NEW)
        diff = np.nonzero(gt != gj)[0]
        note = f"first difference at new token {diff[0]}" if len(diff) else f"{GEN_NEW} tokens identical"
        return [X.Row(self.name, "greedy32", float(len(diff)), float(len(diff)) / GEN_NEW, 0.0, len(diff) == 0, note)]

    def check_eval(self) -> list[X.Row]:
        """Evaluation tasks' log-likelihoods (modgpt.tasks): each row of a validation batch scores its
        last quarter as an ending; every 4 rows are one item. Per-ending sums to TOL["loss"] relative
        to the largest, and the same choice for every item."""
        self.torch.load(self.tensors)
        self.jax.load(self.tensors)
        x, y = self.sampler.get("val", 0)
        B, T = x.shape
        mask = np.zeros((B, T), np.float32)
        mask[:, T - T // 4:] = 1.0
        lt, lj = self.torch.loglik(x, y, mask), self.jax.loglik(x, y, mask)
        n = B // 4 * 4
        same = np.array_equal(lt[:n].reshape(-1, 4).argmax(1), lj[:n].reshape(-1, 4).argmax(1))
        choice = X.Row(self.name, "eval.choices", 0.0 if same else 1.0, 0.0 if same else 1.0, 0.0, bool(same),
                       f"{n // 4} items of 4 endings")
        return [X.row(self.name, "eval.logliks", lj, lt, X.TOL["loss"]), choice]

    def check_bf16(self, dtype: str = "bfloat16") -> list[X.Row]:
        """Each backend's own bf16 path (torch autocast; JAX bf16 compute copy of the weights)."""
        self.torch.load(self.tensors)
        self.jax.load(self.tensors)
        x, _ = self.batch(ADAMW_ITER)
        lt, lj = self.torch.logits(x, dtype), self.jax.logits(x, dtype)
        kl = X.kl_per_token(lt, lj)
        ref = self.torch.logits(x, "float32")  # how far bf16 is from fp32 in torch itself, for scale
        own = X.kl_per_token(ref, lt)
        d, r = X.rel_err(lj, lt)
        return [X.Row(self.name, f"{dtype}.kl", d, kl, X.TOL["bf16_kl"], kl <= X.TOL["bf16_kl"],
                      f"torch fp32->bf16 KL {own:.1e}"),
                X.row(self.name, f"{dtype}.logits", lj, lt, X.TOL["bf16_logits_rel"])]

    def check_dropout(self) -> list[X.Row]:
        """dropout 0: train mode == eval mode in both; dropout p: same inverted scaling and the same
        mean train-mode loss over many draws (to within sampling error)."""
        self.torch.load(self.tensors)
        self.jax.load(self.tensors)
        x, y = self.batch(ADAMW_ITER)
        te, tt = self.torch.logits(x), self.torch.logits(x, train=True)
        je, jt = self.jax.logits(x), self.jax.logits(x, train=True)
        rows = [X.row(self.name, "dropout0.train==eval.torch", tt, te, 0.0),
                X.row(self.name, "dropout0.train==eval.jax", jt, je, 0.0),
                X.row(self.name, "dropout0.train.cross", jt, tt, X.TOL["logits"])]
        n = 200_000
        for b in (self.torch, self.jax):  # one sequence per draw keeps this cheap; the z-test scales
            lt = b.dropout_losses(self.tensors, DROP_P, x[:1], y[:1], DROP_DRAWS, seed=1)
            ones = b.dropout_ones(n, seed=2)
            kept = ones[ones != 0]
            scale_ok = bool(np.all(np.abs(kept - 1.0 / (1.0 - DROP_P)) <= 1e-6))
            # mean of inverted dropout on ones is 1; its standard error is sqrt(p / (1 - p) / n)
            se = np.sqrt(DROP_P / (1 - DROP_P) / n)
            dev = abs(float(ones.mean()) - 1.0)
            rows.append(X.Row(self.name, f"dropout{DROP_P}.scale.{b.name}", dev, dev / se, X.TOL["dropout_z"],
                              scale_ok and dev / se <= X.TOL["dropout_z"],
                              f"kept fraction {kept.size / n:.4f}, kept value {kept[0]:.6f}"
                              + ("" if scale_ok else " (kept values are not 1/(1-p))")))
            setattr(self, f"_drop_{b.name}", lt)
        a, b_ = self._drop_jax, self._drop_torch
        se = np.sqrt(a.var(ddof=1) / a.size + b_.var(ddof=1) / b_.size)
        d = abs(float(a.mean() - b_.mean()))
        ev = self._fg_torch[1] if hasattr(self, "_fg_torch") else self.torch.loss(x, y)
        rows.append(X.Row(self.name, f"dropout{DROP_P}.mean_loss", d, d / se, X.TOL["dropout_z"],
                          bool(d / se <= X.TOL["dropout_z"]),
                          f"torch {b_.mean():.4f} jax {a.mean():.4f} (eval {ev:.4f}), {DROP_DRAWS} draws each"))
        return rows

    def check_kernels(self) -> list[X.Row]:
        """--kernels=auto against the reference in each backend (the kernels this machine's auto
        picks): logits, loss and gradients on one batch, then one AdamW step, at the cross-backend
        tolerances (the same math, summed in another order)."""
        x, y = self.batch(ADAMW_ITER)
        rows = []
        for ref in (self.torch, self.jax):
            key = f"{ref.name}.auto"
            if key not in self._b:
                self._b[key] = type(ref)(self.cfg.replace(kernels="auto"), self.tensors, self.device)
            fast = self._b[key]
            ref.load(self.tensors)
            tag = f"kernels.{ref.name}"
            if not fast.kernels:
                rows.append(X.Row(self.name, tag, 0.0, 0.0, 0.0, True, "no kernels on this device: the reference"))
                continue
            (lr, sr, gr), (lf, sf, gf) = ref.forward_grad(x, y), fast.forward_grad(x, y)
            a, b = (r.train_steps(self.tensors, [(x, y)], [ADAMW_ITER]) for r in (fast, ref))
            t = self.cfg.train
            rows += [X.row(self.name, f"{tag}.logits", lf, lr, X.TOL["logits"], ",".join(fast.kernels)),
                     X.row(self.name, f"{tag}.loss", sf, sr, X.TOL["loss"]),
                     X.worst(self.name, f"{tag}.grads", gf, gr, X.TOL["grad"], GRAD_FLOOR),
                     X.adamw_params(self.name, a["params"], b["params"], a["m"], b["m"], loop.lr_at(ADAMW_ITER, t),
                                    t.beta1, t.adam_eps, X.TOL["adamw_param"])]
            rows[-1].check = f"{tag}.adamw.params"
        return rows

    def check_roundtrip(self) -> list[X.Row]:
        """torch -> file -> jax -> file -> torch: every tensor bit-identical to the start."""
        with tempfile.TemporaryDirectory() as d:
            self.torch.load(self.tensors)
            f1, f2 = os.path.join(d, "t.safetensors"), os.path.join(d, "j.safetensors")
            W.save(f1, self.torch.to_canonical(), self.cfg)
            t1, c1 = W.load(f1)
            self.jax.load(t1)
            W.save(f2, self.jax.to_canonical(), c1)
            t2, c2 = W.load(f2)
            self.torch.load(t2)
            back = self.torch.to_canonical()
        same = set(back) == set(self.tensors) and c2.model == self.cfg.model
        bad = [k for k in self.tensors if k in back and not np.array_equal(back[k], self.tensors[k])]
        d = max((float(np.max(np.abs(back[k] - self.tensors[k]))) for k in bad), default=0.0)
        note = f"{len(self.tensors)} tensors bit-identical" if not bad and same else \
            f"{len(bad)} tensors differ, e.g. {bad[:1]}" if bad else "names or config differ"
        return [X.Row(self.name, "roundtrip", d, d, 0.0, same and not bad, note)]


def dataset(data_dir: str | None = None) -> str:
    """The prepared shakespeare_char directory: DATA_DIR/shakespeare_char, prepared there if missing
    (from MODGPT_TINYSHAKESPEARE or a download); raises DataError."""
    from modgpt.prepare import prepare
    base = data_dir or os.path.join(tempfile.gettempdir(), "modgpt_parity_data")
    path = D.dataset_dir(base, "shakespeare_char")
    if not os.path.isfile(os.path.join(path, "meta.json")):
        prepare("shakespeare_char", data_dir=base, progress=False)
    return path

