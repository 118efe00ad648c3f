"""modgpt.torchfile reads torch.save zip files into numpy exactly as torch.load does, without torch."""
import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from modgpt import torchfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def to_numpy(obj):
    """torch.load's result with tensors as numpy (bfloat16 upcast), the reference torchfile must match."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(obj, torch.Size):
        return tuple(obj)
    if isinstance(obj, dict):
        return type(obj)((k, to_numpy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


def assert_same(got, want, where="root"):
    """Exact equality, container types included; arrays bit for bit, C-contiguous and owning their memory."""
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), where
        assert got.flags.c_contiguous and got.flags.owndata, where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def one_line_error(path, match):
    """The TorchFileError load raises, checked to name the path on a single line."""
    with pytest.raises(torchfile.TorchFileError, match=match) as e:
        torchfile.load(str(path))
    assert f"'{path}'" in str(e.value) and "\n" not in str(e.value)
    return str(e.value)


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(11, 8), wpe=nn.Embedding(4, 8), ln_f=nn.LayerNorm(8)))
        self.lm_head = nn.Linear(8, 11, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in nanoGPT
        self.register_buffer("steps", torch.arange(3))

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe.weight[: idx.shape[1]]
        return self.lm_head(self.transformer.ln_f(x))


def test_nanogpt_checkpoint_matches_torch_load(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.tensor([[1, 2, 3]])).square().mean().backward()
    opt.step()
    sd = collections.OrderedDict((f"_orig_mod.{k}", v) for k, v in model.state_dict().items())  # torch.compile
    ckpt = {"model": sd, "optimizer": opt.state_dict(), "iter_num": 7, "best_val_loss": torch.tensor(2.5),
            "model_args": dict(n_layer=1, n_head=2, n_embd=8, block_size=4, bias=False, vocab_size=11, dropout=0.0),
            "config": {"out_dir": "out", "dtype": "bfloat16", "betas": (0.9, 0.95), "nested": [1, [2.5, None], ()],
                       "init_from": None, "compile": True, "lr": 6e-4}}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    ref = torch.load(path, weights_only=True)
    head, wte = ref["model"]["_orig_mod.lm_head.weight"], ref["model"]["_orig_mod.transformer.wte.weight"]
    assert head.data_ptr() == wte.data_ptr()  # tied: one storage record referenced twice
    assert "ckpt/data.pkl" in zipfile.ZipFile(path).namelist()  # the zip's top folder is the file stem

    reads = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: reads.append(name) or real_read(self, name, *a))
    got = torchfile.load(str(path))
    assert_same(got, to_numpy(ref))
    assert len(reads) == len(set(reads)) and "ckpt/data/0" in reads  # each storage record read once

    assert got["optimizer"]["state"][0]["step"].shape == () and got["best_val_loss"].shape == ()
    tied = got["model"]["_orig_mod.lm_head.weight"], got["model"]["_orig_mod.transformer.wte.weight"]
    assert np.array_equal(*tied) and not np.shares_memory(*tied)
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.uint16]  # uint16 has no storage class: _rebuild_tensor_v3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype(tmp_path, dtype):
    vals = torch.tensor([[0.0, -0.0, 1.0, 3.5], [-7.25, 100.0, 3e4, 1 / 3]])
    if dtype.is_floating_point:
        vals = torch.cat([vals, torch.tensor([[float("inf"), float("-inf"), float("nan"), 1e-3]])])
    t = (vals * 1.5).to(dtype) if dtype not in (torch.bool, torch.uint8, torch.uint16) else vals.abs().to(dtype)
    torch.save({"t": t}, tmp_path / "d.pt")
    got = torchfile.load(str(tmp_path / "d.pt"))["t"]
    want = t.float().numpy() if dtype == torch.bfloat16 else t.numpy()
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_strided_views_and_parameters(tmp_path):
    base = torch.arange(24.0).reshape(4, 6)
    views = {"T": base.T, "slice": base[1:3, 2:5], "step": base[:, ::2], "expand": torch.arange(3.0).expand(4, 3),
             "element": base[2, 3], "empty": base[:0], "empty_int": torch.zeros(0, 3, dtype=torch.int16),
             "param": nn.Parameter(torch.randn(2, 3)), "frozen": nn.Parameter(torch.ones(2), requires_grad=False),
             "scalar": torch.tensor(5)}
    assert not views["T"].is_contiguous() and views["slice"].storage_offset() == 8
    assert views["expand"].stride() == (0, 1) and views["element"].storage_offset() == 15
    torch.save(views, tmp_path / "v.pt")
    assert b"_rebuild_parameter" in zipfile.ZipFile(tmp_path / "v.pt").read("v/data.pkl")
    got = torchfile.load(str(tmp_path / "v.pt"))
    assert_same(got, {k: v.detach().contiguous().numpy() for k, v in views.items()})
    assert got["element"].ndim == 0 and got["element"] == 15.0 and got["empty"].shape == (0, 6)


def test_any_zip_stem_and_small_builtins(tmp_path):
    buf = io.BytesIO()
    obj = {"set": {1, 2}, "frozen": frozenset("ab"), "complex": 1 + 2j, "slice": slice(1, None, 2),
           "bytes": b"\x00\xff", "size": torch.Size([2, 3]), "device": torch.device("cuda", 1), "dtype": torch.float16,
           "t": torch.ones(2)}
    torch.save(obj, buf)  # a buffer is saved under "archive/"; a file under its own stem
    (tmp_path / "buffer.pt").write_bytes(buf.getvalue())
    torch.save(obj, tmp_path / "my-model.v2.bin")
    assert any(n.startswith("my-model.v2/") for n in zipfile.ZipFile(tmp_path / "my-model.v2.bin").namelist())
    for name in ("buffer.pt", "my-model.v2.bin"):
        got = torchfile.load(str(tmp_path / name))
        assert_same(got, {**obj, "size": (2, 3), "device": "cuda:1", "dtype": "float16", "t": np.ones(2, np.float32)})


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nope.pt' not found"):
        torchfile.load(str(tmp_path / "nope.pt"))
    (tmp_path / "random.pt").write_bytes(bytes(range(7, 250)))
    one_line_error(tmp_path / "random.pt", "is not a torch.save zip file")
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    one_line_error(tmp_path / "legacy.pt", "legacy pre-1.6 format")
    torch.save({"w": torch.ones(100)}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path / "cut.pt", "truncated or corrupt zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("stuff/readme.txt", "hi")
    one_line_error(tmp_path / "other.zip", r"not a torch.save one \(0 data.pkl")


def rewrite(src, dst, record, new):
    """Copy a torch.save zip under its own stem, replacing one record (name after the stem) or dropping it (None)."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for name in a.namelist():
            rest = name.split("/", 1)[1]
            if rest != record or new is not None:
                b.writestr(f"{dst.stem}/{rest}", new if rest == record else a.read(name))


