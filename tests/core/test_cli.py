"""The shared command-line parser and `python -m modgpt.config`."""
import json
import subprocess
import sys

import pytest

from modgpt import cli


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_precedence_preset_then_file_then_command_line(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("preset = 'gpt2'\nn_layer = 3\nnormalization = 'rmsnorm'\nimport math\nlearning_rate = math.pi * 1e-4\n")
    a = cli.parse([str(f), "--normalization=layernorm_nobias", "--size", "tiny"])
    m = a.config.model
    assert a.preset == "gpt2" and m.position_encoding == "learned_absolute"  # from the preset
    assert m.n_layer == 3  # file beats size
    assert m.n_embd == 64  # size beats defaults
    assert m.normalization == "layernorm_nobias"  # command line beats file
    assert a.config.train.learning_rate == pytest.approx(3.14159e-4, rel=1e-5)
    assert a.explicit == {"n_layer", "normalization", "learning_rate", "size"}
    b = cli.parse(["--preset", "llama", str(f)])  # --preset beats the file's preset
    assert b.preset == "llama" and b.config.model.position_encoding == "rope"


def test_bool_and_numbers_typed():
    a = cli.parse(["--compile=False", "--bias=True", "--dropout=0.1", "--max_iters=10"])
    assert a.config.train.compile is False and a.config.model.bias is True
    assert a.config.model.dropout == 0.1 and a.config.train.max_iters == 10


@pytest.mark.parametrize("argv, msg", [
    (["--n_layr=2"], "unknown option '--n_layr' (did you mean '--n_layer'?)"),
    (["--preset", "lama"], "unknown preset 'lama' (did you mean 'llama'?); valid presets: gpt2, llama, team, hybrid"),
    (["--n_layer=x"], "option 'n_layer' must be an integer, got 'x'"),
    (["--position_encoding=xpos"], "option 'position_encoding' must be one of learned_absolute, rope, alibi, none"),
    (["nothere.py"], "config file 'nothere.py' not found"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_errors_exit_2_with_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_config_file_that_fails_to_execute(tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text("n_layer = 1 / 0\n")
    with pytest.raises(SystemExit):
        cli.parse([str(f)])
    err = capsys.readouterr().err
    assert "failed to execute: ZeroDivisionError" in err
    g = tmp_path / "unknown.py"
    g.write_text("n_layers = 4\n")
    with pytest.raises(SystemExit):
        cli.parse([str(g)])
    assert "unknown option 'n_layers' (did you mean 'n_layer'?)" in capsys.readouterr().err


def test_failing_file_message(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("n_layer = 1 / 0\n")
    r = run("-m", "modgpt.config", str(f))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: config file '{f}' failed to execute: ZeroDivisionError: division by zero"]


def test_module_config_prints_summary_and_json():
    r = run("-m", "modgpt.config", "--preset", "llama", "--size=124M")
    assert r.returncode == 0, r.stderr
    assert "12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm" in r.stdout and "MODEL ARCHITECTURE:" in r.stdout
    assert "resolved as a training run here would" in r.stdout and "  size:       size=124M" in r.stdout
    r = run("-m", "modgpt.config", "--preset", "llama", "--n_layer=2", "--json")
    d = json.loads(r.stdout)
    assert d["model"]["n_layer"] == 2 and d["arch_name"].startswith("2L-")
    assert set(d["resolved"]) == {"size", "schedule", "vocab_size"}


def test_repo_config_files_parse():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.py"))
    assert {p.name for p in files} >= {"arch_gpt2.py", "arch_llama.py", "arch_team.py", "arch_hybrid.py",
                                        "arch_custom.py", "train_shakespeare_char.py"}
    for p in files:
        if p.name.startswith("sweep"):
            continue
        a = cli.parse([str(p)])
        assert a.config.model.n_layer >= 1


def test_help_describes_every_option(capsys):
    """--help gives each option its default and its one-line description from the schema, grouped by
    section in the schema's order; choices are listed."""
    from modgpt import config as C
    with pytest.raises(SystemExit) as e:
        cli.parse(["--help"], prog="python -m modgpt_jax.train")
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: python -m modgpt_jax.train [CONFIG_FILE]")
    lines = out.splitlines()
    titles = [ln for ln in lines if ln.endswith(" options:") and not ln.startswith(" ")]
    assert titles == ["model (architecture) options:", "training options:", "system options:"]
    for key, text in C.KEY_HELP.items():
        assert len(text) > 10, key
        rows = [i for i, ln in enumerate(lines) if ln.split(maxsplit=1)[:1] == [f"--{key}={C.KEY_DEFAULT[key]}"]]
        assert len(rows) == 1, key
        row = " ".join(lines[rows[0]:rows[0] + 2])  # a long option name puts its text on the next line
        assert text in row, key
    assert "[layernorm | layernorm_nobias | rmsnorm]" in out and "[auto | none | tiny | cpu | small-char | 124M" in out


@pytest.mark.parametrize("module,only,flags", [
    ("sample", {"out_dir", "device", "seed"}, {"start", "num_samples", "max_new_tokens", "temperature", "top_k"}),
    ("export", {"out_dir"}, {"to", "format", "overwrite"}),
])
def test_sample_and_export_list_only_their_options(module, only, flags, capsys):
    """sample/export read the run's own config: --help lists only what they take, the same in both
    backends, and any other option is refused in one line naming theirs."""
    from modgpt import commands
    options = getattr(commands, f"{module.upper()}_OPTIONS")
    extra = getattr(commands, f"{module.upper()}_FLAGS")
    assert set(options) == only and set(extra) == flags
    with pytest.raises(SystemExit):
        cli.parse(["--help"], prog=f"python -m modgpt_jax.{module}", extra_flags=extra, options=options)
    out = capsys.readouterr().out
    listed = {ln.split()[0].lstrip("-").split("=")[0] for ln in out.splitlines() if ln.startswith("  --")}
    assert listed == only | flags
    with pytest.raises(SystemExit) as e:
        cli.parse(["--out_dir=r", "--n_layer=3"], prog="x", extra_flags=extra, options=options)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: option '--n_layer' is not one of x's (it reads the run's "
                                                "own config); its options: --out_dir") and err.count("\n") == 1


@pytest.mark.parametrize("argv,msg", [
    (["--num_samples=0"], "option '--num_samples' must be an integer >= 1; got '0'"),
    (["--max_new_tokens=x"], "option '--max_new_tokens' must be an integer >= 0; got 'x'"),
    (["--temperature=-1"], "option '--temperature' must be a number >= 0; got '-1'"),
    (["--top_k=2.5"], "option '--top_k' must be an integer >= 0; got '2.5'"),
    (["--start=FILE:/nonexistent/p.txt"], "option '--start': cannot read prompt file '/nonexistent/p.txt'"),
    ([], "give the run to sample from: prog --out_dir=RUN"),
])
def test_sample_settings_refusals(argv, msg, capsys):
    """Both backends' sample commands check their options here, before loading anything."""
    from modgpt import commands
    with pytest.raises(SystemExit) as e:
        commands.sample_settings("prog", ([] if not argv else ["--out_dir=r"]) + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {msg}") and err.count("\n") == 1


def test_sample_settings(tmp_path):
    from modgpt import commands
    p = tmp_path / "prompt.txt"
    p.write_text("ROMEO:")
    s = commands.sample_settings("prog", ["--out_dir=r", f"--start=FILE:{p}", "--top_k=0", "--seed=5",
                                          "--temperature=0"])
    assert (s.out_dir, s.start, s.top_k, s.seed, s.temperature, s.num_samples, s.max_new_tokens) == \
        ("r", "ROMEO:", 0, 5, 0.0, 3, 500)


def test_describing_commands_resolve_as_a_run_would(tmp_path, data_dir, monkeypatch):
    """config/flops/memory resolve size=auto for this machine and the vocabulary from --dataset and
    --data_dir, as a training run would, and say how (the CPU run of shakespeare_char: vocab 65 and the
    CPU size, not the schema's 50304 and 124M)."""
    from modgpt import preview
    cpu, notes = preview.resolve(cli.parse(["--preset=gpt2", "--device=cpu", f"--data_dir={data_dir}"]))
    assert (cpu.model.n_layer, cpu.model.n_embd, cpu.model.vocab_size, cpu.train.max_iters) == (4, 128, 65, 600)
    assert notes["size"].startswith("no accelerator: chose the 'cpu' size") and notes["size"].endswith("(--device=cpu)")
    assert notes["vocab_size"] == f"65 (the 65 tokens of {data_dir}/shakespeare_char)"
    gpu, notes = preview.resolve(cli.parse(["--preset=gpt2", "--device=cuda", "--dataset=shakespeare",
                                            f"--data_dir={tmp_path}"]))
    assert (gpu.model.n_layer, gpu.model.n_embd, gpu.model.vocab_size) == (12, 768, 50304)
    assert notes["vocab_size"].startswith("50304 (GPT-2 BPE's 50257 tokens padded to a multiple of 64; 'shakespeare' "
                                          "is not in")
    _, notes = preview.resolve(cli.parse(["--device=cpu", "--dataset=mine", f"--data_dir={tmp_path}", "--max_iters=40"]))
    assert "dataset 'mine' is not prepared" in notes["vocab_size"] and notes["schedule"].startswith("40 iters (command line)")
    assert not list(tmp_path.iterdir())  # nothing prepared or written
    from modgpt import hardware as HW
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert HW.accelerator_visible("auto") == (False, "JAX_PLATFORMS=cpu")
    assert HW.accelerator_visible("cuda")[0] and not HW.accelerator_visible("cpu")[0]
