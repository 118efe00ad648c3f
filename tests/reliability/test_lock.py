"""Two runs on one out_dir: while a run is alive (it holds out_dir/.lock, an flock released even
on SIGKILL), a second run on that out_dir refuses with one line and writes nothing."""
import signal

from modgpt import io


def test_second_run_refused(backend, runner, h, tmp_path):
    out = str(tmp_path / "run")
    first = runner.start(backend, "--max_iters=8", f"--out_dir={out}", fault="step@1:pause")
    try:
        line = first.wait_line(lambda s: s.startswith("[test fault]"))
        pid = line.split("pid ")[1].split(",")[0]
        before = h.snapshot(out)
        needle = f"out_dir '{out}' is in use by another run (pid {pid}); choose another --out_dir or stop that run"
        for extra in ([], ["--init_from=resume"]):  # a fresh run and a resume of the live run
            p = runner.run(backend, "--max_iters=8", f"--out_dir={out}", *extra)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {needle}"), p.stderr
            assert h.snapshot(out) == before
    finally:
        first.p.send_signal(signal.SIGKILL)
        first.kill()
    assert io.lock_holder(out) is None  # the flock died with the killed run: out_dir is free again
