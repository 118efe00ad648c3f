"""What a training run prints and logs about itself, the same from both backends: the architecture
summary, the start-up report, the header record, per-iteration progress, and the one-line messages
of a run that stops early (README's error tables quote them)."""
from __future__ import annotations

import math
import os
import sys
import time

from modgpt import config as C
from modgpt import flops as F
from modgpt import memory as MEM
from modgpt.loop import Run, tokens_per_iter
from modgpt.memory import fmt_bytes


def summary_tree(cfg: C.Config, params: int | None = None, flops_per_token: float | None = None) -> str:
    """The startup architecture summary both backends print."""
    m = cfg.model
    if params is None or flops_per_token is None:
        c = F.count(m)
        params, flops_per_token = c.params, c.flops_per_token
    act = (f"{m.ffn_type} ({C._ACT.get(m.ffn_activation, m.ffn_activation)} gate)" if m.gated else m.activation)
    pos = m.position_encoding + {"rope": f" (theta={m.rope_theta})",
                                 "alibi": " (additive bias, slopes 2^(-8i/n_head))"}.get(m.position_encoding, "")
    ratio = m.ffn_hidden_size / m.n_embd
    rows = [
        ("Architecture Name", C.arch_name(m)),
        ("Parameters", f"{params:,} ({params / 1e6:.2f}M)"),
        ("FLOPs/token (train)", f"{flops_per_token:,.0f} ({flops_per_token / 1e9:.3f} GFLOP)"),
    ]
    tree = [
        ("Normalization", m.normalization + (f" (eps={m.norm_eps:g})")),
        ("Activation", act),
        ("Position Encoding", pos),
        ("Attention Backend", m.attention_backend),
    ]
    if C.attention_label(m):
        tree.append(("Attention Heads", f"{m.n_head} query / {m.kv_heads} key-value ({C.attention_label(m)}, "
                                        f"{m.n_head // m.kv_heads} query heads per kv head)"))
    if m.qk_norm:
        tree.append(("QK Norm", f"{m.normalization} per head over head_dim {m.head_dim}"))
    tree += [
        ("Norm Position", m.norm_position),
        ("FFN Type", f"{m.ffn_type} ({ratio:.2f}x expansion, hidden {m.ffn_hidden_size})"),
        ("Bias", "Yes" if m.bias else "No"),
        ("Weight Tying", "Yes" if m.weight_tying else "No"),
        ("Dropout", f"{m.dropout:.3f}"),
    ]
    lines = ["MODEL ARCHITECTURE:"]
    lines += [f"  {k + ':':<23}{v}" for k, v in rows]
    for i, (k, v) in enumerate(tree):
        branch = "'-" if i == len(tree) - 1 else "|-"
        lines.append(f"  {branch} {k + ':':<20}{v}")
    return "\n".join(lines)


def data_line(run) -> str:
    """The dataset: tokenizer, vocabulary, its tokens (in how many shards) and the epochs the run covers."""
    m, cfg = run.meta, run.cfg
    n_shards = len(m["shards"]["train"]) + len(m["shards"]["val"]) if "shards" in m else 0
    where = f", {n_shards} shards" if n_shards else ""
    epochs = tokens_per_iter(cfg) * cfg.train.max_iters / max(1, m["train_tokens"])
    return (f"{run.data_path} ({m['tokenizer']}, vocab {m['vocab_size']}, {m['train_tokens']:,} train / "
            f"{m['val_tokens']:,} val tokens{where}); the run covers {epochs:.3g} epochs")


def startup_report(run: Run, backend: str, device_name: str, n_devices: int, precision: str,
                   peak: float | None, parallel_desc: str, extra: dict | None = None) -> str:
    """The report both backends print before training."""
    cfg = run.cfg
    c = F.count(cfg.model)
    lines = [f"modgpt {backend} backend", summary_tree(cfg, c.params, c.flops_per_token)]
    rows = [
        ("size", run.size_reason),
        ("device", f"{device_name} x{n_devices}"),
        ("precision", precision),
        ("peak", f"{peak:g} TFLOP/s per device" if peak else "unknown (MFU not reported; set --peak_tflops)"),
        ("parallel", parallel_desc),
        ("tokens/iter", f"{tokens_per_iter(cfg):,} (batch {cfg.train.batch_size} x accum "
                        f"{cfg.train.gradient_accumulation_steps} x block {cfg.model.block_size})"),
        ("data", data_line(run)),
        ("schedule", schedule_line(cfg.train, run.schedule or {})),
        ("memory floor", MEM.summary(MEM.for_run(cfg, backend, n_devices))),
        ("out_dir", run.out_dir + ("  (resuming)" if run.resume else "")),
    ]
    rows += list((extra or {}).items())
    lines.append("TRAINING:")
    lines += [f"  {k + ':':<14}{v}" for k, v in rows]
    return "\n".join(lines)


def schedule_line(t: C.TrainConfig, src: dict) -> str:
    """The report's schedule row: each length with where it came from, and a note when the run stops
    before its schedule ends (a longer schedule, to be resumed, or a recipe cut short)."""
    def where(k):
        return f" ({src[k]})" if src.get(k) else ""
    line = (f"{t.max_iters} iters{where('max_iters')}; lr {t.learning_rate:g} -> {t.min_lr:g}; warmup "
            f"{t.warmup_iters}{where('warmup_iters')}; cosine decay to iter {t.lr_decay_iters}{where('lr_decay_iters')}")
    end = max(t.warmup_iters, t.lr_decay_iters)
    if t.max_iters < end:
        line += f"; note: the run stops at {t.max_iters / end:.0%} of its schedule (resume with --max_iters={end})"
    return line


