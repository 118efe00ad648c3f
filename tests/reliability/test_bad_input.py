"""Bad input, every case in both backends: exit status 2, exactly one line on stderr starting with
`error:` that names the option or problem (and the valid choices where there are any), and nothing
written or overwritten in out_dir (or the data directory involved): each is snapshotted (path and
sha256 of every file) before and after.
"""
import os
import shutil

import numpy as np
import pytest

from modgpt import loop
from modgpt import weights as W

OTHER = {"torch": "jax", "jax": "torch"}


def weights_file(path: str, cfg, drop: str | None = None, reshape: str | None = None) -> str:
    """A canonical safetensors file for cfg's model, with one tensor dropped or misshaped."""
    from safetensors.numpy import save_file
    shapes = W.canonical_shapes(cfg.model)
    tensors = {k: np.zeros(s, np.float32) for k, s in shapes.items() if k != drop}
    if reshape:
        tensors[reshape] = np.zeros((3, 3), np.float32)
    save_file(tensors, path, metadata={"format": W.FORMAT, "config": cfg.to_json()})
    return path


def damage_checkpoint(backend: str, run: str, how: str) -> str:
    """Truncate ("partial") or overwrite with garbage ("corrupt") the latest checkpoint's data."""
    if backend == "torch":
        path = sorted(f for f in os.listdir(run) if f.startswith("ckpt-"))[-1]
        path = os.path.join(run, path)
        files = [path]
    else:
        steps = sorted(int(f) for f in os.listdir(os.path.join(run, "checkpoints")) if f.isdigit())
        path = os.path.join(run, "checkpoints", str(steps[-1]))
        data = os.path.join(path, "state", "ocdbt.process_0", "d")
        files = [os.path.join(data, f) for f in os.listdir(data)]
    for f in files:
        n = os.path.getsize(f)
        if how == "partial":
            os.truncate(f, n // 2)
        else:
            with open(f, "r+b") as fh:
                fh.write(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def build_case(name, backend, tmp_path, data_dir, reference):
    """-> (module, args, env, watched paths, expected substrings of the error line)."""
    out = str(tmp_path / "run")
    nodata = str(tmp_path / "nodata")
    args, env, watch, mod = [f"--out_dir={out}"], {}, [out], "train"

    def copy_run(backend_):
        shutil.copytree(reference(backend_), out)
        return out

    if name == "unknown_option":
        return mod, args + ["--n_layr=2"], env, watch, ["unknown option '--n_layr' (did you mean '--n_layer'?)"]
    if name == "wrong_type":
        return mod, args + ["--n_layer=x"], env, watch, ["option 'n_layer' must be an integer, got 'x'"]
    if name == "wrong_bool":
        return mod, args + ["--compile=maybe"], env, watch, ["option 'compile'", "maybe"]
    if name == "unknown_component":
        return mod, args + ["--normalization=rmsnrom"], env, watch, [
            "option 'normalization' must be one of layernorm, layernorm_nobias, rmsnorm; got 'rmsnrom'",
            "(did you mean 'rmsnorm'?)"]
    if name == "unknown_preset":
        return mod, args + ["--preset=lama"], env, watch, ["unknown preset 'lama'", "llama"]
    if name == "heads_do_not_divide":
        return mod, args + ["--n_embd=30", "--n_head=4"], env, watch, ["n_embd (30) must be divisible by n_head (4)"]
    if name == "odd_rope_head_dim":
        return mod, args + ["--position_encoding=rope", "--n_embd=36", "--n_head=4"], env, watch, [
            "position_encoding 'rope' needs an even head dim", "36/4 = 9"]
    if name == "config_file_fails":
        f = tmp_path / "broken.py"
        f.write_text("n_layer = 4\nn_head = 1 / 0\n")
        return mod, [str(f)] + args, env, watch + [str(f)], [
            f"config file '{f}' failed to execute: ZeroDivisionError: division by zero"]
    if name == "config_file_missing":
        return mod, [str(tmp_path / "nothere.py")] + args, env, watch, ["config file", "nothere.py' not found"]
    if name == "missing_dataset":
        return mod, args + [f"--data_dir={nodata}", "--dataset=nope"], env, watch + [nodata], [
            f"no prepared data for dataset 'nope' in '{nodata}/nope'", "python -m modgpt.prepare"]
    if name == "missing_data_source":  # shakespeare_char is prepared on demand; its source is gone
        return mod, args + [f"--data_dir={nodata}"], {"MODGPT_TINYSHAKESPEARE": str(tmp_path / "gone.txt")}, \
            watch + [nodata], ["$MODGPT_TINYSHAKESPEARE points to", "which does not exist"]
    if name in ("truncated_train_bin", "corrupt_meta_json"):
        d = str(tmp_path / "data")
        shutil.copytree(data_dir, d)
        sc = os.path.join(d, "shakespeare_char")
        if name == "truncated_train_bin":
            os.truncate(os.path.join(sc, "train.bin"), os.path.getsize(os.path.join(sc, "train.bin")) - 7)
            needles = [f"'{sc}/train.bin' has", "truncated or corrupt",
                       f"re-run `python -m modgpt.prepare shakespeare_char --data_dir {d}`"]
        else:
            with open(os.path.join(sc, "meta.json"), "w") as f:
                f.write('{"tokenizer": "char", "vocab_')
            needles = [f"'{sc}/meta.json' is not valid JSON", "modgpt.prepare"]
        return mod, args + [f"--data_dir={d}"], env, watch + [d], needles
    if name == "vocab_mismatch":
        return mod, args + ["--vocab_size=32"], env, watch, [
            "the data's vocab_size 65", "exceeds the model's vocab_size 32; set --vocab_size=65"]
    if name == "too_big_for_memory":  # a floor (modgpt.memory) of ~72 TiB: refused before anything is built
        return mod, args + ["--batch_size=134217728"], env, watch, [
            "this run needs at least 72.6TiB per device", "python -m modgpt.memory", "lower --batch_size"]
    if name == "resume_without_run":
        return mod, args + ["--init_from=resume"], env, watch, [
            f"cannot resume: '{out}/config.json' not found"]
    if name == "resume_other_architecture":
        copy_run(backend)
        return mod, args + ["--init_from=resume", "--n_layer=3"], env, watch, [
            "cannot resume with a different architecture: n_layer=3 but the checkpoint has 2"]
    if name == "resume_other_backend":
        copy_run(OTHER[backend])
        return mod, args + ["--init_from=resume"], env, watch, [
            f"out_dir '{out}' holds a {OTHER[backend]} run",
            f"python -m modgpt_{OTHER[backend]}.train --init_from=resume --out_dir={out}"]
    if name == "resume_past_max_iters":  # the loop stops only at max_iters: it would never stop
        copy_run(backend)
        return mod, args + ["--init_from=resume", "--max_iters=5"], env, watch, [
            "cannot resume: the latest checkpoint", "is at iteration 8, past --max_iters=5",
            "pass --max_iters=8 (the run's own) or any value >= 8"]
    if name == "parallel_without_torchrun":  # torch: no process group to join; jax: a torch-only mode
        return mod, args + ["--parallel=ddp"], env, watch, {
            "torch": ["--parallel=ddp needs torchrun: torchrun --nproc_per_node=N"],
            "jax": ["option 'parallel=ddp' is torch-only", "--mesh_data=N (data parallel) and --mesh_fsdp=N"]}[backend]
    if name == "other_backend_option":
        if backend == "jax":
            return mod, args + ["--dtype=float16"], env, watch, [
                "option 'dtype=float16' is torch-only; the jax backend offers --dtype=bfloat16"]
        return mod, args + ["--mesh_fsdp=2"], env, watch, [
            "option 'mesh_fsdp=2' is jax-only; the torch backend offers --parallel=fsdp under torchrun"]
    if name in ("corrupt_checkpoint", "partial_checkpoint"):
        copy_run(backend)
        path = damage_checkpoint(backend, out, name.split("_")[0])
        return mod, args + ["--init_from=resume", "--max_iters=10"], env, watch, [
            f"checkpoint '{path}' is unreadable", "delete it to resume from the previous one"]
    if name.startswith("init_nanogpt"):  # read without torch in both backends (modgpt.torchfile)
        f = str(tmp_path / "ckpt.pt")
        if name == "init_nanogpt_unreadable":
            with open(f, "wb") as fh:
                fh.write(b"\x00not a checkpoint\n")
            return mod, args + [f"--init_from=nanogpt:{f}"], env, watch + [f], [
                f"nanoGPT checkpoint '{f}' is not a torch.save zip file"]
        return mod, args + [f"--init_from=nanogpt:{f}"], env, watch, [f"nanoGPT checkpoint '{f}' not found"]
    if name == "init_conflicting_option":
        cfg = loop.read_saved_config(os.path.join(reference(backend), "config.json"))
        f = weights_file(str(tmp_path / "w.safetensors"), cfg)
        return mod, args + [f"--init_from={f}", "--n_layer=3"], env, watch + [f], [
            f"{f} holds n_layer=2 but the run asks for 3 (--n_layer); drop --n_layer: the file fixes the architecture"]
    if name.startswith("init_"):
        cfg = loop.read_saved_config(os.path.join(reference(backend), "config.json"))
        f = str(tmp_path / "w.safetensors")
        if name == "init_missing_tensor":
            weights_file(f, cfg, drop="blocks.1.ffn.proj.weight")
            needles = [f"{f}: missing tensor 'blocks.1.ffn.proj.weight'"]
        elif name == "init_misshaped_tensor":
            weights_file(f, cfg, reshape="blocks.0.attn.proj.weight")
            needles = [f"{f}: tensor 'blocks.0.attn.proj.weight' has shape (3, 3), expected (64, 64)"]
        else:
            with open(f, "wb") as fh:
                fh.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
            needles = [f"{f}: not a readable safetensors file"]
        return mod, args + [f"--init_from={f}"], env, watch + [f], needles
    if name == "wandb_not_installed":  # a directory that shadows the package with one that fails to import
        shim = tmp_path / "shim" / "wandb"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
        return mod, args + ["--wandb=True"], {"PYTHONPATH": str(shim.parent)}, watch, [
            "option 'wandb': the wandb package is not installed; pip install 'modgpt[track]'"]
    if name == "wandb_not_logged_in":  # online, no key anywhere: refused before training, not mid-run
        home = str(tmp_path / "home")
        return mod, args + ["--wandb=True"], {"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": home,
                                              "NETRC": os.path.join(home, "netrc"), "WANDB_CONFIG_DIR": home}, watch, [
            "option 'wandb': not logged in to Weights & Biases", "wandb login", "WANDB_MODE=offline"]
    if name == "export_existing_target":  # an export never replaces a file unasked
        copy_run(backend)
        f = tmp_path / "w.safetensors"
        f.write_bytes(b"someone's weights")
        return "export", args + ["--to", str(f)], env, watch + [str(f)], [
            f"'{f}' exists; pass --overwrite to replace it, or choose another --to"]
    if name == "sample_other_option":  # sample reads the run's own config
        copy_run(backend)
        return "sample", args + ["--n_layer=3"], env, watch, [
            f"option '--n_layer' is not one of python -m modgpt_{backend}.sample's (it reads the run's own config)"]
    if name == "sample_without_checkpoint":  # a run killed before its first checkpoint
        os.makedirs(out)
        shutil.copy(os.path.join(reference(backend), "config.json"), out)
        return "sample", args, env, watch, ["no checkpoint", out, f"python -m modgpt_{backend}.train"]
    if name == "sample_empty_dir":
        os.makedirs(out)
        return "sample", args, env, watch, ["no", out]
    if name == "sample_other_backend":
        copy_run(OTHER[backend])
        return "sample", args, env, watch, [f"holds a {OTHER[backend]} run"]
    raise KeyError(name)


CASES = ["unknown_option", "wrong_type", "wrong_bool", "unknown_component", "unknown_preset",
         "heads_do_not_divide", "odd_rope_head_dim", "config_file_fails", "config_file_missing",
         "missing_dataset", "missing_data_source", "truncated_train_bin", "corrupt_meta_json",
         "vocab_mismatch", "too_big_for_memory", "resume_without_run", "resume_other_architecture", "resume_other_backend",
         "resume_past_max_iters", "parallel_without_torchrun", "other_backend_option",
         "corrupt_checkpoint", "partial_checkpoint", "init_missing_tensor", "init_misshaped_tensor",
         "init_not_safetensors", "init_nanogpt_missing", "init_nanogpt_unreadable", "init_conflicting_option",
         "sample_without_checkpoint", "sample_empty_dir", "sample_other_backend", "sample_other_option",
         "export_existing_target", "wandb_not_installed", "wandb_not_logged_in"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(backend, case, runner, reference, h, data_dir, tmp_path):
    mod, args, env, watch, needles = build_case(case, backend, tmp_path, data_dir, reference)
    before = {w: h.snapshot(w) for w in watch}
    p = runner.run(backend, *args, mod=mod, tiny=mod == "train", env=env)
    lines = p.stderr.strip().splitlines()
    print(f"[{backend}] {case}: {p.stderr.strip()}")  # with -s: the catalogue the README table lists
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-3000:]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    for w in watch:
        assert h.snapshot(w) == before[w], f"{w} changed"
