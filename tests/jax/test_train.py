"""The training command: exact resume, resume onto another mesh shape, the 8-device CLI with
sample and export, and clean one-line refusals.

Resume runs call `modgpt_jax.train.main(argv)` in this process (the same code path as
`python -m modgpt_jax.train`, without a jax start-up per run); the CLI test uses real subprocesses.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from modgpt import runlog

N = 3  # interrupt after N iterations, resume to 2N
# dropout: the resumed run must also redraw the same masks. No warmup and lr 1e-3 so that each step
# moves the weights enough (~lr) for a lost optimizer moment to show far above the tolerances.
RUN = ["--eval_interval=3", "--dropout=0.1", "--warmup_iters=0", f"--lr_decay_iters={2 * N}", "--learning_rate=1e-3"]
MESH_2x4 = ["--mesh_data=2", "--mesh_fsdp=4"]


def evals(d):
    return {r["iter"]: r["val_loss"] for r in runlog.read(d) if r["type"] == "eval"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """An uninterrupted 2N run and an N run (both on 2x4), plus a copy of the N run's directory."""
    import signal

    from modgpt_jax import train
    root = tmp_path_factory.mktemp("resume")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    base = ["--preset=llama", "--size=tiny", "--batch_size=8", "--eval_iters=1", "--log_interval=1",
            "--progress=False", f"--data_dir={data_dir}", *RUN, *MESH_2x4]
    try:
        assert train.main([*base, f"--out_dir={root / 'full'}", f"--max_iters={2 * N}"]) == 0
        assert train.main([*base, f"--out_dir={root / 'part'}", f"--max_iters={N}"]) == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    shutil.copytree(root / "part", root / "part_copy")
    return root


def test_resume_is_exact(runs, train_main, iter_losses):
    """fp32 on CPU, same mesh: the resumed iterations are bit-identical to the uninterrupted run's
    (params, Adam moments and step count restored exactly; batches and dropout keys are pure
    functions of (seed, iteration))."""
    full, part = runs / "full", runs / "part"
    assert train_main(part, "--init_from=resume", f"--max_iters={2 * N}", *MESH_2x4) == 0
    ref, got = iter_losses(full), iter_losses(part)
    assert sorted(ref) == sorted(got) == list(range(2 * N))
    assert [got[i] for i in range(2 * N)] == [ref[i] for i in range(2 * N)]
    assert evals(part) == evals(full)
    recs = runlog.read(part)
    assert [r["event"] for r in recs if r["type"] == "event" and r["event"] == "resumed"] == ["resumed"]
    assert recs[-1]["type"] == "end" and recs[-1]["status"] == "completed"


def test_resume_on_another_mesh(runs, train_main, iter_losses, tmp_path):
    """Saved on 2x4, restored onto 1x8 (pure FSDP): orbax reshards the params and
    optimizer state to the new mesh's shardings. Tolerance: relative 1e-5 per loss, the same
    reduction-order argument as tests/jax/test_sharding.py (observed differences are a few ulps)."""
    d = tmp_path / "run"
    shutil.copytree(runs / "part_copy", d)
    assert train_main(d, "--init_from=resume", f"--max_iters={2 * N}", "--mesh_data=1", "--mesh_fsdp=8") == 0
    ref, got = iter_losses(runs / "full"), iter_losses(d)
    assert sorted(got) == list(range(2 * N))
    np.testing.assert_allclose([got[i] for i in range(N, 2 * N)], [ref[i] for i in range(N, 2 * N)],
                               rtol=1e-5, atol=0)
    header = [r for r in runlog.read(d) if r["type"] == "header"][-1]
    assert header["resumed_from"] == N and "fsdp=8" in header["parallel"]


