"""End-to-end CLI runs on a tiny model: smoke, exact resume, export/init_from, sample, bad input."""
import math
import os
import subprocess
import sys

import pytest
import torch

from modgpt import data as D
from modgpt import runlog
from modgpt import weights as W

torch.set_num_threads(1)
TINY = ["--size=tiny", "--batch_size=4", "--eval_iters=2", "--log_interval=1", "--warmup_iters=2",
        "--lr_decay_iters=8", "--learning_rate=3e-3", "--seed=7"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(module, *args, check=True):
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV,
                       timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def full_run(data_dir, tmp_path_factory):
    """8 iterations, evaluated and checkpointed every 4."""
    out = str(tmp_path_factory.mktemp("full") / "run")
    p = run("modgpt_torch.train", *TINY, "--max_iters=8", "--eval_interval=4", f"--data_dir={data_dir}",
            f"--out_dir={out}")
    return out, p


def losses(out):
    return {r["iter"]: r["loss"] for r in runlog.read(out) if r["type"] == "iter"}


def final_state(out):
    from modgpt_torch.checkpoint import load_latest
    return load_latest(out)


def test_smoke_log_checkpoint_sample(full_run, data_dir):
    out, p = full_run
    assert "MODEL ARCHITECTURE" in p.stdout and "tokens/iter" in p.stdout
    types = [r["type"] for r in runlog.read(out)]
    assert types[0] == "header" and types[-1] == "end"
    assert runlog.read(out)[0]["attention"] == "sdpa (flash attention)"  # torch's pick, also printed
    assert "attention:    sdpa (flash attention)" in p.stdout
    assert {"iter", "eval", "event"} <= set(types)
    for ev in (r for r in runlog.read(out) if r["type"] == "eval"):  # ASCII characters: a byte a token
        assert ev["val_bpb"] == pytest.approx(ev["val_loss"] / math.log(2), rel=1e-12)
        assert ev["train_bpb"] == pytest.approx(ev["train_loss"] / math.log(2), rel=1e-12)
    end = runlog.read(out)[-1]
    assert end["status"] == "completed" and end["iter"] == 8
    assert sorted(os.listdir(out)).count("ckpt-00000008.pt") == 1
    # a finished run prints a short seeded sample, decoded with the run's char tokenizer
    text = p.stdout.split("sample (seed 7, temperature 0.8):\n", 1)[1]
    vocab = set(D.get_tokenizer(D.load_meta(D.dataset_dir(data_dir, "shakespeare_char"))).decode(list(range(65))))
    assert len(text.rstrip("\n")) >= 150 and set(text) <= vocab
    s = run("modgpt_torch.sample", f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=20", "--start=KING")
    assert s.stdout.startswith("KING") and len(s.stdout) > 20


def test_resume_is_exact(full_run, data_dir, tmp_path):
    """4 iterations, then init_from=resume to 8: same losses and bit-identical final parameters and
    optimizer state on CPU fp32 (same batches, restored AdamW state and RNG)."""
    ref, _ = full_run
    out = str(tmp_path / "run")
    common = [*TINY, "--eval_interval=4", f"--data_dir={data_dir}", f"--out_dir={out}"]
    run("modgpt_torch.train", *common, "--max_iters=4")
    p = run("modgpt_torch.train", *common, "--max_iters=8", "--init_from=resume")
    assert "(resuming)" in p.stdout
    assert losses(out) == losses(ref)
    a, b = final_state(ref), final_state(out)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)


def test_export_and_init_from(full_run, data_dir, tmp_path):
    ref, _ = full_run
    f = str(tmp_path / "w.safetensors")
    run("modgpt_torch.export", f"--out_dir={ref}", "--to", f)
    tensors, cfg = W.load(f)
    ck = final_state(ref)
    assert torch.equal(torch.from_numpy(tensors["blocks.0.attn.qkv.weight"]).T,
                       ck["model"]["blocks.0.attn.qkv.weight"])
    out = str(tmp_path / "run2")
    run("modgpt_torch.train", *TINY, "--max_iters=0", f"--init_from={f}", f"--data_dir={data_dir}",
        f"--out_dir={out}")
    ck2 = final_state(out)
    for k in ck["model"]:
        assert torch.equal(ck["model"][k], ck2["model"][k]), k


@pytest.mark.parametrize("args,needle", [
    (["--n_layr=2"], "n_layer"),
    (["--normalization=rmsnrom"], "rmsnorm"),
    (["--n_embd=30", "--n_head=4"], "divisible"),
    (["--dataset=nope"], "nope"),
    (["--init_from=resume"], "resume"),
])
def test_bad_input_exits_2(data_dir, tmp_path, args, needle):
    out = tmp_path / "bad"
    p = run("modgpt_torch.train", *TINY, f"--data_dir={data_dir}", f"--out_dir={out}", *args, check=False)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert not (out / "config.json").exists()


def test_resume_other_backend_refused(full_run, tmp_path):
    import json
    import shutil
    ref, _ = full_run
    out = tmp_path / "jaxrun"
    shutil.copytree(ref, out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "backend": "jax"}))
    p = run("modgpt_torch.train", f"--out_dir={out}", "--init_from=resume", check=False)
    assert p.returncode == 2 and "modgpt_jax" in p.stderr


