"""Multiple-choice scoring (modgpt.tasks) with a stand-in model whose preferences are known, the
HellaSwag reader and its refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from modgpt import config as C
from modgpt import tasks as TK
from modgpt.data import CharTokenizer, DataError

TOK = CharTokenizer(list(" abcdefghijklmnopqrstuvwxyz.?"))
A = TOK.stoi["a"]


def likes_a(calls):
    """A model that gives each target 'a' log-probability 0 and anything else -1, so an ending's
    sum is minus its non-'a' tokens and its mean favours the highest share of 'a's."""
    def loglik(x, y, mask):
        calls.append(x.shape)
        return ((y == A) * 0.0 - (y != A) * 1.0) * mask @ np.ones(x.shape[1])
    return loglik


def items():
    return [
        # sum: "a" (-1: its space) beats "aaaab" (-2); mean: "aaaab" (-2/6) beats "a" (-1/2)
        TK.Item("the cat", [" a", " aaaab"], 0),
        TK.Item("the cat", [" a", " aaaab"], 1),
        # both pick "aaa" (-1 sum, -1/4 mean) over "bbb" (-4) and "ab" (-2)
        TK.Item("a dog.", [" bbb", " aaa", " ab"], 1),
    ]


def test_scores_by_hand_acc_and_acc_norm():
    calls = []
    res = TK.score("hellaswag", items(), TOK.encode, block_size=64, loglik=likes_a(calls))
    assert [(r["choice"], r["choice_norm"]) for r in res.items] == [(0, 1), (0, 1), (1, 1)]
    assert res.items[0]["logliks"] == [-1.0, -2.0] and res.items[0]["ending_tokens"] == [2, 6]
    assert res.acc == pytest.approx(2 / 3) and res.acc_norm == pytest.approx(2 / 3) and res.n == 3
    assert len(calls) == 1 and calls[0] == (TK.SEQS_PER_BATCH, 16)  # 7 endings in one padded call


def test_endings_are_batched_and_long_contexts_cut_from_the_left():
    """40 items x 2 endings go through in 5 calls of 16; a context longer than the block keeps its
    end (the same choices), and the report counts the cut items."""
    calls = []
    many = [TK.Item("x" * 3 + " the cat", [" a", " aaaab"], 0)] * 40
    res = TK.score("hellaswag", many, TOK.encode, block_size=64, loglik=likes_a(calls))
    assert len(calls) == 5 and res.truncated == 0
    long = [TK.Item("b" * 500, [" a", " aaaab"], 1)]
    calls.clear()
    cut = TK.score("hellaswag", long, TOK.encode, block_size=32, loglik=likes_a(calls))
    assert cut.truncated == 1 and calls[0][1] == 32 and cut.items[0]["logliks"] == [-1.0, -2.0]
    assert cut.summary() == "hellaswag: acc 0.0000, acc_norm 1.0000 (1 items, 1 contexts cut to the block size)"


def test_unencodable_text_stops_or_is_skipped_and_counted():
    bad = items() + [TK.Item("CAPITALS", [" a", " b"], 0)]
    with pytest.raises(DataError, match=r"^item 4: the run's tokenizer cannot encode it .*--skip_unencodable"):
        TK.score("hellaswag", bad, TOK.encode, 64, likes_a([]))
    res = TK.score("hellaswag", bad, TOK.encode, 64, likes_a([]), skip_unencodable=True)
    assert res.n == 3 and res.skipped == 1 and "1 items skipped (not encodable)" in res.summary()


def test_hellaswag_rows_and_malformed_lines(tmp_path):
    f = tmp_path / "hs.jsonl"
    rows = [{"ind": 0, "ctx": "A man sits", "endings": ["down.", "up.", "away.", "in."], "label": 2},
            {"ind": 1, "ctx": "Then", "endings": ["x", "y"], "label": 0}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = TK.TASKS.get("hellaswag")().items(str(f))
    assert got[0] == TK.Item("A man sits", [" down.", " up.", " away.", " in."], 2) and len(got) == 2
    f.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"hs.jsonl:2: not a JSON object"):
        TK.TASKS.get("hellaswag")().items(str(f))
    f.write_text(json.dumps({**rows[0], "label": 7}) + "\n")
    with pytest.raises(DataError, match=r"hs.jsonl:1: 'label' must be an ending's index \(0..3\); got 7"):
        TK.TASKS.get("hellaswag")().items(str(f))


def test_an_unknown_task_and_a_missing_file_are_one_line(tmp_path):
    from modgpt.evaluate import task_names
    with pytest.raises(C.ConfigError, match=r"^option '--tasks': unknown task 'helaswag' \(did you mean 'hellaswag'\?\); known: hellaswag$"):
        task_names("helaswag", "--tasks")
    with pytest.raises(DataError, match="hellaswag file '.*nope.jsonl' not found"):
        TK.task_file("hellaswag", str(tmp_path / "nope.jsonl"), str(tmp_path))
    cached = tmp_path / "cache" / "hellaswag_val.jsonl"  # a cached copy is used without a download
    cached.parent.mkdir()
    cached.write_text("{}")
    assert TK.task_file("hellaswag", None, str(tmp_path / "cache")) == str(cached)
