"""Tokenizers and the shared, seeded batch sampler over memmapped token files (numpy only): uint16,
or uint32 for vocabularies past 65,535 (meta.json's token_dtype); one train.bin / val.bin, or the
shards modgpt.shards writes, read as one array per split.

The batch for (seed, split, iteration, micro_step) is a pure function of those numbers, so both
backends see identical batches and a resumed run continues with exactly the batches an
uninterrupted run would have drawn. Under data parallelism each process takes its contiguous
slice of the same global batch.
"""
from __future__ import annotations

import json
import os

import numpy as np

SPLITS = {"train": 0, "val": 1}
EVAL_ITER = 10**9  # evaluation batch k of a split is the one drawn for iteration EVAL_ITER + k


class DataError(RuntimeError):
    """Missing, truncated or inconsistent prepared data; the message says what to run."""


def dataset_dir(data_dir: str, dataset: str) -> str:
    return os.path.join(data_dir, dataset)


def prepare_command(path_dir: str) -> str:
    """The command that (re)writes the dataset in path_dir: a whole command line, whatever command
    reports the problem (train, sample, prepare)."""
    name, data_dir = os.path.basename(path_dir), os.path.dirname(path_dir) or "."
    if name in ("shakespeare_char", "shakespeare", "fineweb-edu", "openwebtext"):
        return f"python -m modgpt.prepare {name} --data_dir {data_dir}"
    return f"python -m modgpt.prepare text --input FILE ... --name {name} --data_dir {data_dir}"


def load_meta(path_dir: str) -> dict:
    p = os.path.join(path_dir, "meta.json")
    if not os.path.isfile(p):
        raise DataError(f"no prepared data in '{path_dir}' (meta.json missing); run `{prepare_command(path_dir)}`")
    try:
        with open(p) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"'{p}' is not valid JSON ({e}); re-run `{prepare_command(path_dir)}`") from None
    for key in ("tokenizer", "vocab_size", "train_tokens", "val_tokens"):
        if key not in meta:
            raise DataError(f"'{p}' lacks '{key}'; re-run `{prepare_command(path_dir)}`")
    return meta


TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def token_dtype(vocab_size: int) -> str:
    """The narrowest token file type that holds every id of the vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _token_file(path_dir: str, p: str, want: int, name: str) -> np.memmap:
    if not os.path.isfile(p):
        raise DataError(f"'{p}' is missing; re-run `{prepare_command(path_dir)}`")
    dtype = np.dtype(TOKEN_DTYPES[name])
    size = os.path.getsize(p)
    if size != dtype.itemsize * want:
        raise DataError(f"'{p}' has {size} bytes but meta.json says {want} {name} tokens "
                        f"({dtype.itemsize * want} bytes): truncated or corrupt; re-run `{prepare_command(path_dir)}`")
    return np.memmap(p, dtype=dtype, mode="r")


class ShardedTokens:
    """A split's shards read as one array: len() and [start:stop] windows, a window across a shard
    boundary joined from both. The same tokens give the same windows as one train.bin would."""

    def __init__(self, parts: list[np.memmap]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(len(self))
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            lo = start - int(self.starts[i])
            take = min(stop - start, len(self.parts[i]) - lo)
            pieces.append(self.parts[i][lo:lo + take])
            start += take
            i += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def open_split(path_dir: str, split: str, meta: dict):
    """A split's tokens (a memmap, or ShardedTokens over the shards), each file checked against meta."""
    name = meta.get("token_dtype", "uint16")
    if name not in TOKEN_DTYPES:
        raise DataError(f"meta.json in '{path_dir}' has token_dtype '{name}'; valid: {', '.join(TOKEN_DTYPES)}")
    if "shards" in meta:
        return ShardedTokens([_token_file(path_dir, os.path.join(path_dir, s["file"]), s["tokens"], name)
                              for s in meta["shards"][split]])
    return _token_file(path_dir, os.path.join(path_dir, f"{split}.bin"), meta[f"{split}_tokens"], name)


class BatchSampler:
    """Random (B, T) windows from train.bin / val.bin, deterministic in (seed, split, iter, micro)."""

    def __init__(self, path_dir: str, block_size: int, batch_size: int, seed: int,
                 vocab_size: int | None = None, rank: int = 0, world: int = 1):
        self.dir = path_dir
        self.meta = load_meta(path_dir)
        if vocab_size is not None and self.meta["vocab_size"] > vocab_size:
            raise DataError(f"data in '{path_dir}' has vocab_size {self.meta['vocab_size']} but the "
                            f"model's vocab_size is {vocab_size}; set --vocab_size={self.meta['vocab_size']} "
                            f"or more")
        self.data = {s: open_split(path_dir, s, self.meta) for s in SPLITS}
        for s, arr in self.data.items():
            if len(arr) <= block_size + 1:
                raise DataError(f"split '{s}' in '{path_dir}' has {len(arr)} tokens, fewer than "
                                f"block_size+2 = {block_size + 2}; use a smaller --block_size")
        if batch_size % world:
            raise DataError(f"global batch_size {batch_size} is not divisible by the {world} processes")
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rank, self.world = rank, world

    def offsets(self, split: str, iteration: int, micro_step: int = 0) -> np.ndarray:
        """Start offsets of the global batch (length batch_size)."""
        rng = np.random.default_rng([self.seed, SPLITS[split], iteration, micro_step])
        return rng.integers(0, len(self.data[split]) - self.block_size - 1, size=self.batch_size)

    def get(self, split: str, iteration: int, micro_step: int = 0, local: bool = True):
        """(x, y) int32 arrays (B, T): this process's slice of the global batch when local."""
        ix = self.offsets(split, iteration, micro_step)
        if local and self.world > 1:
            per = self.batch_size // self.world
            ix = ix[self.rank * per:(self.rank + 1) * per]
        arr = self.data[split]
        T = self.block_size
        x = np.stack([arr[i:i + T] for i in ix]).astype(np.int32)
        y = np.stack([arr[i + 1:i + 1 + T] for i in ix]).astype(np.int32)
        return x, y

    def state(self) -> dict:
        """What a checkpoint records: the sampler is stateless beyond these numbers."""
        return {"seed": self.seed, "batch_size": self.batch_size, "block_size": self.block_size,
                "source_sha256": self.meta.get("source_sha256")}


