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
DATASETS = {"shakespeare_char": "char", "shakespeare": "gpt2", "text": "gpt2", "fineweb-edu": "gpt2",
            "openwebtext": "gpt2"}
SHARD_TOKENS = 100_000_000
# a named corpus holds out its first 10M tokens (a tenth of --max_tokens if less) unless told otherwise
NAMED_VAL_TOKENS = 10_000_000
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
            data_dir: str = "data", val_fraction: float | None = None, progress: bool = True, *,
            text_field: str = "text", name: str | None = None, workers: int | None = None,
            shard_tokens: int = SHARD_TOKENS, val_tokens: int | None = None, max_tokens: int | None = None,
            subset: str | None = None, overwrite: bool = False, chunk_chars: int | None = None) -> str:
    """Prepare a dataset; returns its directory. shakespeare_char / shakespeare and char-level text
    write train.bin / val.bin; BPE text and the named corpora write token shards (modgpt.shards)."""
    if dataset not in DATASETS:
        import difflib
        close = difflib.get_close_matches(dataset, DATASETS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataError(f"unknown dataset '{dataset}'{hint} (valid: {', '.join(DATASETS)})")
    tokenizer = tokenizer or DATASETS[dataset]
    if tokenizer not in ("char", "gpt2") and not tokenizer.startswith("hf:"):
        raise DataError(f"option '--tokenizer' must be one of char, gpt2, hf:NAME_OR_DIR; got '{tokenizer}'")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise DataError(f"option '--val_fraction' must be in (0, 1), got {val_fraction}")
    for key, v in (("shard_tokens", shard_tokens), ("val_tokens", val_tokens), ("max_tokens", max_tokens),
                   ("workers", workers), ("chunk_chars", chunk_chars)):
        if v is not None and v < 1:
            raise DataError(f"option '--{key}' must be >= 1, got {v}")
    out = os.path.join(data_dir, name or dataset)
    if dataset == "text" and not inputs:
        raise DataError("dataset 'text' needs --input FILE|DIR|GLOB [...]")
    if dataset in ("shakespeare_char", "shakespeare") or tokenizer == "char":
        if not inputs:
            inputs = [fetch_tinyshakespeare(out)]
        return _single_file(out, dataset, inputs, tokenizer, 0.1 if val_fraction is None else val_fraction, progress)
    return _sharded(out, dataset, inputs, tokenizer, text_field, workers or os.cpu_count() or 1, shard_tokens,
                    val_fraction, val_tokens, max_tokens, subset, overwrite, progress, chunk_chars)


def _single_file(out: str, dataset: str, inputs: list[str], tokenizer: str, val_fraction: float, progress: bool) -> str:
    """train.bin / val.bin (the last val_fraction of the tokens) and meta.json, for corpora that fit in memory."""
    text, sha = read_inputs(inputs)
    os.makedirs(out, exist_ok=True)
    # Remove a stale meta.json first: readers treat meta.json as "data complete", and it is the
    # last file written, so an interrupted prepare never leaves bins that look valid.
    if os.path.exists(os.path.join(out, "meta.json")):
        os.unlink(os.path.join(out, "meta.json"))
    ids, meta = encode(text, tokenizer, progress, out)
    n_val = max(1, int(len(ids) * val_fraction))
    train, val = ids[:-n_val], ids[-n_val:]
    for fname, arr in (("train.bin", train), ("val.bin", val)):
        with atomic_path(os.path.join(out, fname)) as tmp:
            arr.tofile(tmp)
    meta.update({"dataset": dataset, "train_tokens": int(len(train)), "val_tokens": int(len(val)),
                 "source_files": [os.path.abspath(p) for p in inputs], "source_sha256": sha,
                 "source_chars": len(text)})
    write_json(os.path.join(out, "meta.json"), meta)
    return out


def _eot_of(tok: HFTokenizer, spec: str) -> int:
    """The id that ends a document: the tokenizer's eos token, else a usual end-of-text name."""
    import json
    names = []
    cfg = os.path.join(tok.directory, "tokenizer_config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token")
        names.append(eos.get("content") if isinstance(eos, dict) else eos)
    for n in names + ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]:
        if n and tok.tok.token_to_id(n) is not None:
            return tok.tok.token_to_id(n)
    raise DataError(f"option '--tokenizer': {spec} has no end-of-text token (no eos_token in tokenizer_config.json "
                    f"and none of <|endoftext|>, </s>, <|end_of_text|>, <eos>) to end each document with")


