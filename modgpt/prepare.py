"""Data preparation: text -> train.bin / val.bin (uint16, or uint32 past 65,535 tokens) + meta.json,
written atomically.

    python -m modgpt.prepare shakespeare_char | shakespeare | text [--input FILE ...]
                             [--tokenizer char|gpt2|hf:NAME_OR_DIR] [--data_dir DIR] [--val_fraction F]

shakespeare_char = Tiny Shakespeare, char tokenizer; shakespeare = Tiny Shakespeare, GPT-2 BPE;
text = your own files (--input required; GPT-2 BPE unless --tokenizer says otherwise). hf:NAME_OR_DIR
tokenizes with a Hugging Face tokenizer (a Hub name or a model directory), whose files are copied
next to the data for sampling and export. Without --input, Tiny Shakespeare is read from
$MODGPT_TINYSHAKESPEARE when set, else downloaded.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.request

import numpy as np

from modgpt.data import TOKENIZER_DIR, CharTokenizer, DataError, GPT2Tokenizer, HFTokenizer, token_dtype
from modgpt.io import atomic_path, write_json

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_ENV = "MODGPT_TINYSHAKESPEARE"
DATASETS = {"shakespeare_char": "char", "shakespeare": "gpt2", "text": "gpt2"}
CHUNK = 1 << 20  # characters per BPE encode call (progress granularity)


def fetch_tinyshakespeare(cache_dir: str) -> str:
    """Path to Tiny Shakespeare: $MODGPT_TINYSHAKESPEARE, a cached copy, or a download."""
    env = os.environ.get(TINYSHAKESPEARE_ENV)
    if env:
        if not os.path.isfile(env):
            raise DataError(f"${TINYSHAKESPEARE_ENV} points to '{env}', which does not exist")
        return env
    path = os.path.join(cache_dir, "input.txt")
    if os.path.isfile(path):
        return path
    print(f"downloading Tiny Shakespeare from {TINYSHAKESPEARE_URL}", file=sys.stderr)
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as r:
            data = r.read()
    except Exception as e:
        # the advice names whole commands: this runs under `modgpt.prepare` and under the train commands
        dataset, data_dir = os.path.basename(cache_dir), os.path.dirname(cache_dir) or "."
        raise DataError(f"could not download Tiny Shakespeare ({type(e).__name__}: {e}); offline, copy its input.txt "
                        f"onto this machine, then set {TINYSHAKESPEARE_ENV}=/path/to/input.txt, or run `python -m modgpt.prepare "
                        f"{dataset} --input /path/to/input.txt --data_dir {data_dir}`") from None
    from modgpt.io import write_bytes
    write_bytes(path, data)
    return path


def read_inputs(paths: list[str]) -> tuple[str, str]:
    """Concatenated text of the inputs and its sha256."""
    parts = []
    h = hashlib.sha256()
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"--input file '{p}' not found")
        with open(p, "rb") as f:
            raw = f.read()
        h.update(raw)
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"--input file '{p}' is not UTF-8 text ({e})") from None
    text = "".join(parts)
    if not text:
        raise DataError("the input text is empty")
    return text, h.hexdigest()


def hf_tokenizer(spec: str, out: str) -> HFTokenizer:
    """Copy the tokenizer files of hf:NAME_OR_DIR into the dataset's tokenizer/ and load them from there."""
    import shutil

    from modgpt import hf
    try:
        src = hf.locate(spec)
    except hf.HFError as e:
        raise DataError(f"option '--tokenizer': {e}") from None
    files = [f for f in hf.TOKENIZER_FILES if os.path.isfile(os.path.join(src, f))]
    if "tokenizer.json" not in files:
        raise DataError(f"option '--tokenizer': hf:{spec} has no tokenizer.json (modgpt reads the fast-tokenizer "
                        f"file; save it with transformers' save_pretrained)")
    dst = os.path.join(out, TOKENIZER_DIR)
    os.makedirs(dst, exist_ok=True)
    for f in files:
        with atomic_path(os.path.join(dst, f)) as tmp:
            shutil.copyfile(os.path.join(src, f), tmp)
    return HFTokenizer(dst, f"hf:{spec}")


