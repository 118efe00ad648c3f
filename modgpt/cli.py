"""One command-line parser for every entry point: [CONFIG_FILE] [--preset NAME] [--key=value ...].

Precedence: defaults < preset (and size) < config file < command line. Values are type-checked
against the schema. Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import os
import runpy
import sys
from dataclasses import dataclass, field
from typing import Any

from modgpt import config as C
from modgpt.io import probe_writable
from modgpt.presets import PRESETS, SIZE_KEYS, SIZES


@dataclass
class Args:
    config: C.Config
    explicit: set[str]  # keys set by a config file or the command line
    preset: str | None = None
    config_file: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # entry-point specific options
    positional: list[str] = field(default_factory=list)
    file_keys: set[str] = field(default_factory=set)  # the explicit keys the config file set (not overridden)

    def origin(self, key: str) -> str | None:
        """Where an explicit key's value came from, in words; None for a key not set explicitly."""
        if key not in self.explicit:
            return None
        return "config file" if key in self.file_keys else "command line"


def fail(msg: str, code: int = 2):
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def positive_int_flag(args: Args, name: str, default: int | None = None) -> int | None:
    """An entry point's flag that takes a positive integer: its value (default when absent or given
    bare), or one error line and exit 2."""
    value = args.flags.get(name)
    if value is None or value is True:
        return default
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        fail(f"option '--{name}' must be a positive integer; got {value!r}")
    return n


def output_file_flag(args: Args, name: str) -> str | None:
    """An entry point's flag naming a file it will write: the path (None when absent), checked before
    any work starts, or one error line and exit 2 (bare, or no writable directory to hold it)."""
    value = args.flags.get(name)
    if value is None:
        return None
    if value is True:
        fail(f"option '--{name}' needs a file name: --{name}=FILE")
    return writable_file(name, str(value))


def writable_file(name: str, value: str) -> str:
    """`value`, the file option --name will write, or one error line and exit 2: empty, a directory,
    or no writable directory to hold it (tried with a probe file: permission bits lie for root)."""
    if not value:
        fail(f"option '--{name}' needs a file name: --{name}=FILE")
    if os.path.isdir(value):
        fail(f"option '--{name}': '{value}' is a directory, not a file name")
    parent = os.path.dirname(os.path.abspath(value))
    try:
        if not os.path.isdir(parent):  # written into as is: probe_writable would try an ancestor
            raise NotADirectoryError(parent)
        probe_writable(parent)
    except OSError:
        fail(f"option '--{name}': cannot write '{value}' (no writable directory '{parent}')")
    return value


def read_config_file(path: str) -> dict[str, Any]:
    """Execute a python config file (nanoGPT style) and take its public, non-module globals."""
    if not os.path.isfile(path):
        raise C.ConfigError(f"config file '{path}' not found")
    try:
        ns = runpy.run_path(path)
    except Exception as e:  # the file itself failed: say where, in one line
        raise C.ConfigError(f"config file '{path}' failed to execute: {type(e).__name__}: {e}") from None
    out = {}
    for k, v in ns.items():
        if k.startswith("_") or callable(v) or type(v).__name__ == "module":
            continue
        if k == "preset":
            out["__preset__"] = v
            continue
        C.check_key(k)
        out[k] = C.coerce(k, v)
    return out


SECTION_TITLES = {"model": "model (architecture)", "train": "training", "system": "system"}


def usage(prog: str, extra_flags: dict[str, str], options: dict[str, str | None] | None = None) -> str:
    """--help: each option with its default, choices and one-line description (from the schema),
    grouped by section; options: the only config keys the command takes, each with its own text or
    None for the schema's (None: every key)."""
    def row(name: str, text: str) -> str:
        return f"  {name:<34} {text}" if len(name) <= 34 else f"  {name}\n  {'':<34} {text}"
    if options is None:
        lines = [f"usage: {prog} [CONFIG_FILE] [--preset NAME] [--key=value ...]", "",
                 row("CONFIG_FILE", "a Python file of `option = value` lines (configs/*.py); the command line "
                                    "overrides it"),
                 row("--preset=NAME", f"component preset: {', '.join(PRESETS)} (sizes apart: --size)")]
    else:
        lines = [f"usage: {prog} [--key=value ...]", ""]
    if extra_flags:
        lines.append("command options:")
        lines += [row(f"--{name}", text) for name, text in extra_flags.items()]
    for sec, title in SECTION_TITLES.items():
        keys = [k for k, s in C.KEY_SECTION.items() if s == sec and (options is None or k in options)]
        if not keys:
            continue
        lines.append(f"{title} options:")
        for key in keys:
            choices = list(C.CHOICES.get(key, ())) + (list(SIZES) if key == "size" else [])
            text = (options or {}).get(key) or C.KEY_HELP[key]
            text += f" [{' | '.join(choices)}]" if choices else ""
            lines.append(row(f"--{key}={C.KEY_DEFAULT[key]!r}".replace("'", ""), text))
    return "\n".join(lines)