def test_cli_fsdp8_sample_export(cli, data_dir, tmp_path, capsys, trackers):
    """`python -m modgpt_jax.train` in a subprocess on 8 fake devices as pure FSDP, with both trackers
    (W&B offline); then sample and export."""
    out = tmp_path / "run"
    p = cli("modgpt_jax.train", "--preset=llama", "--size=tiny", "--mesh_fsdp=8", "--mesh_data=1",
            "--batch_size=8", "--max_iters=4", "--eval_interval=2", "--eval_iters=1", "--log_interval=1",
            "--dropout=0.1", "--progress=False", f"--data_dir={data_dir}", f"--out_dir={out}",
            "--wandb=True", "--wandb_run_name=fsdp8", "--tensorboard=True", env={"WANDB_MODE": "offline"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    losses = {r["iter"]: r["loss"] for r in runlog.read(out) if r["type"] == "iter"}
    [wb] = trackers.wandb_sessions(out)
    assert wb["name"] == "fsdp8" and wb["config"]["run"]["backend"] == "jax" and wb["config"]["system"]["mesh_fsdp"] == 8
    assert {r["iter"]: r["train/loss"] for r in wb["history"] if "train/loss" in r} == losses
    assert [r["iter"] for r in wb["history"] if "val/loss" in r] == [0, 2, 4]
    ea = trackers.tensorboard(out / "tensorboard")
    assert [(e.step, e.value) for e in ea.Scalars("train/loss")] == [(i, pytest.approx(v, rel=1e-6))
                                                                     for i, v in losses.items()]  # float32 in TB
    assert "FSDP: mesh data=1 x fsdp=8" in p.stdout and "cpu x8" in p.stdout
    if sys.platform.startswith("linux") and not {"MALLOC_ARENA_MAX", "GLIBC_TUNABLES", "LD_PRELOAD",
                                                 "MODGPT_HOST_MALLOC"} & set(os.environ):
        assert "host malloc:  glibc: one arena, freed blocks kept" in p.stdout  # modgpt/hostmem.py
    # the end-of-run sample: printed once, ~200 characters of the run's character vocabulary
    assert "sample (seed 1337, temperature 0.8):" in p.stdout
    text = p.stdout.split("sample (seed 1337, temperature 0.8):\n", 1)[1]
    chars = set(json.load(open(os.path.join(data_dir, "shakespeare_char", "meta.json")))["chars"])
    assert 150 <= len(text.rstrip("\n")) <= 201 and set(text) <= chars
    recs = runlog.read(out)
    assert [r["iter"] for r in recs if r["type"] == "iter"] == [0, 1, 2, 3]
    assert recs[0]["type"] == "header" and recs[0]["n_devices"] == 8
    # the kernel the step runs, reported and logged (tests/jax/test_attention_select.py)
    assert recs[0]["attention"] == "causal block kernel (CPU; attention dropout inside it)"
    assert "attention:    causal block kernel (CPU; attention dropout inside it)" in p.stdout
    assert recs[-1]["status"] == "completed"
    assert sorted(os.listdir(out / "checkpoints")) == ["0", "2", "4"]

    # sample and export: their `main(argv)` in this process (one device suffices for both)
    from modgpt_jax import export, sample
    capsys.readouterr()
    assert sample.main([f"--out_dir={out}", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=20",
                        "--seed=3"]) == 0
    samples = [t for t in capsys.readouterr().out.split("---------------\n") if t.strip()]
    assert len(samples) == 2 and all(t.startswith("ROMEO:") and len(t.rstrip("\n")) == 26 for t in samples)

    f = tmp_path / "w.safetensors"
    assert export.main([f"--out_dir={out}", "--to", str(f)]) == 0
    assert "wrote" in capsys.readouterr().out
    from modgpt import weights as W
    from modgpt_jax.inference import load_model
    from modgpt_jax.weights import to_canonical
    tensors, cfg = W.load(str(f))
    assert cfg.model.n_layer == 2 and cfg.model.position_encoding == "rope"
    W.check_tensors(cfg.model, tensors)
    model, _, meta = load_model(str(out))  # the final (iteration 4) params, gathered from 8 shards
    assert meta["iter"] == 4
    for k, v in to_canonical(model).items():
        assert np.array_equal(tensors[k], v), k


def test_sample_export_without_checkpoint(tmp_path, capsys):
    """A directory with no run, and a run directory whose training saved no checkpoint: one line
    on stderr, exit status 2, no file written."""
    from modgpt.config import Config
    from modgpt_jax import export, sample
    empty = tmp_path / "empty"
    empty.mkdir()
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / "config.json").write_text(json.dumps({**Config().to_dict(), "backend": "jax"}))
    to = str(tmp_path / "x.safetensors")
    for d, why in ((empty, "no run in"), (nockpt, "no checkpoint in")):
        for main, extra in ((sample.main, []), (export.main, ["--to", to])):
            capsys.readouterr()
            with pytest.raises(SystemExit) as e:
                main([f"--out_dir={d}", *extra])
            assert e.value.code == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], lines
    assert not os.path.exists(to)


def test_refusal_writes_nothing(train_main, tmp_path, capsys):
    """A batch the mesh cannot split is refused in one line, exit 2, and out_dir is left absent."""
    out = tmp_path / "run"
    assert train_main(out, "--batch_size=12", "--mesh_fsdp=8", "--mesh_data=1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: batch_size=12 cannot be split over the 8 devices")
    assert not out.exists()


def test_device_cuda_without_a_gpu_is_refused(train_main, tmp_path, capsys):
    """--device names where JAX runs: cuda on a machine without a GPU is one line, exit 2, nothing
    written (JAX would otherwise train on its CPU backend under a cuda label)."""
    out = tmp_path / "run"
    assert train_main(out, "--device=cuda") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: device=cuda but JAX finds no GPU (its backend is cpu); use --device=cpu or "
                   "--device=auto, or install jax with its CUDA plugin"]
    assert not out.exists()


