"""Sharded preparation (modgpt.prepare text / named corpora -> modgpt.shards): the input formats,
end-of-text at document ends, shard boundaries, any worker count giving the same bytes, kill and
rerun giving the same bytes, bounded memory, the sampler across shards, bad input."""
from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from modgpt import data as D
from modgpt import shards
from modgpt.prepare import main, prepare

EOT = 50256


@pytest.fixture(scope="module")
def docs(shakespeare_path):
    text = open(shakespeare_path, encoding="utf-8").read()
    return [p for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, docs):
    """The same documents spread over jsonl, jsonl.gz and parquet (with other fields), plus a .txt file."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    d = tmp_path_factory.mktemp("corpus")
    with open(d / "a.jsonl", "w", encoding="utf-8") as f:
        for p in docs[:2000]:
            f.write(json.dumps({"id": 0, "text": p}) + "\n")
    with gzip.open(d / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for p in docs[2000:4000]:
            f.write(json.dumps({"text": p}) + "\n")
    pq.write_table(pa.table({"text": docs[4000:6000], "n": list(range(2000))}), d / "c.parquet")
    (d / "d.txt").write_text("\n\n".join(docs[6000:]), encoding="utf-8")
    return d


def _tokens(out: str, split: str) -> np.ndarray:
    meta = D.load_meta(out)
    return np.concatenate([np.fromfile(os.path.join(out, s["file"]), dtype=meta["token_dtype"])
                           for s in meta["shards"][split]])


def _prepare(corpus, tmp_path, name="t", **kw):
    kw = {"shard_tokens": 40_000, "workers": 1, "chunk_chars": 50_000, **kw}
    return prepare("text", [str(corpus)], None, str(tmp_path / "data"), progress=False, name=name, **kw)


def test_every_format_every_document_and_an_end_of_text_after_each(corpus, tmp_path, docs):
    """Every document is there, in input order (files sorted), each followed by the end-of-text token;
    shards hold shard_tokens each but the last, and meta lists them with their checksums."""
    from modgpt.data import GPT2Tokenizer
    enc = GPT2Tokenizer().enc
    out = _prepare(corpus, tmp_path, val_tokens=5_000)
    meta = D.load_meta(out)
    want = [enc.encode_ordinary(p) + [EOT] for p in docs[:6000]] + [enc.encode_ordinary("\n\n".join(docs[6000:])) + [EOT]]
    everything = np.concatenate([_tokens(out, "val"), _tokens(out, "train")])  # val holds the first documents
    assert everything.tolist() == [t for doc in want for t in doc]
    assert meta["val_tokens"] >= 5_000 and meta["val_tokens"] - len(want[0]) < 5_000 + 1000
    for split in ("train", "val"):
        sizes = [s["tokens"] for s in meta["shards"][split]]
        assert all(n == 40_000 for n in sizes[:-1]) and 0 < sizes[-1] <= 40_000
        for s in meta["shards"][split]:
            assert s["sha256"] == shards.file_sha256(os.path.join(out, s["file"]))
    assert meta["token_dtype"] == "uint16" and meta["eot_token"] == EOT
    assert [s["path"] for s in meta["sources"]] == [str(corpus / f) for f in ("a.jsonl", "b.jsonl.gz", "c.parquet", "d.txt")]
    assert not [f for f in os.listdir(out) if f.endswith(".partial") or f == shards.STATE]


def test_one_worker_or_several_write_the_same_bytes(corpus, tmp_path):
    one = _prepare(corpus, tmp_path, "one", workers=1)
    three = _prepare(corpus, tmp_path, "three", workers=3, chunk_chars=20_000)
    m1, m3 = D.load_meta(one), D.load_meta(three)
    assert m1["shards"] == m3["shards"] and len(m1["shards"]["train"]) > 3
    # the validation documents are an evenly spaced tenth, and the same ones every time
    assert 0.05 < m1["val_tokens"] / (m1["train_tokens"] + m1["val_tokens"]) < 0.15


def _cli(corpus, data, name, env=None, **kw):
    args = [sys.executable, "-m", "modgpt.prepare", "text", "--input", str(corpus), "--data_dir", str(data),
            "--name", name, "--shard_tokens", "30000", "--chunk_chars", "40000", "--workers", "2", "--no_progress"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **kw)


def _wait_for(path, timeout=60.0):
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["fault_hook", "renamed_after_record", "sigkill"])
def test_killed_and_rerun_gives_the_bytes_of_an_uninterrupted_run(corpus, tmp_path, how):
    """kill -9 after a recorded batch (the fault hook pauses it there) or at an arbitrary moment (a real
    signal once shards are being written): the rerun continues and every shard and meta.json equal
    an uninterrupted run's."""
    data = tmp_path / "data"
    assert _cli(corpus, data, "ref").wait(timeout=300) == 0
    if how != "sigkill":
        p = _cli(corpus, data, "k", env={"MODGPT_TEST_FAULT": "prepare@4:pause"})
        for line in p.stdout:
            if line.startswith("[test fault] pause in prepare"):
                break
    else:
        p = _cli(corpus, data, "k")
        _wait_for(data / "k" / "train_000001.bin")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert (data / "k" / shards.STATE).exists() and not (data / "k" / "meta.json").exists()
    if how == "renamed_after_record":  # as if killed just after the open shard filled and was renamed,
        partial = next(f for f in os.listdir(data / "k") if f.startswith("train_") and f.endswith(".partial"))
        os.replace(data / "k" / partial, data / "k" / partial[: -len(".partial")])
        for f in ("train_000009.bin.partial", "val_000003.bin.partial", "train_000010.bin"):  # and later ones begun
            (data / "k" / f).write_bytes(b"\x01\x02" * 50)
    again = _cli(corpus, data, "k")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "continuing after" in err, err[-2000:]
    ref, k = D.load_meta(str(data / "ref")), D.load_meta(str(data / "k"))
    assert ref["shards"] == k["shards"]
    for split in ("train", "val"):
        for s in ref["shards"][split]:
            assert (data / "ref" / s["file"]).read_bytes() == (data / "k" / s["file"]).read_bytes(), s["file"]


