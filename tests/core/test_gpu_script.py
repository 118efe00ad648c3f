""".ci/gpu, the GPU measurement stages for a session lent a device machine: its commands must run
before a GPU is there to run them, so `bash .ci/gpu smoke` runs every stage on the CPU at the tiny
size, and every result file a stage promises must be there and hold what the docs read from it."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "gpu"


def run(*args, out, data_dir=None, timeout=600, env=None):
    env = dict(os.environ, OUT=str(out), **(env or {}))
    env.pop("XLA_FLAGS", None)  # one CPU device in the children, as on a fresh machine
    if data_dir:
        env["DATA_DIR"] = data_dir
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_smoke_runs_every_stage(tmp_path, data_dir):
    p = run("smoke", out=tmp_path, data_dir=data_dir)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in tmp_path.iterdir())
    # torch.compile on the CPU needs a C++ compiler; the smoke skips that stage without one
    compiler = shutil.which("c++") or shutil.which("g++")
    # every stage (the smoke skips compat and parity_bf16, and breakdowns gpt2 only): 13 files; the device tool brings back 8
    # per call, which is why the real runs are split into calls (.ci/gpu's header)
    assert "== compat: skipped in smoke" in p.stdout
    assert len(files) == (13 if compiler else 11) and "env.log" in files, files
    for stage in ("bench_gpt2", "bench_llama", "bench_dropout") + (("bench_compile",) if compiler else ()):
        rep = json.loads((tmp_path / f"{stage}.json").read_text())
        runs = {r["backend"]: r for r in rep["results"]}
        assert set(runs) == ({"torch"} if stage == "bench_compile" else {"jax", "torch"}), stage
        assert all(r["ms_per_iter"] > 0 for r in runs.values()), stage
        assert "== " + stage + ": exit 0" in (tmp_path / f"{stage}.log").read_text()
    assert "--dropout=0.1" in " ".join(json.loads((tmp_path / "bench_dropout.json").read_text())["command"])
    if compiler:
        assert "--compile=True" in " ".join(json.loads((tmp_path / "bench_compile.json").read_text())["command"])
    bd = json.loads((tmp_path / "breakdown_gpt2.json").read_text())
    assert [r["part"] for r in bd["parts"]][:2] == ["step", "fwd+bwd"] and bd["dtype"] == "float32"
    assert "--preset gpt2" in " ".join(bd["command"])
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["passed"] is True and parity["rows"] and all(r["passed"] for r in parity["rows"])
    env = (tmp_path / "env.log").read_text()
    assert '"torch"' in env and "MISSING" not in env
    # the attention kernel each backend's step runs for the benched shapes (here the CPU's)
    assert "attention, llama 124M bfloat16: jax causal block kernel (CPU); torch sdpa (flash attention)" in env


def test_budget_stops_a_step_and_skips_the_rest(tmp_path):
    """GPU_BUDGET_S: the step that runs past it is ended with its children (as bench's training
    processes would be), the next steps are skipped, and the call returns when the budget says."""
    marker = f"modgpt-budget-{os.getpid()}"
    fake = tmp_path / "python"  # stands in for the device's python3: a step that never ends
    fake.write_text(f"#!/bin/bash\npython3 -c 'import time; time.sleep(600)' {marker} &\nwait\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    t0 = time.monotonic()
    p = run("env", "bench", "parity", out=out, env={"GPU_BUDGET_S": "6", "GPU_MIN_STEP_S": "3",
                                                     "PYTHON": str(fake)})
    took = time.monotonic() - t0
    assert p.returncode == 1 and 6 <= took < 6 + 15, (took, p.stdout[-2000:])
    log = (out / "env.log").read_text()
    assert "== env: exit 124 after" in log and "(stopped: GPU_BUDGET_S=6 reached)" in log, log
    for later in ("bench_gpt2", "bench_llama", "parity"):
        assert (out / f"{later}.log").read_text().startswith(f"== {later}: skipped,"), later
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == [], left  # the step's child was ended with it


def test_budget_must_be_seconds(tmp_path):
    p = run("env", out=tmp_path, env={"GPU_BUDGET_S": "8m"})
    assert p.returncode == 2 and "must be whole seconds; got '8m', '30'" in p.stderr


def test_unknown_stage_is_refused(tmp_path):
    p = run("benchh", out=tmp_path)
    assert p.returncode == 2
    assert "unknown stage 'benchh'" in p.stderr and "env, compat, bench, compile, dropout, parity, breakdown" in p.stderr
    p = run(out=tmp_path)
    assert p.returncode == 2 and "usage" in p.stderr
    p = run("smoke", "bench", out=tmp_path)
    assert p.returncode == 2 and "takes no others" in p.stderr


@pytest.mark.parametrize("stage", ["bench", "compile", "dropout"])
def test_real_stages_measure_the_issue_sizes(stage):
    """The non-smoke commands measure what the GPU targets name: 124M, bfloat16, GPT-2 BPE data, parity
    on cuda (read from the script: they need a GPU)."""
    text = SCRIPT.read_text()
    real = text[text.index("else\n    SIZE="):text.index("fi\nDATA=")]
    assert "--size=124M" in real and "--dtype=bfloat16" in real and "--dataset=shakespeare " in real
    assert "PARITY=(--device cuda)" in real
    assert f"\n        {stage})" in text
