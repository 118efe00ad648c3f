"""The evaluate command both backends run: `python -m modgpt_{jax,torch}.evaluate --out_dir RUN
[--tasks hellaswag] [--input FILE] [--limit N] [--json FILE] [--skip_unencodable]`. Options are checked
here once; each backend supplies its model's loglik function (modgpt.tasks)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from modgpt import cli
from modgpt import config as C
from modgpt import data as D
from modgpt import tasks as TK

OPTIONS = {"out_dir": "the run to evaluate (its latest checkpoint)", "device": None}
FLAGS = {"tasks": f"comma-separated tasks (default hellaswag; known: {', '.join(C.CHOICES['task'])})",
         "input": "the task's data file (default: downloaded once into DATA_DIR/<task>/)",
         "limit": "score only the first N items",
         "json": "write the figures and each item's chosen ending to this file",
         "skip_unencodable": "skip items the run's tokenizer cannot encode (counted) instead of stopping"}


@dataclass
class Settings:
    out_dir: str
    tasks: list[str]
    input: str | None
    limit: int | None
    json: str | None
    skip_unencodable: bool
    device: str


def task_names(value: str, option: str) -> list[str]:
    """The task names of a comma-separated option value; an unknown one is one error line."""
    names = [t.strip() for t in str(value).split(",") if t.strip()]
    for n in names:
        if n not in C.CHOICES["task"]:
            raise C.ConfigError(f"option '{option}': unknown task '{n}'{C.suggest(n, C.CHOICES['task'])}; "
                                f"known: {', '.join(C.CHOICES['task'])}")
    return names


def settings(prog: str, argv=None) -> Settings:
    args = cli.parse(argv, prog=prog, extra_flags=FLAGS, options=OPTIONS)
    out_dir = args.config.train.out_dir
    if not out_dir:
        cli.fail(f"give the run to evaluate: {prog} --out_dir=RUN")
    try:
        names = task_names(args.flags.get("tasks", "hellaswag"), "--tasks")
    except C.ConfigError as e:
        cli.fail(str(e))
    if not names:
        cli.fail("option '--tasks' names no task")
    given = args.flags.get("input")
    if given is True or (given and len(names) > 1):
        cli.fail("option '--input' takes one file, for one task: --tasks=NAME --input=FILE")
    limit = cli.positive_int_flag(args, "limit")
    out = cli.output_file_flag(args, "json")
    return Settings(out_dir, names, given, limit, out, args.flags.get("skip_unencodable") in (True, "True", "true", "1"),
                    args.config.system.device)


def load_items(name: str, given: str | None, cfg: C.Config, limit: int | None) -> list:
    path = TK.task_file(name, given, os.path.join(cfg.train.data_dir, name))
    items = TK.TASKS.get(name)().items(path)
    return items[:limit] if limit else items


def run(opt: Settings, cfg: C.Config, loglik) -> int:
    """Score every task with the backend's loglik, print one line each, write --json."""
    path = D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
    try:
        tok = D.get_tokenizer(D.load_meta(path), path)
        results = []
        for name in opt.tasks:
            items = load_items(name, opt.input, cfg, opt.limit)
            t0 = time.perf_counter()
            res = TK.score(name, items, tok.encode, cfg.model.block_size, loglik, opt.skip_unencodable)
            dt = time.perf_counter() - t0
            print(res.summary(), flush=True)
            print(f"{name}: scored {res.n} items in {dt:.1f} s ({res.n / max(dt, 1e-9):.1f} items/s, "
                  f"compilation included)", flush=True)
            results.append(res)
    except D.DataError as e:
        cli.fail(str(e))
    if opt.json:
        from modgpt.io import write_text
        write_text(opt.json, json.dumps({"out_dir": opt.out_dir, "results": [r.to_dict() for r in results]}, indent=1))
        print(f"wrote {opt.json}")
    return 0