def header_record(run: Run, backend: str, device_name: str, n_devices: int, peak: float | None,
                  versions: dict, parallel_desc: str) -> dict:
    c = F.count(run.cfg.model)
    return dict(backend=backend, config=run.cfg.to_dict(), arch_name=C.arch_name(run.cfg.model),
                params=c.params, flops_per_token=c.flops_per_token, device=device_name, n_devices=n_devices,
                peak_tflops=peak, dtype=run.cfg.train.dtype, parallel=parallel_desc,
                tokens_per_iter=tokens_per_iter(run.cfg), versions=versions, resumed=run.resume,
                memory_floor_bytes=MEM.for_run(run.cfg, backend, n_devices).total, pid=os.getpid())


def fmt_duration(seconds: float) -> str:
    """45s, 3m12s, 2h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Per-iteration output: a tqdm bar on a terminal; otherwise (a log file, a cluster job) a plain
    line every log_interval with the iteration, loss, tokens/s and an ETA."""

    def __init__(self, cfg: C.Config, start_iter: int, enabled: bool = True):
        self.cfg = cfg
        self.enabled = enabled
        self.bar = None
        self.first: tuple[float, int] | None = None  # (time, iteration) of the first step seen
        if enabled and cfg.train.progress and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.train.max_iters, initial=start_iter, unit="it", dynamic_ncols=True)

    def eta(self, it: int, now: float | None = None) -> float | None:
        """Seconds left after iteration it, at the pace since the first step seen (evaluations and
        checkpoints included; the first step's compilation not); None before two steps are seen."""
        now = time.time() if now is None else now
        if self.first is None:
            self.first = (now, it)
            return None
        t0, i0 = self.first
        return (now - t0) / (it - i0) * (self.cfg.train.max_iters - 1 - it) if it > i0 else None

    def step(self, it: int, stats: dict) -> None:
        """Called every iteration with at least loss (or None); prints on log intervals."""
        if not self.enabled:
            return
        eta = self.eta(it)
        if self.bar is not None:
            self.bar.update(1)
            if stats.get("loss") is not None:
                self.bar.set_postfix_str(self.line(it, stats, short=True), refresh=False)
        elif stats.get("loss") is not None:
            print(self.line(it, stats, eta=eta), flush=True)

    def line(self, it: int, s: dict, short: bool = False, eta: float | None = None) -> str:
        mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else "-"
        head = f"iter {it}: loss {s['loss']:.4f}" if short else f"iter {it}/{self.cfg.train.max_iters}: loss {s['loss']:.4f}"
        parts = [head, f"lr {s['lr']:.2e}", f"{1000 * s['dt']:.0f}ms/it", f"{s['tokens_per_sec']:,.0f} tok/s",
                 f"mfu {mfu}"]
        if not short:
            parts += [f"mem {fmt_bytes(s.get('peak_mem_bytes'))}", f"gnorm {s['grad_norm']:.3f}",
                      f"eta {fmt_duration(eta) if eta is not None else '-'}"]
        return ", ".join(parts)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def done_message(iters: int, best: float, checkpoint: str | None) -> str:
    """The line a finished run prints: iterations, best validation loss, where its checkpoint is."""
    if math.isinf(best) and checkpoint is None:
        return f"done: {iters} iterations (eval_interval=0: no evaluation, no checkpoint)"
    return f"done: {iters} iterations, best val loss {best:.4f}; checkpoint {checkpoint or '(none)'}"


def resume_hint(backend: str, out_dir: str) -> str:
    mod = "modgpt_jax" if backend == "jax" else "modgpt_torch"
    return f"resume with: python -m {mod}.train --init_from=resume --out_dir={out_dir}"


# One wording for the messages both backends print when a run stops early (README, errors table).


def no_checkpoint_note(out_dir: str) -> str:
    return (f"note: '{out_dir}' holds a run that stopped before its first checkpoint; "
            f"starting it again from iteration 0")


def interrupted_message(signame: str, it: int, ckpt: str, backend: str, out_dir: str) -> str:
    return f"stopped by {signame} at iteration {it}; saved {ckpt}; {resume_hint(backend, out_dir)}"


def aborted_message(signame: str, it: int, ckpt: str | None, backend: str, out_dir: str) -> str:
    """A second signal: the run stops where it is; the last complete checkpoint is the one to resume."""
    since = (f"the last complete checkpoint is {ckpt}" if ckpt else
             "no checkpoint yet, so a resume starts again from iteration 0")
    return f"stopped at once by a second {signame} at iteration {it}; {since}; {resume_hint(backend, out_dir)}"


def nonfinite_message(it: int, loss, grad_norm, last_good: str | None) -> str:
    good = f"{last_good} (untouched)" if last_good else "none yet"
    return (f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at iteration {it}; last good "
            f"checkpoint: {good}; lower --learning_rate, or pass --skip_nonfinite=True to skip such steps")


def save_failed_message(it: int, err: Exception, last_good: str | None, backend: str, out_dir: str) -> str:
    """A checkpoint write failed: OSError(ENOSPC) from plain writes, RuntimeError from torch.save's
    writer, tensorstore errors through orbax; all mean the same to the user."""
    why = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:200]
    good = f"{last_good} is intact" if last_good else "there is no earlier checkpoint"
    return (f"could not write the checkpoint of iteration {it} in '{out_dir}' ({why or type(err).__name__}); "
            f"{good}; free space, then {resume_hint(backend, out_dir)}")