def test_device_cpu_pins_jax_to_its_cpu_backend():
    """--device=cpu sets jax_platforms=cpu before JAX starts, so a GPU host trains JAX on its CPU
    (as torch does), not on the GPU; in a fresh process, as the command runs."""
    import subprocess
    code = ("from modgpt_jax.distributed import pin_platform, platform_error; pin_platform('cpu'); "
            "import jax; print(jax.config.jax_platforms, jax.default_backend(), platform_error('cpu'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["cpu", "cpu", "None"], p.stderr


def test_float32_mfu_on_a_gpu_is_against_the_tf32_peak():
    """XLA runs float32 matmuls on a GPU in TF32 unless jax_default_matmul_precision asks for more, so
    a float32 GPU run reports TF32 and measures MFU against the TF32 peak (494 TFLOP/s on an H100 SXM,
    not the 67 of plain float32: 7x inflated MFU otherwise), as the torch backend does."""
    from modgpt import hardware as HW
    from modgpt_jax.train import matmul_precision
    label, peak = matmul_precision("float32", "gpu", None)
    assert "TF32" in label and HW.peak_tflops("NVIDIA H100 80GB HBM3", peak, None) == 494.0
    assert matmul_precision("float32", "gpu", "highest") == ("float32 (matmul precision highest)", "float32")
    assert matmul_precision("float32", "gpu", "bfloat16")[1] == "bfloat16"
    assert matmul_precision("bfloat16", "gpu", None) == ("bfloat16", "bfloat16")
    assert matmul_precision("float32", "cpu", None) == ("float32", "float32")


def test_trainer_builds_its_model_in_host_memory(tiny):
    """The nnx model the Trainer builds (for its graph and canonical loading) is made on the host's
    CPU device, not the default device: on a GPU that copy of the weights would sit beside the
    sharded training copy (GPT-2 124M: 475 MiB). Checked by making another device the default."""
    import jax
    from flax import nnx

    from modgpt_jax.trainer import Trainer, host_device
    with jax.default_device(jax.devices()[3]):
        tr = Trainer(tiny(), devices=jax.devices()[:1])
    arrays = jax.tree.leaves(nnx.state(tr.model))
    assert arrays and all(a.devices() == {host_device()} for a in arrays)
    assert host_device() == jax.local_devices(backend="cpu")[0] != jax.devices()[3]


def test_next_step_is_dispatched_before_the_last_is_read(train_main, iter_losses, tmp_path, monkeypatch):
    """The loop keeps one step in flight: step it+1 is dispatched before step it's metrics are read
    (LaunchedStep.read waits for the device), so an accelerator never idles while the host builds the
    next batch, dispatches (~2 ms of host time for GPT-2 124M's 452 arrays) and logs. The pending
    step is read before each evaluation/checkpoint, and every iteration is still logged once, in
    order."""
    from modgpt_jax.trainer import LaunchedStep, Trainer
    trace = []
    launch, read, evaluate = Trainer.launch, LaunchedStep.read, Trainer.evaluate

    def traced_launch(self, it, lr):
        trace.append(f"d{it}")
        return launch(self, it, lr)

    def traced_read(self):
        trace.append(f"c{self.it}")
        return read(self)

    def traced_evaluate(self, sampler=None):
        trace.append("eval")
        return evaluate(self, sampler)

    monkeypatch.setattr(Trainer, "launch", traced_launch)
    monkeypatch.setattr(LaunchedStep, "read", traced_read)
    monkeypatch.setattr(Trainer, "evaluate", traced_evaluate)
    out = tmp_path / "run"
    assert train_main(out, "--max_iters=5", "--eval_interval=3", "--log_interval=1") == 0
    assert trace == ["eval", "d0", "d1", "c0", "d2", "c1", "c2", "eval",
                     "d3", "d4", "c3", "c4", "eval"]
    assert sorted(iter_losses(out)) == [0, 1, 2, 3, 4]
    assert [r["iter"] for r in runlog.read(out) if r["type"] == "iter"] == [0, 1, 2, 3, 4]


def test_no_evaluation_checkpoint_or_sample(train_main, tmp_path, capsys):
    """--eval_interval=0 --sample_at_end=False (what the bench runs): the steps only, nothing
    evaluated, saved or sampled, and the closing line says so."""
    out = tmp_path / "run"
    assert train_main(out, "--max_iters=3", "--eval_interval=0", "--sample_at_end=False") == 0
    recs = runlog.read(out)
    assert [r["iter"] for r in recs if r["type"] == "iter"] == [0, 1, 2]
    assert not [r for r in recs if r["type"] == "eval" or r.get("event") == "checkpoint"]
    assert recs[-1]["type"] == "end" and recs[-1]["status"] == "completed"
    ckpts = out / "checkpoints"
    assert not ckpts.exists() or not os.listdir(ckpts)
    printed = capsys.readouterr().out
    assert "done: 3 iterations (eval_interval=0: no evaluation, no checkpoint)" in printed
    assert "sample (seed" not in printed
