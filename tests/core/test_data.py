"""Data preparation, the shared batch sampler, the run log, atomic io and the loop helpers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from modgpt import data as D
from modgpt import loop, report, runlog
from modgpt.prepare import prepare


def test_prepare_char(char_data, shakespeare_path):
    meta = D.load_meta(char_data)
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == 65
    n = os.path.getsize(shakespeare_path)  # Tiny Shakespeare is ASCII: one char per byte
    assert meta["train_tokens"] + meta["val_tokens"] == n == 1_115_394
    tok = D.get_tokenizer(meta)
    arr = np.memmap(os.path.join(char_data, "train.bin"), dtype=np.uint16, mode="r")
    with open(shakespeare_path) as f:
        head = f.read(200)
    assert tok.decode(arr[:200]) == head


def test_prepare_gpt2_bpe(tmp_path, shakespeare_path):
    out = prepare("shakespeare", [shakespeare_path], data_dir=str(tmp_path), progress=False)
    meta = D.load_meta(out)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257
    tok = D.get_tokenizer(meta)
    arr = np.fromfile(os.path.join(out, "train.bin"), dtype=np.uint16)
    assert 250_000 < meta["train_tokens"] < 400_000
    assert tok.decode(arr[:50]).startswith("First Citizen:")


def test_prepare_cli_and_offline_errors(tmp_path, shakespeare_path):
    env = {**os.environ, "MODGPT_TINYSHAKESPEARE": ""}
    r = subprocess.run([sys.executable, "-m", "modgpt.prepare", "text", "--data_dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "needs --input" in r.stderr
    r = subprocess.run([sys.executable, "-m", "modgpt.prepare", "shakespeare_char", "--input",
                        shakespeare_path, "--data_dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "vocab_size=65" in r.stdout
    r = subprocess.run([sys.executable, "-m", "modgpt.prepare", "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "valid: shakespeare_char, shakespeare, text" in r.stderr


def test_sampler_is_deterministic_and_slices_by_rank(char_data):
    a = D.BatchSampler(char_data, block_size=32, batch_size=8, seed=7)
    x1, y1 = a.get("train", 5)
    x2, y2 = a.get("train", 5)
    assert np.array_equal(x1, x2) and x1.shape == (8, 32) and x1.dtype == np.int32
    assert np.array_equal(x1[:, 1:], y1[:, :-1])  # targets are inputs shifted by one
    assert not np.array_equal(a.get("train", 6)[0], x1)
    assert not np.array_equal(a.get("train", 5, micro_step=1)[0], x1)
    assert not np.array_equal(a.get("val", 5)[0], x1)
    parts = [D.BatchSampler(char_data, 32, 8, 7, rank=r, world=2).get("train", 5)[0] for r in range(2)]
    assert np.array_equal(np.concatenate(parts), x1)  # two ranks together = the global batch


def test_sampler_errors(tmp_path, char_data):
    import shutil
    bad = tmp_path / "ds"
    shutil.copytree(char_data, bad)
    with pytest.raises(D.DataError, match="model's vocab_size is 50"):
        D.BatchSampler(str(bad), 32, 8, 0, vocab_size=50)
    with open(bad / "val.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(D.DataError, match="truncated or corrupt"):
        D.BatchSampler(str(bad), 32, 8, 0)
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(D.DataError, match="not valid JSON"):
        D.load_meta(str(bad))
    with pytest.raises(D.DataError, match="run `python -m modgpt.prepare"):
        D.load_meta(str(tmp_path / "missing"))


def test_runlog_roundtrip_and_torn_line(tmp_path):
    log = runlog.RunLog(str(tmp_path))
    log.header(backend="jax", params=10)
    log.iter(iter=0, loss=float("nan"))
    log.end("completed")
    with open(log.path, "a") as f:
        f.write('{"type": "iter", "iter": 1, "lo')  # a crash mid-write
    recs = runlog.read(str(tmp_path))
    assert [r["type"] for r in recs] == ["header", "iter", "end"]
    assert recs[1]["loss"] == "nan" and recs[2]["status"] == "completed"


def test_lr_schedule():
    from modgpt.config import TrainConfig
    t = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    assert loop.lr_at(0, t) == pytest.approx(1 / 11)
    assert loop.lr_at(9, t) == pytest.approx(10 / 11)
    assert loop.lr_at(10, t) == pytest.approx(1.0)
    assert loop.lr_at(60, t) == pytest.approx(0.55)  # half way down the cosine
    assert loop.lr_at(110, t) == pytest.approx(0.1) and loop.lr_at(500, t) == 0.1


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from modgpt.io import atomic_path, write_json
    p = tmp_path / "x.json"
    write_json(str(p), {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(str(p)) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def _Args(**flat):
    from modgpt import cli
    return cli.parse([f"--{k}={v}" for k, v in flat.items()])


def test_setup_guards(tmp_path, data_dir):
    out = str(tmp_path / "run")
    base = dict(data_dir=data_dir, out_dir=out, size="tiny")
    run = loop.setup(_Args(**base), "torch", has_accelerator=False)
    assert run.cfg.model.vocab_size == 65 and os.path.isfile(os.path.join(out, "config.json"))
    with pytest.raises(loop.SetupError, match="in use by another run"):
        loop.setup(_Args(**base, init_from="resume"), "torch", has_accelerator=False)
    run.lock.release()
    with pytest.raises(loop.SetupError, match="already holds a run; pass --init_from=resume"):
        loop.setup(_Args(**base), "torch", has_accelerator=False)
    with pytest.raises(loop.SetupError, match="different architecture: n_layer=3 but the checkpoint has 2"):
        loop.setup(_Args(**base, init_from="resume", n_layer=3), "torch", has_accelerator=False)
    with pytest.raises(loop.SetupError, match="holds a torch run"):
        loop.check_backend(out, "jax")
    with pytest.raises(loop.SetupError, match="needs --out_dir"):
        loop.setup(_Args(data_dir=data_dir, init_from="resume"), "torch", has_accelerator=False)
    blocker = tmp_path / "a_file"  # a path under a regular file is unwritable even for root
    blocker.write_text("")
    with pytest.raises(loop.SetupError, match="not writable"):
        loop.setup(_Args(data_dir=data_dir, out_dir=str(blocker / "x"), size="tiny"), "torch", False)


def test_auto_size_on_cpu(tmp_path, data_dir):
    run = loop.setup(_Args(data_dir=data_dir, out_dir=str(tmp_path / "a")), "jax", has_accelerator=False)
    assert run.cfg.model.n_layer == 4 and "no accelerator" in run.size_reason
    run.lock.release()
    run = loop.setup(_Args(data_dir=data_dir, out_dir=str(tmp_path / "b"), n_layer=3), "jax", False)
    assert run.cfg.model.n_layer == 3 and run.cfg.model.n_embd == 768


def test_schedule_follows_the_run(tmp_path, data_dir):
    """Unset, lr_decay_iters follows max_iters and the warmup is capped at 10% of the run; the report
    says where each value came from."""
    run = loop.setup(_Args(data_dir=data_dir, out_dir=str(tmp_path / "a"), max_iters=40), "jax", False, write=False)
    t = run.cfg.train
    assert (t.max_iters, t.warmup_iters, t.lr_decay_iters) == (40, 4, 40)
    assert run.schedule == {"max_iters": "command line", "warmup_iters": "CPU budget 50, capped at 10% of max_iters",
                            "lr_decay_iters": "follows max_iters"}
    assert loop.lr_at(4, t) == t.learning_rate and loop.lr_at(40, t) == t.min_lr  # reaches its peak, decays
    line = report.schedule_line(t, run.schedule)
    assert line.startswith("40 iters (command line); lr 0.002 -> 0.0002; warmup 4 (CPU budget 50, capped")
    assert "cosine decay to iter 40 (follows max_iters)" in line and "note:" not in line
    run = loop.setup(_Args(data_dir=data_dir, out_dir=str(tmp_path / "b"), size="tiny"), "jax", True, write=False)
    t = run.cfg.train  # the defaults fit a 5000-iteration run as they are
    assert (t.max_iters, t.warmup_iters, t.lr_decay_iters) == (5000, 100, 5000)
    assert run.schedule["warmup_iters"] == "default" and run.schedule["lr_decay_iters"] == "follows max_iters"


def test_explicit_schedule_is_kept(tmp_path, data_dir):
    """A config file's schedule is taken exactly (nanoGPT's recipe), cut short with a note; a warmup
    that does not end before the decay is refused in one line."""
    from modgpt import cli
    from modgpt.config import ConfigError
    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "train_shakespeare_char.py")
    args = cli.parse([recipe, "--max_iters=40", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'a'}"])
    run = loop.setup(args, "torch", False, write=False)
    t = run.cfg.train
    assert (t.max_iters, t.warmup_iters, t.lr_decay_iters) == (40, 100, 5000)
    assert run.schedule == {"max_iters": "command line", "warmup_iters": "config file", "lr_decay_iters": "config file"}
    assert report.schedule_line(t, run.schedule).endswith(
        "; note: the run stops at 1% of its schedule (resume with --max_iters=5000)")
    with pytest.raises(ConfigError, match=r"^warmup_iters=50 \(command line\) does not end before the learning "
                                          r"rate's decay does at lr_decay_iters=40 \(follows max_iters\); lower "
                                          r"--warmup_iters"):
        loop.setup(_Args(data_dir=data_dir, out_dir=str(tmp_path / "b"), max_iters=40, warmup_iters=50), "jax", False)
    with pytest.raises(ConfigError, match=r"warmup_iters=100 \(default\) does not end before .* "
                                          r"lr_decay_iters=100 \(command line\)"):
        loop.setup(_Args(data_dir=data_dir, out_dir=str(tmp_path / "b"), size="tiny", lr_decay_iters=100), "jax", True)
    assert not (tmp_path / "b").exists()


def test_resumed_schedule_stays(tmp_path, data_dir):
    """A resumed run keeps the schedule it started with, even when it is given a longer max_iters."""
    out = str(tmp_path / "run")
    run = loop.setup(_Args(data_dir=data_dir, out_dir=out, size="tiny", max_iters=40), "torch", False)
    run.lock.release()
    run = loop.setup(_Args(out_dir=out, init_from="resume", max_iters=80), "torch", False, write=False)
    t = run.cfg.train
    assert (t.max_iters, t.warmup_iters, t.lr_decay_iters) == (80, 4, 40)
    assert run.schedule == {"max_iters": "command line", "warmup_iters": "the resumed run",
                            "lr_decay_iters": "the resumed run"}


def test_progress_lines_when_piped(capsys):
    """Not a terminal (a log file, a cluster job): a line every log_interval with the iteration out of
    max_iters, loss, tokens/s and an ETA at the pace since the first step."""
    from modgpt.config import Config
    cfg = Config().replace(max_iters=101, log_interval=10)
    prog = report.Progress(cfg, 0)
    assert prog.bar is None  # pytest's captured stderr is not a terminal
    assert prog.eta(0, now=100.0) is None  # the first step: no pace yet
    assert prog.eta(10, now=105.0) == pytest.approx(45.0)  # 0.5 s/iter, 90 iterations left
    stats = dict(loss=2.5, lr=1e-3, dt=0.5, tokens_per_sec=12345.0, mfu=None, peak_mem_bytes=None, grad_norm=0.5)
    prog.step(20, stats)
    out = capsys.readouterr().out.strip()
    assert out.startswith("iter 20/101: loss 2.5000, lr 1.00e-03, 500ms/it, 12,345 tok/s, mfu -") and ", eta " in out
    assert report.fmt_duration(45) == "45s" and report.fmt_duration(192) == "3m12s" and report.fmt_duration(7500) == "2h05m"
    prog.step(21, {"loss": None})  # iterations between log intervals print nothing
    assert capsys.readouterr().out == ""


def test_offline_advice_names_whole_commands(tmp_path, monkeypatch):
    """Offline, preparing Tiny Shakespeare (from prepare or on a train command's first run) says what
    to do with options that exist: the environment variable, or the whole prepare command."""
    import urllib.error

    from modgpt import prepare as P

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.delenv(P.TINYSHAKESPEARE_ENV, raising=False)
    monkeypatch.setattr(P.urllib.request, "urlopen", offline)
    data = tmp_path / "data"
    with pytest.raises(D.DataError) as e:
        loop.ensure_data(_Args(data_dir=data).config, verbose=False)
    msg = str(e.value)
    assert msg.startswith("could not download Tiny Shakespeare (URLError: <urlopen error no network>); offline, ")
    assert f"set {P.TINYSHAKESPEARE_ENV}=/path/to/input.txt" in msg
    assert f"run `python -m modgpt.prepare shakespeare_char --input /path/to/input.txt --data_dir {data}`" in msg
    assert "pass --input" not in msg and not (data / "shakespeare_char" / "meta.json").exists()


def test_token_bytes_for_bits_per_byte(tmp_path):
    """Bytes each token decodes to: a character's UTF-8 length; a GPT-2 token's own bytes (a text's
    tokens sum to the text's UTF-8 length), end-of-text none."""
    import numpy as np
    chars = D.token_bytes({"tokenizer": "char", "chars": ["\n", "a", "é", "日"]})
    assert chars.tolist() == [1, 1, 2, 3]
    lengths = D.token_bytes({"tokenizer": "gpt2"})
    enc = D.GPT2Tokenizer()
    text = "Once upon a time, naïve café — 日本語 text\n\n"
    assert int(lengths[np.array(enc.encode(text))].sum()) == len(text.encode("utf-8"))
    assert lengths[D.GPT2Tokenizer.EOT] == 0 and len(lengths) == 50257