def _chunks(text: str):
    """Pieces of about CHUNK characters, each cut just after a newline so no merge straddles two."""
    start = 0
    while start < len(text):
        end = min(len(text), start + CHUNK)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        yield text[start:end]
        start = end


def encode(text: str, tokenizer: str, progress: bool = True, out: str | None = None):
    """(token ids as a uint16 or uint32 array, meta fields for the tokenizer)."""
    if tokenizer == "char":
        tok = CharTokenizer.from_text(text)
        if tok.vocab_size > 65535:
            raise DataError(f"{tok.vocab_size} distinct characters do not fit uint16")
        lut = {c: i for i, c in enumerate(tok.chars)}
        ids = np.fromiter((lut[c] for c in text), dtype=np.uint16, count=len(text))
        return ids, {"tokenizer": "char", "vocab_size": tok.vocab_size, "chars": tok.chars}
    if tokenizer.startswith("hf:"):
        tok = hf_tokenizer(tokenizer[3:], out)
        meta = {"tokenizer": "hf", "tokenizer_source": tokenizer, "vocab_size": tok.vocab_size}
    else:
        tok = GPT2Tokenizer()
        meta = {"tokenizer": "gpt2", "vocab_size": tok.vocab_size, "encoding": "r50k_base", "eot_token": tok.EOT}
    from tqdm import tqdm
    ids: list[int] = []
    bar = tqdm(total=len(text), desc=f"encoding ({tokenizer})", unit="char", unit_scale=True,
               disable=not progress or len(text) < 2 * CHUNK)
    for piece in _chunks(text):
        ids.extend(tok.encode(piece))
        bar.update(len(piece))
    bar.close()
    meta["token_dtype"] = token_dtype(tok.vocab_size)
    return np.asarray(ids, dtype=meta["token_dtype"]), meta


def prepare(dataset: str, inputs: list[str] | None = None, tokenizer: str | None = None,
            data_dir: str = "data", val_fraction: float = 0.1, progress: bool = True) -> str:
    """Write data_dir/dataset/{train.bin,val.bin,meta.json}; returns that directory."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; valid: {', '.join(DATASETS)}")
    if dataset == "text" and not inputs:
        raise DataError("dataset 'text' needs --input FILE [FILE ...]")
    tokenizer = tokenizer or DATASETS[dataset]
    if tokenizer not in ("char", "gpt2") and not tokenizer.startswith("hf:"):
        raise DataError(f"option '--tokenizer' must be one of char, gpt2, hf:NAME_OR_DIR; got '{tokenizer}'")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"option '--val_fraction' must be in (0, 1), got {val_fraction}")
    out = os.path.join(data_dir, dataset)
    if not inputs:
        if dataset == "text":
            raise DataError("dataset 'text' needs --input FILE [FILE ...]")
        inputs = [fetch_tinyshakespeare(out)]
    text, sha = read_inputs(inputs)
    os.makedirs(out, exist_ok=True)
    # Remove a stale meta.json first: readers treat meta.json as "data complete", and it is the
    # last file written, so an interrupted prepare never leaves bins that look valid.
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    ids, meta = encode(text, tokenizer, progress, out)
    n_val = max(1, int(len(ids) * val_fraction))
    train, val = ids[:-n_val], ids[-n_val:]
    for name, arr in (("train.bin", train), ("val.bin", val)):
        with atomic_path(os.path.join(out, name)) as tmp:
            arr.tofile(tmp)
    meta.update({"dataset": dataset, "train_tokens": int(len(train)), "val_tokens": int(len(val)),
                 "source_files": [os.path.abspath(p) for p in inputs], "source_sha256": sha,
                 "source_chars": len(text)})
    write_json(os.path.join(out, "meta.json"), meta)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m modgpt.prepare", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help=" | ".join(DATASETS))
    p.add_argument("--input", nargs="+", help="text file(s); default: Tiny Shakespeare")
    p.add_argument("--tokenizer", help="char | gpt2 | hf:NAME_OR_DIR (default: the dataset's)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    try:
        out = prepare(a.dataset, a.input, a.tokenizer, a.data_dir, a.val_fraction, not a.no_progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from modgpt.data import load_meta
    m = load_meta(out)
    print(f"wrote {out}: tokenizer={m['tokenizer']} vocab_size={m['vocab_size']} "
          f"train={m['train_tokens']:,} val={m['val_tokens']:,} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
