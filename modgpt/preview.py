"""How a training run on this machine would resolve its config, for the commands that describe one
without running it (python -m modgpt.config, modgpt.flops, modgpt.memory): size=auto, the vocabulary
from --dataset/--data_dir, the schedule. Nothing is prepared, written or imported from a framework."""
from __future__ import annotations

import json
import os

from modgpt import config as C
from modgpt import data as D
from modgpt import hardware as HW
from modgpt import loop, report
from modgpt.presets import SCHEDULE_KEYS
from modgpt.resolve import data_vocab, resolve_auto_size, resolve_schedule

# The vocabulary a not-yet-prepared dataset will have: Tiny Shakespeare's characters and GPT-2's BPE.
PREPARED_VOCAB = {"shakespeare_char": (65, "Tiny Shakespeare's {} characters"),
                  "shakespeare": (50257, "GPT-2 BPE's {} tokens")}


def resolve(args) -> tuple[C.Config, dict[str, str]]:
    """(the config a run would train, {"size"/"schedule"/"vocab_size": how it resolved, in words}).
    A weights file in --init_from fixes the architecture as in a run; problems exit 2 in one line."""
    from modgpt import cli, initfrom
    try:
        return _resolve(args, initfrom)
    except (C.ConfigError, loop.SetupError, ValueError, FileNotFoundError) as e:
        cli.fail(str(e).splitlines()[0])


def _resolve(args, initfrom) -> tuple[C.Config, dict[str, str]]:
    notes = {}
    if initfrom.preload(args) is not None:
        notes["init_from"] = f"the architecture of {args.config.train.init_from}"
    cfg, explicit = args.config, set(args.explicit)
    resume = cfg.train.init_from == "resume"
    saved_path = os.path.join(cfg.train.out_dir, loop.CONFIG_NAME)
    if resume and cfg.train.out_dir and os.path.isfile(saved_path):
        saved = loop.read_saved_config(saved_path)
        flat = {**C.to_flat(saved), **{k: getattr(getattr(cfg, C.KEY_SECTION[k]), k) for k in explicit}}
        cfg = C.from_flat({**flat, "init_from": "resume", "out_dir": cfg.train.out_dir})
        notes["size"] = f"from the run in {cfg.train.out_dir} ({C.arch_name(cfg.model)})"
        budget: set[str] = set()
    else:
        accel, why = HW.accelerator_visible(cfg.system.device)
        size = cfg.system.size
        cfg, reason, budget = resolve_auto_size(cfg, explicit, accel)
        notes["size"] = f"{reason} ({why})" if size == "auto" else reason
    origin = {k: args.origin(k) or ("CPU budget" if k in budget else "the resumed run" if resume else "default")
              for k in SCHEDULE_KEYS}
    cfg, schedule = resolve_schedule(cfg, explicit, origin, follow=not resume)
    notes["schedule"] = report.schedule_line(cfg.train, schedule)
    cfg, notes["vocab_size"] = _vocab(cfg, explicit, resume)
    return cfg, notes


def _vocab(cfg: C.Config, explicit: set[str], resume: bool) -> tuple[C.Config, str]:
    t = cfg.train
    path = D.dataset_dir(t.data_dir, t.dataset)
    if "vocab_size" in explicit or resume:
        return cfg, f"{cfg.model.vocab_size} ({'set' if 'vocab_size' in explicit else 'the resumed run'})"
    try:
        with open(os.path.join(path, "meta.json")) as f:
            n = int(json.load(f)["vocab_size"])
        what, where = f"the {n} tokens of {path}", ""
    except (OSError, ValueError, KeyError, TypeError):
        if t.dataset not in PREPARED_VOCAB:
            return cfg, (f"{cfg.model.vocab_size} (the default: dataset '{t.dataset}' is not prepared in "
                         f"{t.data_dir}; a run needs it, and its vocabulary sets vocab_size)")
        n, what = PREPARED_VOCAB[t.dataset]
        what, where = what.format(n), f"; '{t.dataset}' is not in {t.data_dir} yet: the first run prepares it"
    cfg = data_vocab(cfg, explicit, resume, n)
    padded = " padded to a multiple of 64" if cfg.model.vocab_size != n else ""
    return cfg, f"{cfg.model.vocab_size} ({what}{padded}{where})"


def describe(notes: dict[str, str]) -> str:
    """The lines config/flops/memory print above their output."""
    lines = ["resolved as a training run here would (--device, --dataset and --data_dir change it):"]
    lines += [f"  {k + ':':<12}{v}" for k, v in notes.items()]
    return "\n".join(lines)
