"""The core's commands, apart from the library modules they are named after (`python -m modgpt.config`,
`modgpt.flops`, `modgpt.memory` run the mains here), and the options of the backends' sample and
export commands, checked once here so that both backends take the same options the same way."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from modgpt import cli, preview
from modgpt import config as C

# The config keys each command reads (with their --help text where it differs from training's);
# everything else comes from the run's own config.json.
SAMPLE_OPTIONS = {"out_dir": "the run to sample from (its latest checkpoint)", "device": None,
                  "seed": "seed of the sampler"}
EXPORT_OPTIONS = {"out_dir": "the run to export (its latest checkpoint)"}
SAMPLE_FLAGS = {"start": "prompt text, or FILE:path to read it from a file (default: a newline)",
                "num_samples": "samples to draw (default 3)",
                "max_new_tokens": "tokens per sample (default 500)",
                "temperature": "softmax temperature; 0 = greedy (default 0.8)",
                "top_k": "sample from the k most likely tokens; 0 = all (default 200)"}
EXPORT_FLAGS = {"to": "what to write: a .safetensors file (canonical) or a directory (hf)",
                "format": "canonical (default: modgpt's safetensors file) or hf (a transformers model directory "
                          "with config.json, model.safetensors and the tokenizer when known)",
                "overwrite": "replace the file or directory if it exists"}
EXPORT_FORMATS = ("canonical", "hf")


@dataclass
class ExportTarget:
    out_dir: str
    to: str
    format: str  # one of EXPORT_FORMATS
    overwrite: bool


@dataclass
class Sampling:
    out_dir: str
    start: str  # the prompt text (a FILE: prompt already read)
    num_samples: int
    max_new_tokens: int
    temperature: float
    top_k: int  # 0 = no top-k cut
    seed: int
    device: str


def _number(args, name: str, kind: type, default, least):
    value = args.flags.get(name, default)
    try:
        if value is True:
            raise ValueError
        n = kind(value)
        if n < least:
            raise ValueError
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        cli.fail(f"option '--{name}' must be {what} >= {least}; got {value!r}")
    return n


def sample_settings(prog: str, argv=None) -> Sampling:
    """Parse and check a sample command line (one error line and exit 2 on a bad value)."""
    args = cli.parse(argv, prog=prog, extra_flags=SAMPLE_FLAGS, options=SAMPLE_OPTIONS)
    out_dir = args.config.train.out_dir
    if not out_dir:
        cli.fail(f"give the run to sample from: {prog} --out_dir=RUN")
    start = args.flags.get("start", "\n")
    if start is True:
        cli.fail("option '--start' needs a value: --start=TEXT or --start=FILE:path")
    if start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except (OSError, UnicodeDecodeError) as e:
            cli.fail(f"option '--start': cannot read prompt file '{start[5:]}' ({getattr(e, 'strerror', None) or e})")
    return Sampling(out_dir, start, _number(args, "num_samples", int, 3, 1), _number(args, "max_new_tokens", int, 500, 0),
                    _number(args, "temperature", float, 0.8, 0), _number(args, "top_k", int, 200, 0),
                    args.config.train.seed, args.config.system.device)


def export_target(prog: str, argv=None) -> ExportTarget:
    """What an export command line asks for, checked before anything is read: an existing file or
    directory is refused unless --overwrite."""
    args = cli.parse(argv, prog=prog, extra_flags=EXPORT_FLAGS, options=EXPORT_OPTIONS)
    out_dir, to = args.config.train.out_dir, args.flags.get("to")
    fmt = args.flags.get("format", "canonical")
    if fmt not in EXPORT_FORMATS:
        cli.fail(f"option '--format' must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    if not out_dir or to is None or to is True:
        what = "FILE.safetensors" if fmt == "canonical" else "DIR --format hf"
        cli.fail(f"give the run and where to write: {prog} --out_dir=RUN --to {what}")
    overwrite = args.flags.get("overwrite") in (True, "True", "true", "1")
    if fmt == "canonical":
        to = cli.writable_file("to", str(to))
    else:
        to = str(to)
        if os.path.isfile(to):
            cli.fail(f"option '--to': '{to}' is a file; --format hf writes a directory")
        parent = os.path.dirname(os.path.abspath(to))
        try:
            if not os.path.isdir(parent):
                raise NotADirectoryError(parent)
            from modgpt.io import probe_writable
            probe_writable(parent)
        except OSError:
            cli.fail(f"option '--to': cannot write '{to}' (no writable directory '{parent}')")
    if os.path.exists(to) and not overwrite:
        cli.fail(f"'{to}' exists; pass --overwrite to replace it, or choose another --to")
    return ExportTarget(out_dir, to, fmt, overwrite)


def write_export(target: ExportTarget, tensors: dict, cfg: C.Config, iteration: int) -> None:
    """Write an exported checkpoint (either format) and say what was written; an architecture that
    transformers cannot express exits 2 with nothing written."""
    from modgpt import weights as W
    if target.format == "canonical":
        W.save(target.to, tensors, cfg)
        print(f"wrote {target.to} ({len(W.canonical_shapes(cfg.model))} tensors, iteration {iteration})")
        return
    from modgpt import hf
    try:
        hf.export_family(cfg.model)
        tokenizer, note = hf.run_tokenizer(cfg)
        files = hf.write_dir(target.to, tensors, cfg.model, cfg.model.dropout, tokenizer, target.overwrite)
    except hf.HFError as e:
        cli.fail(str(e))
    print(f"wrote {target.to} ({', '.join(files)}; {hf.hf_config(cfg.model)['architectures'][0]}, "
          f"iteration {iteration})")
    print(note)


def config_main(argv: list[str] | None = None) -> int:
    """python -m modgpt.config [CONFIG_FILE] [--preset NAME] [--key=value ...] [--json]"""
    import dataclasses

    from modgpt.report import summary_tree
    args = cli.parse(argv, prog="python -m modgpt.config", extra_flags={"json": "print the resolved config as JSON"})
    cfg, notes = preview.resolve(args)
    if args.flags.get("json"):
        print(json.dumps({**cfg.to_dict(), "arch_name": C.arch_name(cfg.model), "resolved": notes}, indent=2))
        return 0
    print(cli.describe_sources(args))
    print(preview.describe(notes))
    for sec in C.SECTIONS:
        print(f"[{sec}]")
        for k, v in dataclasses.asdict(getattr(cfg, sec)).items():
            print(f"  {k:<28}= {v!r}")
    print(summary_tree(cfg))
    return 0


def flops_main(argv=None) -> int:
    """python -m modgpt.flops [config arguments] [--seq_len N] [--json]"""
    from modgpt.flops import count, format_count
    args = cli.parse(argv, prog="python -m modgpt.flops",
                     extra_flags={"json": "print one JSON object", "seq_len": "sequence length (default block_size)"})
    seq_len = cli.positive_int_flag(args, "seq_len")
    cfg, notes = preview.resolve(args)
    c = count(cfg.model, seq_len)
    if args.flags.get("json"):
        print(json.dumps({"arch_name": C.arch_name(cfg.model), **c.to_dict(), "resolved": notes}, indent=2))
    else:
        print(preview.describe(notes))
        print(f"architecture: {C.arch_name(cfg.model)}")
        print(format_count(c))
    return 0


def memory_main(argv: list[str] | None = None) -> int:
    """python -m modgpt.memory [config arguments] [--shards N] [--json]"""
    from modgpt.memory import estimate, report
    args = cli.parse(argv, prog="python -m modgpt.memory",
                     extra_flags={"json": "print JSON", "shards": "FSDP shards of the weights (default 1)"})
    shards = cli.positive_int_flag(args, "shards", 1)
    cfg, notes = preview.resolve(args)
    e = estimate(cfg, param_shards=shards)
    if args.flags.get("json"):
        json.dump({**e.to_dict(), "resolved": notes}, sys.stdout, indent=1)
        print()
    else:
        print(preview.describe(notes))
        print(report(e))
    return 0
