"""python -m modgpt_torch.sample --out_dir=RUN [--start=TEXT|FILE:path] [--num_samples=N]
[--max_new_tokens=N] [--temperature=F] [--top_k=K] [--seed=S]: decode from the latest checkpoint."""
from __future__ import annotations

import os
import sys

import torch

from modgpt import cli
from modgpt import data as D

FLAGS = {"start": "prompt text, or FILE:path (default: newline)", "num_samples": "samples (default 3)",
         "max_new_tokens": "tokens per sample (default 500)", "temperature": "default 0.8 (0 = greedy)",
         "top_k": "default 200 (0 = off)"}


def flag(args, name, typ, default):
    v = args.flags.get(name, default)
    try:
        return typ(v)
    except (TypeError, ValueError):
        cli.fail(f"option '--{name}' must be {typ.__name__}, got {v!r}")


def end_of_run_sample(model, cfg, device, max_chars: int = 200, temperature: float = 0.8,
                      top_k: int = 200) -> str | None:
    """A short seeded sample (~max_chars characters from a newline prompt) printed when training ends;
    None when the run's data has no text tokenizer. Leaves the global torch RNG as it found it."""
    plan = D.end_sample_plan(cfg.train.data_dir, cfg.train.dataset, max_chars)
    if plan is None:
        return None
    tok, ids, n_new, vocab = plan
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)
            x = torch.tensor([ids], dtype=torch.long, device=device)
            row = model.generate(x, n_new, temperature=temperature, top_k=top_k)[0, len(ids):].tolist()
    except RuntimeError:  # non-finite weights (a run that skipped non-finite steps): nothing to show
        return None
    finally:
        model.train(was_training)
    return D.decode_sample(tok, row, vocab, max_chars)


def main(argv=None) -> int:
    args = cli.parse(argv, prog="python -m modgpt_torch.sample", extra_flags=FLAGS)
    out_dir = args.config.train.out_dir
    if not out_dir:
        cli.fail("usage: python -m modgpt_torch.sample --out_dir=RUN [--start=TEXT] ...")
    from modgpt_torch import checkpoint as CK
    start = str(flag(args, "start", str, "\n"))
    n, new = flag(args, "num_samples", int, 3), flag(args, "max_new_tokens", int, 500)
    temp, top_k = flag(args, "temperature", float, 0.8), flag(args, "top_k", int, 200)
    seed = args.config.train.seed if "seed" in args.explicit else 1337
    device = "cuda" if torch.cuda.is_available() and args.config.system.device != "cpu" else "cpu"
    try:
        model, cfg, ck = CK.load_model(out_dir, device=device)
        meta = D.load_meta(D.dataset_dir(cfg.train.data_dir, cfg.train.dataset))
        tok = D.get_tokenizer(meta)
        if start.startswith("FILE:"):
            path = start[5:]
            if not os.path.isfile(path):
                raise D.DataError(f"prompt file '{path}' not found")
            with open(path, encoding="utf-8") as f:
                start = f.read()
        ids = tok.encode(start)
    except (CK.CheckpointError, D.DataError) as e:
        cli.fail(str(e))
    if not ids:
        cli.fail("the prompt encodes to no tokens; give --start=TEXT")
    torch.manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    for _ in range(n):
        y = model.generate(x, new, temperature=temp, top_k=top_k or None)
        print(tok.decode(y[0].tolist()))
        print("---------------")
    return 0


if __name__ == "__main__":
    sys.exit(main())
