"""Export writes a new file atomically with the mode the user's umask gives (not mkstemp's 0600), and
replaces an existing one only with --overwrite (the refusal is in test_bad_input)."""
import importlib
import os
import stat

from modgpt import weights as W


def test_export_mode_and_overwrite(backend, reference, tmp_path):
    export = importlib.import_module(f"modgpt_{backend}.export")
    to = tmp_path / "w.safetensors"
    old = os.umask(0o027)
    try:
        assert export.main([f"--out_dir={reference(backend)}", "--to", str(to)]) == 0
        assert stat.S_IMODE(os.stat(to).st_mode) == 0o640
        to.write_bytes(b"stale")
        assert export.main([f"--out_dir={reference(backend)}", "--to", str(to), "--overwrite"]) == 0
    finally:
        os.umask(old)
    tensors, cfg = W.load(str(to))  # the stale bytes were replaced by a complete file
    assert set(tensors) == set(W.canonical_shapes(cfg.model))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left
