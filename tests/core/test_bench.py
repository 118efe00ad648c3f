"""modgpt.bench: the table and JSON of a real (tiny, few-iteration) run, aggregation, bad input.

No timing assertions: the numbers depend on the machine and its load; the checks are on structure
(every backend present with positive throughput, warm-up discarded, ratios consistent).
"""
from __future__ import annotations

import json
import os

import pytest

from modgpt import bench as BM

TINY = ["--size=tiny", "--batch_size=8", "--block_size=32"]  # batch 8: splits over 8 fake devices


@pytest.fixture
def run_bench(run_main):
    return lambda *argv: run_main(BM.main, *argv)


@pytest.mark.parametrize("argv,option", [
    (["--backends=jax,tensorflow"], "--backends"),
    (["--backends=jax,jax"], "--backends"),
    (["--iters=0"], "--iters"),
    (["--repeat=0"], "--repeat"),
    (["--warmup=x"], "--warmup"),
    (["--json=/nonexistent-dir/x.json"], "--json"),
    (["--json="], "--json"),
    (["--json=/tmp"], "--json"),  # a directory
    (["--json"], "--json"),
    (["--cpus=99999"], "--cpus"),
])
def test_bad_options_one_line_exit_2(run_bench, tmp_path, argv, option):
    code, out = run_bench(*TINY, *argv)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and option in lines[0]
    assert "running" not in out.out  # refused before any backend ran


def test_forwarded_drops_bench_flags():
    argv = ["--size=tiny", "--backends", "jax", "--iters=3", "--json", "f.json", "--lr=1", "cfg.py"]
    assert BM.forwarded(argv) == ["--size=tiny", "--lr=1", "cfg.py"]


def fake(backend, ms, tpi=1000, **kw):
    return dict(backend=backend, ms_per_iter=ms, ms_per_iter_stdev=1.0, tokens_per_sec=tpi * 1000 / ms,
                mfu=None, warmup_s=2.0, startup_s=1.0, peak_rss_bytes=2**20, peak_device_mem_bytes=None, **kw)


def test_combine_and_ratios_take_medians_within_rounds():
    rounds = [{"jax": fake("jax", 100), "torch": fake("torch", 200)},
              {"jax": fake("jax", 300), "torch": fake("torch", 300)},  # a slow round for both
              {"jax": fake("jax", 110), "torch": fake("torch", 200)}]
    jax = BM.combine([r["jax"] for r in rounds])
    assert jax["ms_per_iter"] == 110 and jax["rounds"] == 3 and jax["ms_per_iter_rounds"] == [100, 300, 110]
    r = BM.ratios(rounds, ["jax", "torch"])
    assert r["jax/torch"] == pytest.approx(200 / 110)  # per-round ratios 2, 1, 1.82 -> median
    assert r["torch/jax"] == pytest.approx(110 / 200)
    per = BM.round_ratios(rounds, ["jax", "torch"])
    assert per["jax/torch"] == pytest.approx([2.0, 1.0, 200 / 110])  # in round order
    # the printed line gives the spread over rounds, so a difference within the noise shows as such
    assert BM.ratio_line("jax/torch", per["jax/torch"]) == "tokens/s jax/torch: 1.82 (median of 3 rounds: 1.00-2.00)"
    assert BM.ratio_line("jax/torch", [0.9]) == "tokens/s jax/torch: 0.90"
    failed = [{"jax": {"backend": "jax", "error": "x"}, "torch": fake("torch", 200)}] + rounds
    assert BM.round_ratios(failed, ["jax", "torch"])["jax/torch"] == per["jax/torch"]  # failed rounds left out
    text = BM.table([jax, BM.combine([x["torch"] for x in rounds])], r)
    assert "x torch" in text.splitlines()[0]
    assert text.splitlines()[2].split()[-1] == f"{200 / 110:.2f}"


def test_environment_is_recorded(monkeypatch):
    """The environment variables that change a timing (XLA_FLAGS, thread counts, ...) are part of
    the record: two runs that differ only there must not read as the same experiment."""
    for k in list(os.environ):
        if k.startswith(BM.TIMING_ENV_PREFIXES) or k in BM.TIMING_ENV_NAMES:
            monkeypatch.delenv(k)
    assert BM.timing_env() == {} and BM.env_line({}).startswith("environment: none of XLA_*, JAX_*")
    assert BM.env_line({}).endswith("LD_PRELOAD, MODGPT_HOST_MALLOC set")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type=")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")  # how long torch's OpenMP threads spin before sleeping
    monkeypatch.setenv("MODGPT_HOST_MALLOC", "default")  # the allocator setting (modgpt/hostmem.py)
    monkeypatch.setenv("MODGPT_TINYSHAKESPEARE", "/x")  # not timing settings: a data path,
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", "/root/.terraformrc")  # and Terraform's, not XLA's
    monkeypatch.setenv("LD_PRELOAD_X", "1")  # names outside the prefixes match whole only
    env = BM.timing_env()
    assert env == {"GOMP_SPINCOUNT": "0", "MODGPT_HOST_MALLOC": "default", "OMP_NUM_THREADS": "1",
                   "XLA_FLAGS": "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type="}
    assert BM.machine()["env"] == env
    assert BM.env_line(env) == ("environment: GOMP_SPINCOUNT=0 MODGPT_HOST_MALLOC=default OMP_NUM_THREADS=1 "
                                "XLA_FLAGS='--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type='")


