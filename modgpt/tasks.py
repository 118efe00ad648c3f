"""Multiple-choice evaluation tasks and their scoring, written once for both backends.

A task turns its data file into items (a context, its endings, the right one). Scoring is the usual
one for small models (llm.c's HellaSwag, lm-evaluation-harness's multiple choice): each ending is
scored by the log-likelihood of its tokens given the context; `acc` picks the ending with the
highest sum, `acc_norm` the highest mean per ending token. A backend supplies one function,
loglik(x, y, mask) -> per-row sums of log p(y | x) over the masked positions; the endings of many
items go through it together, padded to a few fixed lengths.

Adding a task is one class registered under a name listed in modgpt.config.CHOICES["task"].
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from modgpt.data import DataError
from modgpt.registry import Registry

TASKS = Registry("task")
SEQS_PER_BATCH = 16  # endings scored per call of the backend's function


@dataclass
class Item:
    context: str
    endings: list[str]
    label: int


class Task:
    name = ""
    url = ""  # the public file downloaded when online
    filename = ""

    def parse(self, row: dict, where: str) -> Item:
        raise NotImplementedError

    def items(self, path: str) -> list[Item]:
        """Every item of a jsonl file; a malformed line is refused naming its number."""
        out = []
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
                    out.append(self.parse(row, f"{path}:{lineno}"))
        except OSError as e:
            raise DataError(f"cannot read the {self.name} file '{path}' ({e.strerror or e})") from None
        if not out:
            raise DataError(f"'{path}' holds no {self.name} items")
        return out


@TASKS.register("hellaswag")
class HellaSwag(Task):
    """HellaSwag validation (Zellers et al. 2019): 10,042 contexts, 4 endings each. The context is
    the row's `ctx`; each ending is scored after a space, as llm.c does (GPT-2 124M: acc_norm 0.2955)."""
    name = "hellaswag"
    url = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
    filename = "hellaswag_val.jsonl"

    def parse(self, row, where: str) -> Item:
        if not isinstance(row, dict):
            raise DataError(f"{where}: not a JSON object")
        missing = [k for k in ("ctx", "endings", "label") if k not in row]
        if missing:
            raise DataError(f"{where}: no field '{missing[0]}' (a HellaSwag row has ctx, endings, label)")
        endings, label = row["endings"], row["label"]
        if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) for e in endings)):
            raise DataError(f"{where}: 'endings' must be a list of at least two strings")
        if not (isinstance(label, int) and 0 <= label < len(endings)):
            raise DataError(f"{where}: 'label' must be an ending's index (0..{len(endings) - 1}); got {label!r}")
        return Item(str(row["ctx"]), [" " + e for e in endings], label)