def _sharded(out, dataset, inputs, tokenizer, text_field, workers, shard_tokens, val_fraction, val_tokens,
             max_tokens, subset, overwrite, progress, chunk_chars=None) -> str:
    import shutil

    from modgpt import corpus, shards
    if dataset == "text":
        files = corpus.expand(inputs)
        sources = [{"path": os.path.abspath(f), "bytes": os.path.getsize(f),
                    "mtime_ns": os.stat(f).st_mtime_ns} for f in files]
        total_bytes = sum(s["bytes"] for s in sources)

        def units():
            for f in files:
                yield from corpus.file_units(f, text_field)
    else:
        if inputs:
            raise DataError(f"dataset '{dataset}' streams from the Hub and takes no --input; for local copies "
                            f"use `python -m modgpt.prepare text --input FILES`")
        subset = subset or corpus.NAMED[dataset]["subset"]
        sources = [{"hub": corpus.NAMED[dataset]["path"], "subset": subset}]
        total_bytes = None
        if val_tokens is None and val_fraction is None:
            val_tokens = NAMED_VAL_TOKENS if max_tokens is None else max(1, min(NAMED_VAL_TOKENS, max_tokens // 10))

        def units():
            yield from corpus.hub_units(dataset, subset)
    if val_tokens is None and val_fraction is None:
        val_fraction = 0.1
    if val_tokens is not None:
        val_fraction = None
    identity = {"dataset": dataset, "sources": sources, "tokenizer": tokenizer, "text_field": text_field,
                "shard_tokens": shard_tokens, "val_fraction": val_fraction, "val_tokens": val_tokens,
                "max_tokens": max_tokens}
    meta_path, state_path = os.path.join(out, "meta.json"), os.path.join(out, shards.STATE)
    held = None
    for p in (meta_path, state_path):
        if os.path.isfile(p):
            from modgpt.io import read_json
            held = read_json(p).get("identity", {})
            break
    if held is not None and held != identity and not overwrite:
        diff = next(k for k in identity if held.get(k) != identity[k])
        raise DataError(f"'{out}' holds a prepare with other {diff} than these; pass --overwrite to start over, "
                        f"or --name to write another dataset")
    if os.path.isfile(meta_path) and held == identity and not overwrite:
        print(f"{out} is already prepared from these inputs and options", file=sys.stderr)
        return out
    created = not os.path.exists(out)
    if overwrite and os.path.isdir(out):
        shutil.rmtree(out)
        created = True
    os.makedirs(out, exist_ok=True)
    if os.path.exists(meta_path):
        os.unlink(meta_path)
    try:
        if tokenizer.startswith("hf:"):
            tok = hf_tokenizer(tokenizer[3:], out)
            spec = ("hf", tok.directory, _eot_of(tok, tokenizer))
            tmeta = {"tokenizer": "hf", "tokenizer_source": tokenizer, "vocab_size": tok.vocab_size}
        else:
            tok = GPT2Tokenizer()
            spec = ("gpt2",)
            tmeta = {"tokenizer": "gpt2", "vocab_size": tok.vocab_size, "encoding": "r50k_base"}
        if tmeta["vocab_size"] > 1 << 32:
            raise DataError(f"the tokenizer's vocabulary ({tmeta['vocab_size']:,}) does not fit uint32 token files")
        dtype = token_dtype(tmeta["vocab_size"])
        rule = shards.ValRule(val_fraction, val_tokens)
        final = shards.run(out, units(), spec, identity, dtype, shard_tokens, rule, max_tokens, workers, progress,
                           total_bytes, chunk_chars or shards.CHUNK_CHARS)
        counts = {s: sum(x["tokens"] for x in final[s]["shards"]) for s in final}
        if counts["train"] + counts["val"] == 0:
            raise DataError("the corpus is empty (no text in its documents)")
        for s, other in (("val", "--val_fraction or --val_tokens"), ("train", "--val_fraction or --val_tokens")):
            if counts[s] == 0:
                raise DataError(f"no document went to the {s} split; change {other} (or give more documents)")
    except corpus.Interrupted:
        raise  # the complete batches stay recorded: running the command again continues
    except DataError:
        if created:  # bad input: nothing is left behind by a prepare that started here
            shutil.rmtree(out, ignore_errors=True)
        raise
    meta = {**tmeta, "dataset": dataset, "format": "shards", "token_dtype": dtype, "eot_token": spec[-1]
            if spec[0] == "hf" else tok.EOT, "shards": {s: final[s]["shards"] for s in ("train", "val")},
            "train_tokens": counts["train"], "val_tokens": counts["val"], "sources": sources, "identity": identity}
    write_json(meta_path, meta)
    os.unlink(state_path)
    return out


def bench(a) -> int:
    """Time a sharded prepare of --input into a temporary directory against tiktoken's
    encode_ordinary_batch over the same documents with as many threads, on this machine."""
    import resource
    import shutil
    import tempfile
    import time

    from modgpt import corpus
    if a.dataset != "text" or not a.input or (a.tokenizer or "gpt2") != "gpt2":
        raise DataError("--bench measures `text --input FILES` with the GPT-2 BPE")
    workers = a.workers or os.cpu_count() or 1
    files = corpus.expand(a.input)
    tmp = tempfile.mkdtemp(prefix="modgpt-prepare-bench-")
    try:
        t0 = time.perf_counter()
        out = prepare("text", a.input, "gpt2", tmp, None, False, text_field=a.text_field, workers=workers,
                      shard_tokens=a.shard_tokens, chunk_chars=a.chunk_chars)
        dt = time.perf_counter() - t0
        from modgpt.data import load_meta
        m = load_meta(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tokens = m["train_tokens"] + m["val_tokens"]
    # measured before the comparison below holds the whole corpus in memory
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    texts = [t for f in files for t, _ in corpus.file_units(f, a.text_field)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    enc = GPT2Tokenizer().enc
    t0 = time.perf_counter()
    ref = sum(len(x) for x in enc.encode_ordinary_batch(texts, num_threads=workers))
    dt_ref = time.perf_counter() - t0
    print(f"prepare: {n_bytes / 1e6:.1f} MB, {len(texts):,} units, {tokens:,} tokens in {dt:.2f} s with {workers} "
          f"workers: {n_bytes / 1e6 / dt:.2f} MB/s, {tokens / dt:,.0f} tokens/s; peak RSS of a process "
          f"{rss / 1024:.0f} MiB")
    print(f"tiktoken encode_ordinary_batch, {workers} threads, texts in memory: {dt_ref:.2f} s, "
          f"{n_bytes / 1e6 / dt_ref:.2f} MB/s, {ref / dt_ref:,.0f} tokens/s; prepare runs at "
          f"{dt_ref / dt:.2f}x its speed")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m modgpt.prepare", description=__doc__.split("\n")[0])

    def one_line(msg):  # bad input is one error line, as everywhere else
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)
    p.error = one_line
    p.add_argument("dataset", help=" | ".join(DATASETS))
    p.add_argument("--input", nargs="+", help="text: files, directories or globs of .txt, .jsonl, .jsonl.gz, "
                                              ".parquet (shakespeare*: default Tiny Shakespeare)")
    p.add_argument("--tokenizer", help="char | gpt2 | hf:NAME_OR_DIR (default: the dataset's)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--name", help="the dataset's directory name under data_dir (default: the dataset)")
    p.add_argument("--text_field", default="text", help="the text field of .jsonl / .parquet documents")
    p.add_argument("--val_fraction", type=float, help="the evenly spaced fraction of documents held out "
                                                       "(default 0.1; named corpora hold out their first 10M tokens, or a tenth of "
                                                       "--max_tokens if less)")
    p.add_argument("--val_tokens", type=int, help="hold out the first documents, up to this many tokens")
    p.add_argument("--shard_tokens", type=int, default=SHARD_TOKENS, help="tokens per shard (default 100M)")
    p.add_argument("--max_tokens", type=int, help="stop after about this many tokens (quick ablations)")
    p.add_argument("--subset", help="the named corpus' subset (fineweb-edu: sample-10BT)")
    p.add_argument("--workers", type=int, help="tokenizing processes (default: all cores)")
    p.add_argument("--chunk_chars", type=int, help="characters of text per batch a worker tokenizes (default "
                                                    "1M): memory stays under about 2 x workers x this")
    p.add_argument("--overwrite", action="store_true", help="start over, replacing what the dataset holds")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--bench", action="store_true", help="measure: prepare into a temporary directory and print "
                                                          "MB/s, tokens/s, peak RSS and tiktoken's own batch speed")
    a = p.parse_args(argv)
    if a.bench:
        try:
            return bench(a)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        out = prepare(a.dataset, a.input, a.tokenizer, a.data_dir, a.val_fraction, not a.no_progress,
                      text_field=a.text_field, name=a.name, workers=a.workers, shard_tokens=a.shard_tokens,
                      val_tokens=a.val_tokens, max_tokens=a.max_tokens, subset=a.subset, overwrite=a.overwrite,
                      chunk_chars=a.chunk_chars)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from modgpt.data import load_meta
    m = load_meta(out)
    shards = f" in {sum(len(v) for v in m['shards'].values())} shards" if "shards" in m else ""
    print(f"wrote {out}: tokenizer={m['tokenizer']} vocab_size={m['vocab_size']} "
          f"train={m['train_tokens']:,} val={m['val_tokens']:,} tokens{shards}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