def test_failed_backend_is_reported():
    res = [fake("jax", 100), {"backend": "torch", "error": "error: boom", "returncode": 2}]
    text = BM.table(res, {})
    assert "torch" in text and "FAILED: error: boom" in text


def test_bench_runs_all_backends(run_bench, data_dir, tmp_path):
    out_json = tmp_path / "bench.json"
    code, out = run_bench(*TINY, f"--data_dir={data_dir}", "--backends=jax,torch,nanogpt",
                          "--iters=2", "--warmup=1", f"--json={out_json}")
    assert code == 0, out.out + out.err
    lines = out.out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("backend"))
    for col in ("tokens/s", "ms/iter", "MFU", "step plan", "floor", "x floor", "peak RSS", "compile+warm-up s",
                "x torch"):
        assert col in lines[head]
    rows = {ln.split()[0]: ln.split() for ln in lines[head + 2:head + 5]}
    assert set(rows) == {"jax", "torch", "nanogpt"}
    assert rows["torch"][-1] == "1.00"
    assert any(ln.startswith("tokens/s jax/torch:") for ln in lines)
    assert any(ln.startswith("tokens/s torch/nanogpt:") for ln in lines)
    assert lines[-1].startswith("command: python -m modgpt.bench --size=tiny")
    assert lines[-2] == BM.env_line(BM.timing_env())  # this suite sets XLA_FLAGS (8 CPU devices)

    rep = json.loads(out_json.read_text())
    assert rep["command"][:3] == ["python", "-m", "modgpt.bench"] and rep["machine"]["cores"] == os.cpu_count()
    assert rep["machine"]["env"]["XLA_FLAGS"] == os.environ["XLA_FLAGS"]
    assert set(rep["ratios"]) >= {"jax/torch", "torch/nanogpt", "jax/nanogpt"}
    assert rep["round_ratios"]["jax/torch"] == [rep["ratios"]["jax/torch"]]  # one round
    by = {r["backend"]: r for r in rep["results"]}
    for name, r in by.items():
        assert r["timed_iters"] == 2, name  # the warm-up iteration is not timed
        assert r["tokens_per_sec"] > 0 and r["ms_per_iter"] > 0 and r["warmup_s"] > 0
        assert r["peak_rss_bytes"] > 50 * 2**20  # a Python process with jax or torch loaded
        assert r["arch"] == by["jax"]["arch"] and r["tokens_per_iter"] == 8 * 32
        assert r["mfu"] is None  # CPU: no known peak
    assert by["jax"]["versions"]["jax"] and by["torch"]["versions"]["torch"]
    # the attention kernel each backend's step ran, from its log header, also in the printed details
    assert by["jax"]["attention"] == "causal block kernel (CPU)" and by["torch"]["attention"] == "sdpa (flash attention)"
    assert any(ln.startswith("  jax versions:") and ln.endswith("attention: causal block kernel (CPU)") for ln in lines)
    # XLA's plan for the JAX step covers at least its arguments: params + Adam moments (12 B/param)
    assert by["jax"]["step_plan_bytes"] > 12 * by["jax"]["params"]
    assert by["torch"]["step_plan_bytes"] is None and by["nanogpt"]["step_plan_bytes"] is None
    # every backend logs modgpt.memory's floor for its layout: the same for the two torch loops; JAX
    # splits the batch (and so the activations) over its devices (8 fake ones under the test suite)
    floor = by["torch"]["memory_floor_bytes"]
    assert floor == by["nanogpt"]["memory_floor_bytes"]
    assert floor > 16 * by["jax"]["params"]  # weights, gradients and two AdamW moments in float32, + activations
    assert (by["jax"]["memory_floor_bytes"] < floor) == (by["jax"]["n_devices"] > 1)
    floor = by["jax"]["memory_floor_bytes"]
    assert by["jax"]["step_plan_bytes"] > by["jax"]["memory_floor_bytes"] * 0.9
    # the x floor column: the measured device peak where there is one; on the CPU the plan, marked
    assert rows["jax"][8] == f"{by['jax']['step_plan_bytes'] / floor:.2f}(plan)"
    assert BM.over_floor({**by["jax"], "peak_device_mem_bytes": 2 * floor}) == "2.00"
    assert rows["torch"][8] == "-"  # no device peak and no plan on CPU
    assert rep["ratios"]["jax/torch"] == pytest.approx(by["jax"]["tokens_per_sec"] / by["torch"]["tokens_per_sec"])


def test_baseline_refuses_other_architectures(run_bench, data_dir, tmp_path):
    code, out = run_bench("--preset=llama", *TINY, f"--data_dir={data_dir}", "--backends=nanogpt",
                          "--iters=1", "--warmup=0")
    assert code == 1
    assert "FAILED: error: the nanogpt baseline implements the gpt2 architecture only" in out.out
