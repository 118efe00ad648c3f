"""python -m parity_tests [--preset NAME | --all | --case NAME] [--device cpu|cuda]
[--dtype float32|bfloat16] [--seq_len N] [--checks a,b] [--json[=FILE]] [--data_dir DIR]

Loads both backends with the same weights for each configuration, runs the checks and prints one
table (case, check, max abs diff, relative error, tolerance, pass/fail), each case's rows as it ends. Exit status: 0 all passed,
1 some check failed, 2 bad usage or setup.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from modgpt import hostmem
from modgpt.presets import PRESETS
from parity_tests import cases as K

PROG = "python -m parity_tests"
CHECK_NAMES = ("forward", "grads", "adamw", "kernels", "generate", "eval", "bf16", "dropout", "roundtrip", "trajectory")
# With --dtype bfloat16 the checks that have a bf16 meaning run in bf16 (each backend's own mixed
# precision); grads, AdamW, greedy tokens, dropout and round trips are float32 by definition.
BF16_CHECKS = ("forward", "trajectory")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the whole usage otherwise)
        print(f"error: {message}; see `{PROG} --help`", file=sys.stderr)
        sys.exit(2)


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[1], allow_abbrev=False)
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--preset", choices=sorted(PRESETS), action="append",
                     help="a preset (repeatable); default: every preset")
    sel.add_argument("--all", action="store_true",
                     help="every preset and every one-option variant of the gpt2 and llama bases")
    sel.add_argument("--case", action="append", metavar="NAME",
                     help="one case by name, e.g. 'gpt2+normalization=rmsnorm' (repeatable; see --list)")
    p.add_argument("--list", action="store_true", help="list the case names and exit")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="float32: every check (bf16 logits included); bfloat16: logits, loss and "
                        "trajectory in each backend's bf16 mixed precision")
    p.add_argument("--seq_len", type=int, default=K.PARITY_SIZE["block_size"],
                   help="sequence length = block_size (>= 256; RoPE layout bugs hide on short ones)")
    p.add_argument("--checks", default="", help=f"comma-separated subset of {','.join(CHECK_NAMES)}")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="machine-readable results: on stdout (instead of the table), or into FILE")
    p.add_argument("--data_dir", default=None,
                   help="where shakespeare_char is (or gets) prepared; default a temp dir")
    return p


def select(args) -> dict:
    size = {**K.PARITY_SIZE, "block_size": args.seq_len}
    if args.all or args.case or args.list:
        every = K.cases(size)
        if args.case:
            bad = [c for c in args.case if c not in every]
            if bad:
                raise ValueError(f"unknown case '{bad[0]}'; `{PROG} --list` shows the names")
            return {c: every[c] for c in args.case}
        return every
    names = args.preset or list(PRESETS)
    return {n: K.make(n, size) for n in names}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    hostmem.keep_freed_blocks(args.device)  # before jax starts its threads (modgpt/hostmem.py)
    if args.seq_len < 256:
        parser().error(f"option '--seq_len' must be >= 256 (RoPE layout bugs hide on short sequences), "
                       f"got {args.seq_len}")
    checks = [c for c in args.checks.split(",") if c] or list(CHECK_NAMES)
    bad = [c for c in checks if c not in CHECK_NAMES]
    if bad:
        parser().error(f"option '--checks' must name some of {', '.join(CHECK_NAMES)}; got '{bad[0]}'")
    if args.dtype != "float32":
        checks = [c for c in checks if c in BF16_CHECKS]
        if not checks:
            parser().error(f"--dtype {args.dtype} runs only the checks {', '.join(BF16_CHECKS)}")
    try:
        selected = select(args)
    except Exception as e:  # ConfigError for an impossible seq_len/shape, unknown case
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(selected))
        return 0
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported
    try:
        device_setup(args)
        from parity_tests.checks import Case, dataset
        data = dataset(args.data_dir)
    except Exception as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    from modgpt.io import write_json
    from parity_tests import compare as X
    t0 = time.time()
    rows, done = [], []

    def result() -> dict:
        return dict(passed=all(r.passed for r in rows), complete=len(done) == len(selected), device=args.device,
                    dtype=args.dtype, seq_len=args.seq_len, checks=checks, cases=list(selected),
                    cases_done=list(done), wall_time_s=round(time.time() - t0, 1), tolerances=X.TOL,
                    rows=[{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                           for k, v in r.to_dict().items()} for r in rows])
    table = X.Table(selected)
    if args.json != "-":
        print(table.header(), flush=True)
    for name, cfg in selected.items():
        case = Case(name, cfg, data, args.device)
        new = case.run(checks, args.dtype)
        rows += new
        done.append(name)
        if args.json != "-":
            # the table once, growing case by case, and the JSON so far (complete: false): a run
            # stopped part-way (a time limit on a lent GPU) keeps what it measured
            print(table.rows(new), flush=True)
            if args.json and len(done) < len(selected):
                write_json(args.json, result())
    res = result()
    if args.json == "-":
        print(json.dumps(res, indent=1))
    else:
        print(f"{X.summary(rows)}; {len(selected)} configurations, device {args.device}, {args.dtype}, "
              f"seq_len {args.seq_len}, {res['wall_time_s']:.0f}s")
        if args.json:
            write_json(args.json, res)
    return 0 if res["passed"] else 1


def device_setup(args) -> None:
    """--device cuda needs both frameworks on the GPU; fp32 parity needs true fp32 matmuls."""
    if args.device != "cuda":
        return
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device (CPU-only torch build or no GPU); "
                           "use --device cpu")
    import jax
    try:
        jax.devices("gpu")
    except RuntimeError:
        raise RuntimeError("--device cuda: jax sees no GPU (install jax[cuda12]); use --device cpu") from None
    # TF32 would make fp32 matmuls ~1e-3 relative: both frameworks must run real fp32
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


if __name__ == "__main__":
    sys.exit(main())