def test_sample_without_checkpoint(tmp_path):
    p = run("modgpt_torch.sample", f"--out_dir={tmp_path}", check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


def test_no_jax_import():
    p = subprocess.run([sys.executable, "-c", "import modgpt_torch.train, modgpt_torch.sample, "
                        "modgpt_torch.export, modgpt_torch.parallel, sys; assert 'jax' not in sys.modules"],
                       env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_next_step_is_launched_before_the_last_is_read(data_dir, tmp_path, monkeypatch):
    """One step in flight (single process and DDP, float32/bf16): step it+1's update is launched
    before step it's loss and finiteness are read (a read waits for the device), so a GPU never
    idles while the host logs, sets the lr and launches the next step. A non-finite step is
    skipped by fused AdamW itself (found_inf; tests/reliability/test_nonfinite.py checks the state
    is untouched). The pending step is read before each evaluation, and every iteration is logged
    once, in order."""
    import signal

    from modgpt import runlog as RL
    from modgpt_torch import train as TR
    trace = []
    step, log_iter, log_eval = torch.optim.AdamW.step, RL.RunLog.iter, RL.RunLog.eval

    def traced_step(self, *a, **k):
        trace.append("update")
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", traced_step)
    monkeypatch.setattr(RL.RunLog, "iter", lambda self, **f: (trace.append(f"log{f['iter']}"), log_iter(self, **f)))
    monkeypatch.setattr(RL.RunLog, "eval", lambda self, **f: (trace.append(f"eval{f['iter']}"), log_eval(self, **f)))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert TR.main([*TINY, "--max_iters=5", "--eval_interval=3", f"--data_dir={data_dir}",
                        f"--out_dir={tmp_path / 'run'}", "--progress=False"]) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert trace == ["eval0", "update", "update", "log0", "update", "log1", "log2", "eval3",
                     "update", "update", "log3", "log4", "eval5"]


def test_float16_skips_nonfinite_steps(data_dir, tmp_path):
    """float16 with --skip_nonfinite: a skipped step still closes GradScaler's unscale_/update cycle
    (else the next step raises "unscale_() has already been called"). lr 1e30 makes every
    step after the first non-finite."""
    out = str(tmp_path / "run")
    run("modgpt_torch.train", *TINY, "--dtype=float16", "--skip_nonfinite=True", "--learning_rate=1e30",
        "--warmup_iters=0", "--min_lr=0", "--max_iters=4", "--eval_interval=4", f"--data_dir={data_dir}",
        f"--out_dir={out}")
    recs = runlog.read(out)
    assert [r["iter"] for r in recs if r["type"] == "event" and r["event"] == "skipped_step"] == [1, 2, 3]
    assert recs[-1]["type"] == "end" and recs[-1]["status"] == "completed"


def test_no_evaluation_checkpoint_or_sample(data_dir, tmp_path):
    """--eval_interval=0 --sample_at_end=False (what the bench runs): the steps only, nothing
    evaluated, saved or sampled, and the closing line says so."""
    out = tmp_path / "run"
    p = run("modgpt_torch.train", *TINY, "--max_iters=3", "--eval_interval=0", "--sample_at_end=False",
            f"--data_dir={data_dir}", f"--out_dir={out}", "--progress=False")
    recs = runlog.read(str(out))
    assert [r["iter"] for r in recs if r["type"] == "iter"] == [0, 1, 2]
    assert not [r for r in recs if r["type"] == "eval" or r.get("event") == "checkpoint"]
    assert recs[-1]["type"] == "end" and recs[-1]["status"] == "completed"
    assert not [f for f in os.listdir(out) if f.startswith("ckpt-")]
    assert "done: 3 iterations (eval_interval=0: no evaluation, no checkpoint)" in p.stdout
    assert "sample (seed" not in p.stdout
