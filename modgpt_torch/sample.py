"""python -m modgpt_torch.sample --out_dir=RUN [--start=TEXT|FILE:path] [--num_samples=N]
[--max_new_tokens=N] [--temperature=F] [--top_k=K] [--seed=S] [--device=D]: decode from the latest checkpoint."""
from __future__ import annotations

import sys

import torch

from modgpt import cli, commands
from modgpt import data as D

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
    opt = commands.sample_settings("python -m modgpt_torch.sample", argv)
    from modgpt_torch import checkpoint as CK
    device = CK.inference_device(opt.device)
    try:
        model, cfg, ck = CK.load_model(opt.out_dir, device=device)
        data = D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
        tok = D.get_tokenizer(D.load_meta(data), data)
        ids = tok.encode(opt.start)
    except (CK.CheckpointError, D.DataError) as e:
        cli.fail(str(e))
    if not ids:
        cli.fail("the prompt encodes to no tokens; give --start=TEXT")
    torch.manual_seed(opt.seed)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    for _ in range(opt.num_samples):
        y = model.generate(x, opt.max_new_tokens, temperature=opt.temperature, top_k=opt.top_k or None)
        print(tok.decode(y[0].tolist()))
        print("---------------")
    return 0


if __name__ == "__main__":
    sys.exit(main())
