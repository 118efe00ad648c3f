"""Disk problems: an unwritable out_dir or too little free space is refused before training
starts, with nothing written; a checkpoint write that fails mid-way (disk full) stops the run with
one line and leaves the previous checkpoint intact and loadable, never a corrupt one.

Free space and the failing write are simulated with the test-only MODGPT_TEST_FAULT hook
(modgpt/io.py): `disk_free=N` replaces the free-space figure; `ckpt_write@2:enospc` truncates the
half-written temporary checkpoint of iteration 2 and raises OSError(ENOSPC) before its rename.
"""
import os

import pytest


def refused(p, needles):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_out_dir_below_a_file(backend, runner, h, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    before = h.snapshot(str(tmp_path))
    out = str(blocker / "run")
    p = runner.run(backend, "--max_iters=2", f"--out_dir={out}")
    refused(p, [f"out_dir '{out}' is not writable", "Not a directory", "choose another --out_dir"])
    assert h.snapshot(str(tmp_path)) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_dir_in_read_only_dir(backend, runner, h, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        out = str(ro / "run")
        p = runner.run(backend, "--max_iters=2", f"--out_dir={out}")
        refused(p, [f"out_dir '{out}' is not writable", "Permission denied"])
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_not_enough_free_space(backend, runner, h, tmp_path):
    out = str(tmp_path / "run")
    p = runner.run(backend, "--max_iters=2", f"--out_dir={out}", fault="disk_free=1000000")
    refused(p, [f"out_dir '{out}' has 1.0 MiB free but the run needs about", "--keep_checkpoints"])
    assert not os.path.exists(out)


def test_disk_full_during_checkpoint(backend, runner, reference, h, tmp_path):
    out = str(tmp_path / "run")
    p = runner.run(backend, "--max_iters=4", f"--out_dir={out}", fault="ckpt_write@2:enospc")
    assert p.returncode == 1, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    good = h.checkpoint_path(backend, out, 0)
    assert lines[0] == (f"error: could not write the checkpoint of iteration 2 in '{out}' (No space left on "
                        f"device); {good} is intact; free space, then resume with: python -m "
                        f"modgpt_{backend}.train --init_from=resume --out_dir={out}")
    end = h.end_record(out)
    assert end["status"] == "failed" and end["iter"] == 2
    assert h.checkpoint_iters(backend, out) == [0]  # no torn checkpoint 2 among the complete ones
    h.assert_same_params(h.read_params(backend, out, 0), h.read_params(backend, reference(backend), 0))