def task_file(name: str, given: str | None, cache_dir: str) -> str:
    """The task's data: the file given, a cached copy, or a download into cache_dir (one line offline)."""
    task = TASKS.get(name)()
    if given:
        if not os.path.isfile(given):
            raise DataError(f"{name} file '{given}' not found")
        return given
    path = os.path.join(cache_dir, task.filename)
    if os.path.isfile(path):
        return path
    import urllib.request

    from modgpt.io import write_bytes
    print(f"downloading {name} from {task.url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(task.url, timeout=60) as r:
            data = r.read()
    except Exception as e:
        raise DataError(f"could not download {name} ({type(e).__name__}: {e}); offline, copy {task.filename} "
                        f"onto this machine and pass it with --input (or --eval_tasks_input)") from None
    os.makedirs(cache_dir, exist_ok=True)
    write_bytes(path, data)
    return path


@dataclass
class Result:
    task: str
    n: int = 0
    acc: float = 0.0
    acc_norm: float = 0.0
    truncated: int = 0  # items whose context was cut from the left to fit block_size
    skipped: int = 0  # items the tokenizer could not encode (--skip_unencodable)
    items: list = field(default_factory=list)  # per item: index, label, choice, choice_norm, logliks, tokens

    def summary(self) -> str:
        extra = "".join(f", {n} {w}" for n, w in ((self.truncated, "contexts cut to the block size"),
                                                  (self.skipped, "items skipped (not encodable)")) if n)
        return f"{self.task}: acc {self.acc:.4f}, acc_norm {self.acc_norm:.4f} ({self.n} items{extra})"

    def to_dict(self, with_items: bool = True) -> dict:
        d = {"task": self.task, "n": self.n, "acc": self.acc, "acc_norm": self.acc_norm,
             "truncated": self.truncated, "skipped": self.skipped}
        return {**d, "items": self.items} if with_items else d


def requests(items: list[Item], encode: Callable[[str], list[int]], block_size: int, skip_unencodable: bool):
    """(token sequences with the index where each ending starts, items kept, truncated count, skipped count).
    A sequence longer than block_size + 1 loses tokens from the left of its context."""
    seqs, kept, truncated, skipped = [], [], 0, 0
    for i, item in enumerate(items):
        try:
            ctx = encode(item.context)
            ends = [encode(e) for e in item.endings]
        except DataError as e:
            if not skip_unencodable:
                raise DataError(f"item {i + 1}: the run's tokenizer cannot encode it ({e}); pass "
                                f"--skip_unencodable to score the others") from None
            skipped += 1
            continue
        cut_any = False
        rows = []
        for end in ends:
            seq = ctx + end
            cut = max(0, len(seq) - (block_size + 1))
            cut_any |= cut > 0
            # an ending longer than the block keeps its last tokens, the first of them as context
            rows.append((seq[cut:], max(1, len(ctx) - cut)))
        truncated += cut_any
        seqs.append(rows)
        kept.append(i)
    return seqs, kept, truncated, skipped


def _buckets(block_size: int) -> list[int]:
    """Padded lengths: powers of two up to block_size (a backend that compiles per shape compiles few)."""
    out, n = [], 16
    while n < block_size:
        out.append(n)
        n *= 2
    return out + [block_size]


def score(name: str, items: list[Item], encode, block_size: int, loglik, skip_unencodable: bool = False,
          seqs_per_batch: int = SEQS_PER_BATCH) -> Result:
    """Score items with the backend's loglik(x, y, mask) -> (N,) sums; endings batched, never one call each."""
    seqs, kept, truncated, skipped = requests(items, encode, block_size, skip_unencodable)
    flat = [(k, j, seq, start) for k, rows in enumerate(seqs) for j, (seq, start) in enumerate(rows)]
    sums = [np.zeros(len(rows)) for rows in seqs]
    counts = [np.array([len(seq) - start for seq, start in rows]) for rows in seqs]
    buckets = _buckets(block_size)
    for b in range(0, len(flat), seqs_per_batch):
        part = flat[b:b + seqs_per_batch]
        L = next(n for n in buckets if n >= max(len(seq) - 1 for _, _, seq, _ in part))
        x = np.zeros((seqs_per_batch, L), np.int32)
        y = np.zeros((seqs_per_batch, L), np.int32)
        mask = np.zeros((seqs_per_batch, L), np.float32)
        for r, (_, _, seq, start) in enumerate(part):
            n = len(seq) - 1
            x[r, :n], y[r, :n] = seq[:-1], seq[1:]
            mask[r, start - 1:n] = 1.0  # the targets that are ending tokens
        out = np.asarray(loglik(x, y, mask), dtype=np.float64)
        for r, (k, j, _, _) in enumerate(part):
            sums[k][j] = out[r]
    res = Result(name, n=len(kept), truncated=truncated, skipped=skipped)
    right = right_norm = 0
    for k, i in enumerate(kept):
        choice, choice_norm = int(np.argmax(sums[k])), int(np.argmax(sums[k] / counts[k]))
        right += choice == items[i].label
        right_norm += choice_norm == items[i].label
        res.items.append({"index": i, "label": items[i].label, "choice": choice, "choice_norm": choice_norm,
                          "logliks": [float(v) for v in sums[k]], "ending_tokens": [int(c) for c in counts[k]]})
    res.acc = right / max(1, len(kept))
    res.acc_norm = right_norm / max(1, len(kept))
    if not kept:
        res.acc = res.acc_norm = math.nan
    return res
