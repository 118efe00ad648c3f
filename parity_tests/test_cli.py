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
    printed = capsys.readouterr()
    table = printed.out
    assert "max abs diff" in table and "gpt2" in table and "3 passed, 0 failed" in table
    both = printed.out + printed.err  # the table once, on stdout: each row appears one time
    assert both.count("max abs diff") == 1 and both.count("gpt2  ") == 3
    res = json.loads(out.read_text())
    assert res["passed"] and {r["check"] for r in res["rows"]} == {"logits", "loss", "roundtrip"}
    monkeypatch.setitem(X.TOL, "logits", 0.0)  # an impossible tolerance must fail the run
    assert M.main([*argv, "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert not res["passed"] and [r["check"] for r in res["rows"] if not r["passed"]] == ["logits"]


def test_json_kept_case_by_case(capsys, tmp_path, data_dir, monkeypatch):
    """A run stopped part-way (a time limit on a lent GPU) leaves the cases it finished: the JSON is
    rewritten after each case with complete=false, and the table grows on stdout case by case."""
    from parity_tests import checks as CK
    out = tmp_path / "r.json"
    run = CK.Case.run

    def run_then_stop(self, checks, dtype):
        if self.name == "llama":
            raise KeyboardInterrupt  # the second case never finishes
        return run(self, checks, dtype)
    monkeypatch.setattr(CK.Case, "run", run_then_stop)
    with pytest.raises(KeyboardInterrupt):
        M.main(["--preset", "gpt2", "--preset", "llama", "--checks", "forward", "--data_dir", data_dir,
                f"--json={out}"])
    res = json.loads(out.read_text())
    assert res["complete"] is False and res["cases"] == ["gpt2", "llama"] and res["cases_done"] == ["gpt2"]
    assert res["passed"] and {r["case"] for r in res["rows"]} == {"gpt2"} and len(res["rows"]) == 2
    out = capsys.readouterr().out
    assert out.count("max abs diff") == 1 and out.count("gpt2  ") == 2 and "llama" not in out