# ---------------------------------------------------------------------------------------------
# Tokenizers: encode/decode from meta.json, used by prepare and sample.

TOKENIZER_DIR = "tokenizer"  # a prepared dataset's copy of its Hugging Face tokenizer's files


def get_tokenizer(meta: dict, path_dir: str | None = None):
    """The tokenizer of prepared data (path_dir: the dataset's directory, where an hf tokenizer's
    files were copied)."""
    kind = meta["tokenizer"]
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "hf":
        if path_dir is None:
            raise DataError("an hf tokenizer needs its dataset directory")
        return HFTokenizer(os.path.join(path_dir, TOKENIZER_DIR), meta.get("tokenizer_source", "hf"))
    raise DataError(f"unknown tokenizer '{kind}' in meta.json; valid: char, gpt2, hf")


class CharTokenizer:
    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, s: str) -> list[int]:
        bad = sorted({c for c in s if c not in self.stoi})
        if bad:
            raise DataError(f"characters not in the char vocabulary: {''.join(bad)!r}")
        return [self.stoi[c] for c in s]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class GPT2Tokenizer:
    """GPT-2 BPE via tiktoken's r50k_base (same ranks as 'gpt2'; loads offline from a cache dir)."""
    EOT = 50256
    vocab_size = 50257

    def __init__(self):
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding("r50k_base")
        except Exception as e:
            raise DataError(f"could not load the GPT-2 BPE (tiktoken r50k_base): {e}. Offline, set "
                            f"TIKTOKEN_CACHE_DIR to a directory holding its cached ranks") from None

    def encode(self, s: str) -> list[int]:
        return self.enc.encode_ordinary(s)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


class HFTokenizer:
    """A Hugging Face tokenizer (the `tokenizers` library) from a directory's tokenizer.json."""

    def __init__(self, directory: str, source: str = ""):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError("hf tokenizers need the tokenizers package: pip install tokenizers") from None
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise DataError(f"'{directory}' has no tokenizer.json ({source or 'hf tokenizer'}: modgpt reads the "
                            f"fast-tokenizer file; save it with save_pretrained from transformers)")
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:
            raise DataError(f"'{path}' is not a readable tokenizer ({e})") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.directory = directory

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte in its vocab.json: printable Latin-1 bytes stand for
    themselves, the other 68 take code points from 256 upward in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def token_bytes(meta: dict, path_dir: str | None = None) -> np.ndarray | None:
    """UTF-8 bytes each token id decodes to (index: id), for bits per byte; None when the tokenizer's
    tokens are not byte strings of their own (a non-byte-level Hugging Face tokenizer). Special
    tokens (GPT-2's end-of-text, a tokenizer's added tokens) are not text: 0 bytes."""
    kind = meta["tokenizer"]
    if kind == "char":
        return np.array([len(c.encode("utf-8")) for c in meta["chars"]], dtype=np.int64)
    if kind == "gpt2":
        enc = GPT2Tokenizer().enc
        out = np.array([len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)], dtype=np.int64)
        out[GPT2Tokenizer.EOT] = 0
        return out
    if kind == "hf" and path_dir is not None:
        tok = get_tokenizer(meta, path_dir).tok
        if type(tok.decoder).__name__ != "ByteLevel":
            return None
        width = {c: 1 for c in byte_chars()}  # byte-level tokens spell each byte with one character
        special = {t.content for t in tok.get_added_tokens_decoder().values()}
        out = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
        for text, i in tok.get_vocab(with_added_tokens=True).items():
            out[i] = 0 if text in special else sum(width.get(c, 0) for c in text)
        return out
    return None


def eval_bytes_per_token(sampler: "BatchSampler", eval_iters: int, lengths: np.ndarray) -> dict[str, float]:
    """Bytes per target token of the fixed evaluation batches of each split (the global batches every
    evaluation scores), so that bits per byte = loss / ln 2 / this, exactly for those tokens."""
    out = {}
    for split in SPLITS:
        n_bytes = n_tokens = 0
        for k in range(eval_iters):
            _, y = sampler.get(split, EVAL_ITER + k, local=False)
            n_bytes += int(lengths[y].sum())
            n_tokens += y.size
        out[split] = n_bytes / n_tokens
    return out


def end_sample_plan(data_dir: str, dataset: str, max_chars: int = 200):
    """(tokenizer, prompt ids, new tokens, data vocab) for the short sample a finished run prints.

    None when the dataset's tokenizer cannot be loaded. A char is one token; a BPE token averages
    about 4 characters of English, so ~max_chars/3 tokens.
    """
    try:
        meta = load_meta(dataset_dir(data_dir, dataset))
        tok = get_tokenizer(meta, dataset_dir(data_dir, dataset))
    except DataError:
        return None
    n_new = max_chars if meta["tokenizer"] == "char" else max(1, max_chars // 3)
    return tok, tok.encode("\n"), n_new, int(meta["vocab_size"])


def decode_sample(tok, new_ids, vocab_size: int, max_chars: int = 200) -> str:
    """Text of sampled ids, dropping ids past the data's vocab (BPE padding rows are never targets)."""
    return tok.decode([int(i) for i in new_ids if int(i) < vocab_size])[:max_chars]