def parse(argv: list[str] | None = None, prog: str = "modgpt", extra_flags: dict[str, str] | None = None,
          allow_positional: bool = False, base: dict[str, Any] | None = None,
          options: dict[str, str | None] | None = None) -> Args:
    """Parse argv; on a bad value print one line and exit 2. extra_flags: name -> help for non-config flags.

    Extra flags take `--name=value`, `--name value` or bare `--name` (True). options: the config keys
    the command uses (None: every key, a config file and --preset); any other is refused.
    """
    extra_flags = extra_flags or {}
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _parse(argv, prog, extra_flags, allow_positional, base or {}, options)
    except C.ConfigError as e:
        fail(str(e))


def _parse(argv, prog, extra_flags, allow_positional, base, options=None) -> Args:
    preset = None
    config_file = None
    cmd: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a in ("-h", "--help"):
            print(usage(prog, extra_flags, options))
            raise SystemExit(0)
        if not a.startswith("--"):
            if a.endswith(".py") and config_file is None and options is None:
                config_file = a
            elif allow_positional:
                positional.append(a)
            else:
                raise C.ConfigError(f"unexpected argument '{a}': give a config file (.py) or --key=value options")
            continue
        key, eq, value = a[2:].partition("=")
        key = key.replace("-", "_") if key not in C.KEY_SECTION and key.replace("-", "_") in C.KEY_SECTION else key
        if options is not None and key not in options and key not in extra_flags:
            valid = [f"--{k}" for k in (*options, *extra_flags)]
            hint = " (it reads the run's own config)" if key in C.KEY_SECTION or key == "preset" else ""
            raise C.ConfigError(f"option '--{key}' is not one of {prog}'s{hint}; its options: {', '.join(valid)}")
        if key in extra_flags or key == "preset":
            if not eq:
                # `--name value` unless the next token is another option; bare `--name` means True
                if i < len(argv) and not argv[i].startswith("--"):
                    value, i = argv[i], i + 1
                else:
                    value = True
            if key == "preset":
                preset = value
            else:
                flags[key] = value
            continue
        if not eq:
            if i < len(argv) and not argv[i].startswith("--"):
                value, i = argv[i], i + 1
            elif key in C.KEY_TYPE and C.KEY_TYPE[key] is bool:
                value = "True"
            elif key in C.KEY_SECTION:
                raise C.ConfigError(f"option '--{key}' needs a value: --{key}=VALUE")
        if key not in C.KEY_SECTION:
            valid = list(C.KEY_SECTION) + list(extra_flags) + ["preset"]
            raise C.ConfigError(f"unknown option '--{key}'{C.suggest(key, valid, '--')}; see {prog} --help")
        cmd[key] = C.coerce(key, value)

    from_file = read_config_file(config_file) if config_file else {}
    preset = preset or from_file.pop("__preset__", None)
    from_file.pop("__preset__", None)
    flat: dict[str, Any] = dict(base)
    if preset is not None:
        if preset not in PRESETS:
            raise C.ConfigError(f"unknown preset '{preset}'{C.suggest(str(preset), PRESETS)}; "
                                f"valid presets: {', '.join(PRESETS)}")
        flat.update(PRESETS[preset])
    explicit = set(from_file) | set(cmd)
    layered = {**from_file, **cmd}
    size = layered.get("size", flat.get("size"))
    if size in SIZES:
        flat.update(SIZES[size])
    flat.update(layered)
    cfg = C.from_flat(flat)
    return Args(config=cfg, explicit=explicit, preset=preset, config_file=config_file, flags=flags,
                positional=positional, file_keys=set(from_file) - set(cmd))


def describe_sources(args: Args) -> str:
    src = [f"preset={args.preset}" if args.preset else "no preset"]
    if args.config_file:
        src.append(f"file={args.config_file}")
    if args.explicit:
        src.append("set: " + ", ".join(sorted(args.explicit)))
    return "config: " + "; ".join(src)


def explicit_sizes(args: Args) -> bool:
    return bool(args.explicit & set(SIZE_KEYS))
