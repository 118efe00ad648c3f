"""python -m modgpt_jax.sample --out_dir=RUN [--start=TEXT|FILE:path] [--num_samples=N]
[--max_new_tokens=N] [--temperature=F] [--top_k=K] [--seed=S] [--device=D] (decoding: inference.py)."""
from __future__ import annotations

import sys

from modgpt import cli, commands
from modgpt import data as D


def main(argv=None) -> int:
    opt = commands.sample_settings("python -m modgpt_jax.sample", argv)
    from modgpt_jax.distributed import inference_platform
    inference_platform(opt.device)
    from modgpt_jax.checkpoint import CheckpointError, exit_if_unreadable
    from modgpt_jax.inference import generate, load_model
    try:
        model, cfg, meta = load_model(opt.out_dir)
        data = D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
        tok = D.get_tokenizer(D.load_meta(data), data)
        ids = tok.encode(opt.start)
    except (CheckpointError, D.DataError) as e:
        if isinstance(e, CheckpointError):
            exit_if_unreadable(e)
        cli.fail(str(e))
    if not ids:
        cli.fail("the prompt encodes to no tokens; give --start=TEXT")
    toks = generate(model, ids, opt.max_new_tokens, opt.num_samples, opt.temperature, opt.top_k, opt.seed)
    for row in toks:
        print(tok.decode(row))
        print("---------------")
    return 0


if __name__ == "__main__":
    sys.exit(main())