def test_damaged_records(tmp_path):
    src = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(4), "z": torch.zeros(3, dtype=torch.complex64)[:0]}, src)
    torch.save({"w": torch.ones(4)}, tmp_path / "plain.pt")
    one_line_error(src, r"torch.ComplexFloatStorage, which is not supported")
    rewrite(tmp_path / "plain.pt", tmp_path / "nostorage.pt", "data/0", None)
    one_line_error(tmp_path / "nostorage.pt", "missing storage record 'nostorage/data/0'")
    rewrite(tmp_path / "plain.pt", tmp_path / "short.pt", "data/0", b"\0" * 8)
    one_line_error(tmp_path / "short.pt", "short storage record")
    rewrite(tmp_path / "plain.pt", tmp_path / "big.pt", "byteorder", b"big")
    one_line_error(tmp_path / "big.pt", "'big' byte order")
    rewrite(tmp_path / "plain.pt", tmp_path / "junk.pt", "data.pkl", b"\x80\x02}q\x00(X\x01")
    one_line_error(tmp_path / "junk.pt", "corrupt data.pkl")
    rewrite(tmp_path / "plain.pt", tmp_path / "nopkl.pt", "data.pkl", None)
    one_line_error(tmp_path / "nopkl.pt", r"\(0 data.pkl records\)")
    assert torchfile.load(str(tmp_path / "plain.pt"))["w"].sum() == 4.0  # the source itself was fine


def _touch(path):
    open(path, "w").close()


class Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _touch, (self.path,)


class Custom:
    pass


def test_disallowed_globals_are_refused_before_running(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.ones(1), "x": Touch(str(marker))}, tmp_path / "touch.pt")
    one_line_error(tmp_path / "touch.pt", r"refers to '.*test_torchfile\._touch', which a checkpoint")
    assert not marker.exists()
    torch.save({"x": Custom()}, tmp_path / "custom.pt")
    one_line_error(tmp_path / "custom.pt", r"refers to '.*test_torchfile\.Custom'")
    torch.save({"x": os.getcwd}, tmp_path / "func.pt")
    one_line_error(tmp_path / "func.pt", r"refers to '(posix|nt)\.getcwd'")


class _Marker:
    """Stands for a storage when pickling a hand-made data.pkl."""


class _TensorPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _Marker) else None


def test_view_past_its_storage_is_refused(tmp_path):
    """A crafted layout must not read memory beyond the storage (as_strided would)."""
    for size, stride, offset, match in [((3, 3), (3, 1), 0, "past the end"), ((2,), (1,), 3, "past the end"),
                                        ((2, 2), (1,), 0, "invalid layout"), ((2,), (-1,), 2, "invalid layout")]:
        one_line_error(crafted(tmp_path / "bad.pt", size, stride, offset), match)
    good = crafted(tmp_path / "good.pt", (2, 2), (1, 2), 0)  # in bounds: a transpose
    assert np.array_equal(torchfile.load(str(good)), [[0, 2], [1, 3]])


class _Crafted:
    def __init__(self, size, stride, offset):
        self.args = (_Marker(), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def crafted(path, size, stride, offset):
    """A torch.save-shaped zip whose one tensor has the given layout over a 4-element float32 storage."""
    buf = io.BytesIO()
    _TensorPickler(buf, protocol=2).dump(_Crafted(size, stride, offset))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{path.stem}/data.pkl", buf.getvalue())
        z.writestr(f"{path.stem}/data/0", np.arange(4, dtype="<f4").tobytes())
    return path


def test_loads_without_torch(tmp_path):
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3).T}, "iter_num": 3}, tmp_path / "ckpt.pt")
    code = ("import sys; sys.modules['torch'] = None  # any import of torch now fails\n"
            "from modgpt import torchfile\n"
            f"c = torchfile.load({str(tmp_path / 'ckpt.pt')!r})\n"
            "del sys.modules['torch']; assert not any(m.split('.')[0] == 'torch' for m in sys.modules)\n"
            "print(c['iter_num'], c['model']['w'].tolist())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "3 [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]"
