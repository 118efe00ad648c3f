"""`python -m parity_tests`: usage errors, the table/JSON output and the exit status."""
from __future__ import annotations

import json

import pytest

from parity_tests import __main__ as M
from parity_tests import compare as X


@pytest.mark.parametrize("argv,msg", [
    (["--preset", "gtp2"], "invalid choice: 'gtp2'"),
    (["--all", "--preset", "gpt2"], "not allowed with"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--seq_len", "64"], "'--seq_len' must be >= 256"),
    (["--seq_len", "x"], "invalid int value"),
    (["--checks", "forwards"], "'--checks' must name some of"),
    (["--dtype", "bfloat16", "--checks", "grads"], "runs only the checks"),
    (["--bogus"], "unrecognized arguments"),
])
def test_usage_errors(capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        M.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and err.startswith("error: ") and err.count("\n") == 1


def test_unknown_case_and_cuda_without_gpu(capsys, data_dir):
    assert M.main(["--case", "gpt2+normalization=nope"]) == 2
    assert "unknown case" in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        assert M.main(["--device", "cuda", "--preset", "gpt2", "--data_dir", data_dir]) == 2
        assert "--device cuda" in capsys.readouterr().err


def test_table_json_and_exit_status(capsys, tmp_path, data_dir, monkeypatch):
    out = tmp_path / "r.json"
    argv = ["--preset", "gpt2", "--checks", "forward,roundtrip", "--data_dir", data_dir]
    assert M.main([*argv, f"--json={out}"]) == 0
    table = capsys.readouterr().out
    assert "max abs diff" in table and "gpt2" in table and "3 passed, 0 failed" in table
    res = json.loads(out.read_text())
    assert res["passed"] and {r["check"] for r in res["rows"]} == {"logits", "loss", "roundtrip"}
    monkeypatch.setitem(X.TOL, "logits", 0.0)  # an impossible tolerance must fail the run
    assert M.main([*argv, "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert not res["passed"] and [r["check"] for r in res["rows"] if not r["passed"]] == ["logits"]
