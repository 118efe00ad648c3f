"""Host time per training step of the JAX loop, by part (docs/performance.md, "Host work between steps").

    python benchmarks/host_cost.py --preset=gpt2 --data_dir=data

A synchronous loop leaves the device idle while the host builds the next batch, dispatches the step
and logs; this measures those costs where they do not depend on the model's width: the dispatch of
a step with GPT-2 124M's parameter arrays (12 layers; its cost grows with the number of arrays, not
their size) but a negligible compute (width 32, T 16), and the batch at 16 x 1024 tokens. Medians of
--steps calls, each with the device idle.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def median_ms(v: list[float]) -> float:
    return round(1000 * sorted(v)[len(v) // 2], 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--n_layer", type=int, default=12)
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    import jax

    from modgpt import config as C
    from modgpt import data as D
    from modgpt.presets import PRESETS
    from modgpt_jax.trainer import Trainer
    path = D.dataset_dir(a.data_dir, "shakespeare_char")
    if not os.path.isfile(os.path.join(path, "meta.json")):  # as the train commands do
        from modgpt.prepare import prepare
        prepare("shakespeare_char", data_dir=a.data_dir, progress=False)
    cfg = C.Config().replace(**PRESETS[a.preset], n_layer=a.n_layer, n_head=2, n_embd=32, block_size=16,
                             vocab_size=65, batch_size=16)
    tr = Trainer(cfg)
    small = D.BatchSampler(path, 16, 16, 0, vocab_size=65)
    tr.step(*tr.batch(small, 0), 0)  # compile
    fold, disp = [], []
    for it in range(1, a.steps):
        x, y = jax.block_until_ready(tr.batch(small, it))
        t0 = time.perf_counter()
        jax.block_until_ready(jax.random.fold_in(tr.base_key, it))
        t1 = time.perf_counter()
        h = tr.dispatch(x, y, it)
        t2 = time.perf_counter()
        h.read()
        fold.append(t1 - t0)
        disp.append(t2 - t1)
    wide = Trainer(cfg.replace(block_size=1024))
    big = D.BatchSampler(path, 1024, 16, 0, vocab_size=65)
    batch = []
    for it in range(a.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(wide.batch(big, it))
        batch.append(time.perf_counter() - t0)
    print(json.dumps(dict(preset=a.preset, n_layer=a.n_layer, device=jax.devices()[0].device_kind,
                          arrays=len(jax.tree.leaves((tr.params, tr.opt_state))),
                          dispatch_ms=median_ms(disp), of_which_fold_in_ms=median_ms(fold),
                          batch_16x1024_ms=median_ms(batch))))


if __name__ == "__main__":
    main()
