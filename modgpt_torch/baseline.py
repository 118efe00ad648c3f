"""python -m modgpt_torch.baseline [CONFIG_FILE] [--preset gpt2] [--key=value ...]

A plain eager PyTorch GPT training loop in the style of nanoGPT (one small model class, AdamW,
clip, step): the reference point `python -m modgpt.bench --backends ...,nanogpt` measures the torch
backend against. It is deliberately minimal: no registries, no parallelism, no evaluation, no
checkpoints. It reads the same config and the same batches (modgpt.data.BatchSampler) and writes the
same run log (header and iter records), so the bench times all backends the same way.
Only the GPT-2 architecture (what nanoGPT implements) is accepted.
"""
from __future__ import annotations

import contextlib
import math
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from modgpt import cli, loop, report
from modgpt import config as C
from modgpt import data as D
from modgpt import hardware as HW

BACKEND = "nanogpt"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Attention(nn.Module):
    def __init__(self, m: C.ModelConfig):
        super().__init__()
        self.n_head, self.p = m.n_head, m.dropout
        self.c_attn = nn.Linear(m.n_embd, 3 * m.n_embd, bias=m.bias)
        self.c_proj = nn.Linear(m.n_embd, m.n_embd, bias=m.bias)
        self.drop = nn.Dropout(m.dropout)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
                   for t in self.c_attn(x).split(D, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        return self.drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, D)))


class Block(nn.Module):
    def __init__(self, m: C.ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(m.n_embd, eps=m.norm_eps, bias=m.bias)
        self.attn = Attention(m)
        self.ln_2 = nn.LayerNorm(m.n_embd, eps=m.norm_eps, bias=m.bias)
        self.c_fc = nn.Linear(m.n_embd, 4 * m.n_embd, bias=m.bias)
        self.c_proj = nn.Linear(4 * m.n_embd, m.n_embd, bias=m.bias)
        self.drop = nn.Dropout(m.dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.drop(self.c_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class GPT(nn.Module):
    def __init__(self, m: C.ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(m.vocab_size, m.n_embd)
        self.wpe = nn.Embedding(m.block_size, m.n_embd)
        self.drop = nn.Dropout(m.dropout)
        self.h = nn.ModuleList(Block(m) for _ in range(m.n_layer))
        self.ln_f = nn.LayerNorm(m.n_embd, eps=m.norm_eps, bias=m.bias)
        self.lm_head = nn.Linear(m.n_embd, m.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.ndim >= 2:  # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2L)
                std = m.init_std / math.sqrt(2 * m.n_layer) if name.endswith("c_proj.weight") else m.init_std
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def check_architecture(m: C.ModelConfig) -> None:
    """nanoGPT's model only: learned positions, LayerNorm, GELU, pre-norm, 4x MLP, tied head, MHA."""
    want = dict(position_encoding="learned_absolute", activation="gelu", norm_position="pre",
                ffn_type="standard", weight_tying=True, qk_norm=False)
    bad = [k for k, v in want.items() if getattr(m, k) != v]
    if m.normalization != ("layernorm" if m.bias else "layernorm_nobias"):
        bad.append("normalization")
    if m.kv_heads != m.n_head:
        bad.append("n_kv_head")
    if m.ffn_hidden_size != 4 * m.n_embd:
        bad.append("ffn_hidden")
    if bad:
        raise loop.SetupError(f"the nanogpt baseline implements the gpt2 architecture only; {bad[0]}="
                              f"{getattr(m, bad[0])!r} is not it (use --preset gpt2)")


def main(argv=None) -> int:
    args = cli.parse(argv, prog="python -m modgpt_torch.baseline")
    try:
        check_architecture(args.config.model)
        run = loop.setup(args, BACKEND, has_accelerator=torch.cuda.is_available())
        check_architecture(run.cfg.model)
    except (C.ConfigError, D.DataError, loop.SetupError, ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        return train(run)
    finally:
        if run.lock is not None:
            run.lock.release()


def train(run) -> int:
    cfg, t = run.cfg, run.cfg.train
    cuda = torch.cuda.is_available() and cfg.system.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(t.seed)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(cfg.model).to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=t.learning_rate,
                            betas=(t.beta1, t.beta2), eps=t.adam_eps, **({"fused": True} if cuda else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=t.dtype == "float16")
    ctx = torch.autocast(device.type, dtype=DTYPES[t.dtype]) if t.dtype != "float32" else contextlib.nullcontext()
    step_model = torch.compile(model) if t.compile else model
    sampler = D.BatchSampler(run.data_path, cfg.model.block_size, t.batch_size, t.seed,
                             vocab_size=cfg.model.vocab_size)
    dev_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = HW.peak_tflops(dev_name, "tf32" if cuda and t.dtype == "float32" else t.dtype, cfg.system.peak_tflops)
    log = loop.open_log(run, enabled=True)
    versions = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
    log.header(**report.header_record(run, BACKEND, dev_name, 1, peak, versions, "none (eager nanoGPT-style loop)"))
    print(f"nanogpt baseline: {C.arch_name(cfg.model)} on {dev_name}, {t.max_iters} iterations", flush=True)
    accum = t.gradient_accumulation_steps
    done = None  # when the previous step ended: a step's time runs from there, as the train commands'
    for it in range(t.max_iters):
        t0 = time.time() if done is None else done
        lr = loop.lr_at(it, t)
        for g in opt.param_groups:
            g["lr"] = lr
        for micro in range(accum):
            x, y = (torch.from_numpy(a.astype(np.int64)).to(device, non_blocking=True)
                    for a in sampler.get("train", it, micro))
            with ctx:
                loss = step_model(x, y) / accum
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        lossf = loss.item() * accum  # the host sync that ends the timed step (as nanoGPT's loop)
        done = time.time()
        dt = done - t0
        if loop.log_due(it, cfg):
            mem = (torch.cuda.max_memory_allocated(device) if cuda
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            log.iter(iter=it, **loop.iter_stats(cfg, lossf, lr, float(norm), dt, peak, 1, mem,
                                                (it + 1) * loop.tokens_per_iter(cfg), 0))
    log.end("completed", iter=t.max_iters, message="baseline run")
    log.close()
    print(f"done: {t.max_iters} iterations, last loss {lossf:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