def test_memory_stays_bounded_by_the_chunk_not_the_corpus(tmp_path, docs):
    """Peak RSS of preparing a corpus ten times larger grows by far less than the corpus' tokens would
    take in memory: what is held is a chunk at a time."""
    base = "\n".join(json.dumps({"text": p}) for p in docs) + "\n"
    peaks = {}
    for n in (1, 10):
        f = tmp_path / f"c{n}.jsonl"
        f.write_text(base * n, encoding="utf-8")
        code = ("import resource, sys; from modgpt.prepare import main; "
                f"rc = main(['text', '--input', {str(f)!r}, '--data_dir', {str(tmp_path / 'd')!r}, '--name', 'c{n}', "
                "'--workers', '1', '--chunk_chars', '200000', '--no_progress']); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        peaks[n] = int(r.stdout.split()[-1]) * 1024
    tokens = D.load_meta(str(tmp_path / "d" / "c10"))["train_tokens"]
    # holding the 10x corpus' tokens as Python ints would take ~28 bytes each (> 100 MB here)
    assert peaks[10] - peaks[1] < 40 * 2**20 < 28 * tokens, (peaks, tokens)


def test_windows_across_shards_are_the_single_files(corpus, tmp_path):
    """The sampler reads the shards as one array: every batch equals the batch drawn from one file
    holding the same tokens, across shard boundaries too."""
    out = _prepare(corpus, tmp_path, shard_tokens=1000)
    single = tmp_path / "single"
    single.mkdir()
    meta = D.load_meta(out)
    for split in ("train", "val"):
        _tokens(out, split).tofile(single / f"{split}.bin")
    (single / "meta.json").write_text(json.dumps({k: meta[k] for k in ("tokenizer", "vocab_size", "train_tokens",
                                                                       "val_tokens", "token_dtype")}))
    a = D.BatchSampler(out, block_size=700, batch_size=16, seed=3)
    b = D.BatchSampler(str(single), block_size=700, batch_size=16, seed=3)
    for it in range(5):
        for split in ("train", "val"):
            xa, ya = a.get(split, it)
            xb, yb = b.get(split, it)
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_both_backends_train_across_shards(corpus, tmp_path, backend):
    out = _prepare(corpus, tmp_path, shard_tokens=5000)
    r = subprocess.run([sys.executable, "-m", f"modgpt_{backend}.train", "--dataset=t", f"--data_dir={tmp_path / 'data'}",
                        "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--max_iters=2",
                        "--eval_iters=1", "--batch_size=2", "--progress=False", "--sample_at_end=False",
                        f"--out_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert r.returncode == 0, r.stderr[-2000:]
    n = len(D.load_meta(out)["shards"]["train"]) + len(D.load_meta(out)["shards"]["val"])
    assert f"val tokens, {n} shards); the run covers" in r.stdout
    # bits per byte: the loss over the bytes the evaluation targets decode to, counted here by decoding
    # them with tiktoken (end-of-text is not text: no bytes)
    from modgpt import runlog
    from modgpt.data import GPT2Tokenizer
    enc, s = GPT2Tokenizer().enc, D.BatchSampler(out, block_size=32, batch_size=2, seed=1337)
    for ev in (e for e in runlog.read(str(tmp_path / "run")) if e["type"] == "eval"):
        for split in ("train", "val"):
            ys = [s.get(split, D.EVAL_ITER + k, local=False)[1] for k in range(1)]
            n_bytes = sum(len(enc.decode_bytes([t for t in row if t != EOT])) for y in ys for row in y.tolist())
            want = ev[f"{split}_loss"] * sum(y.size for y in ys) / math.log(2) / n_bytes
            assert ev[f"{split}_bpb"] == pytest.approx(want, rel=1e-12), split


def test_changed_inputs_are_refused_and_a_finished_prepare_is_kept(corpus, tmp_path, capsys):
    data = tmp_path / "data"
    args = ["text", "--input", str(corpus / "a.jsonl"), "--data_dir", str(data), "--workers", "1", "--no_progress"]
    assert main(args) == 0
    before = (data / "text" / "meta.json").read_bytes()
    assert main(args) == 0 and "already prepared" in capsys.readouterr().err
    assert main(args + ["--shard_tokens", "1000"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: '{data / 'text'}' holds a prepare with other shard_tokens than "
                                               f"these; pass --overwrite to start over, or --name to write another dataset")
    assert (data / "text" / "meta.json").read_bytes() == before
    assert main(args + ["--shard_tokens", "1000", "--overwrite"]) == 0
    assert len(D.load_meta(str(data / "text"))["shards"]["train"]) > 1


@pytest.mark.parametrize("content, name, want", [
    ('{"text": "ok"}\n{"text": oops}\n', "bad.jsonl", "bad.jsonl:2: not a JSON object"),
    ('{"body": "x", "id": 1}\n', "nofield.jsonl", "nofield.jsonl:1: no field 'text' (fields: body, id); choose one with --text_field"),
    ('\n\n', "empty.jsonl", "the corpus is empty"),
    ("", "empty.txt", "the corpus is empty"),
    (None, "missing.jsonl", "--input file '{d}/missing.jsonl' not found"),
    ('x', "notes.md", "--input file '{d}/notes.md' is not one of .txt, .jsonl, .jsonl.gz, .parquet"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, content, name, want):
    if content is not None:
        (tmp_path / name).write_text(content)
    code = main(["text", "--input", str(tmp_path / name), "--data_dir", str(tmp_path / "data"), "--workers", "1",
                 "--no_progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and want.format(d=tmp_path) in err, err
    assert not (tmp_path / "data" / "text").exists()


def test_unknown_corpus_and_a_vocabulary_past_uint32(tmp_path, capsys, monkeypatch, corpus):
    assert main(["finewebedu", "--data_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown dataset 'finewebedu'; did you mean 'fineweb-edu'? (valid: "
                                               "shakespeare_char, shakespeare, text, fineweb-edu, openwebtext)")
    monkeypatch.setattr(D.GPT2Tokenizer, "vocab_size", 2**32 + 1)
    assert main(["text", "--input", str(corpus / "a.jsonl"), "--data_dir", str(tmp_path / "data"), "--no_progress"]) == 2
    assert "does not fit uint32" in capsys.readouterr().err and not (tmp_path / "data" / "text").exists()


class _FakeStream:
    """datasets.load_dataset(..., streaming=True) over local rows (no network in the tests)."""

    def __init__(self, rows, fail_at=None):
        self.rows, self.fail_at, self.calls = rows, fail_at, []

    def __call__(self, path, name=None, split=None, streaming=False):
        self.calls.append((path, name, split, streaming))

        def gen():
            for i, r in enumerate(self.rows):
                if i == self.fail_at:
                    raise ConnectionError("connection reset")
                yield r
        return gen()


def test_named_corpus_streams_through_datasets_and_stops_at_max_tokens(tmp_path, monkeypatch, docs, capsys):
    datasets = pytest.importorskip("datasets")
    fake = _FakeStream([{"text": p, "url": "u"} for p in docs])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    out = prepare("fineweb-edu", None, None, str(tmp_path), progress=False, max_tokens=30_000, val_tokens=3_000,
                  workers=1)
    meta = D.load_meta(out)
    assert fake.calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)]
    total = meta["train_tokens"] + meta["val_tokens"]
    assert 30_000 <= total < 30_000 + 600 and meta["val_tokens"] >= 3_000
    assert meta["sources"] == [{"hub": "HuggingFaceFW/fineweb-edu", "subset": "sample-10BT"}]
    # a stream that drops mid-way keeps what is complete; the same command continues it
    monkeypatch.setattr(datasets, "load_dataset", _FakeStream([{"text": p} for p in docs], fail_at=3000))
    assert main(["openwebtext", "--data_dir", str(tmp_path), "--workers", "1", "--no_progress", "--max_tokens",
                 "200000", "--chunk_chars", "20000"]) == 2
    assert "streaming Skylion007/openwebtext stopped at row 3001" in capsys.readouterr().err
    assert (tmp_path / "openwebtext" / shards.STATE).exists()
    monkeypatch.setattr(datasets, "load_dataset", _FakeStream([{"text": p} for p in docs]))
    assert main(["openwebtext", "--data_dir", str(tmp_path), "--workers", "1", "--no_progress", "--max_tokens",
                 "200000", "--chunk_chars", "20000"]) == 0
    assert "continuing after" in capsys.readouterr().err


def test_named_corpus_offline_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert main(["fineweb-edu", "--data_dir", str(tmp_path), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not stream HuggingFaceFW/fineweb-edu (sample-10BT) from the Hugging Face Hub")
    assert err.endswith("copy them here and run `python -m modgpt.prepare text --input DIR`") and "\n" not in err
    assert not (tmp_path / "fineweb-edu").exists()


def test_a_prepare_killed_before_its_first_record_starts_clean(corpus, tmp_path):
    """Shard files left by a run killed before it recorded anything are not appended to."""
    ref = _prepare(corpus, tmp_path, "ref")
    k = tmp_path / "data" / "k"
    k.mkdir()
    (k / "train_000000.bin.partial").write_bytes(b"\x07\x00" * 999)
    (k / "val_000000.bin.partial").write_bytes(b"\x07\x00" * 5)
    out = _prepare(corpus, tmp_path, "k")
    assert D.load_meta(out)["shards"] == D.load_meta(ref)["shards"]
