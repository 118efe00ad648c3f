"""Read torch.save zip files (torch >= 1.6, e.g. nanoGPT's ckpt.pt) into numpy without importing torch."""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, NamedTuple

import numpy as np

# torch dtype name -> little-endian numpy dtype of its bytes; bfloat16 is read as raw bits, then upcast.
_DTYPES = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "bfloat16": "<u2", "int64": "<i8",
           "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
           "uint16": "<u2", "uint32": "<u4", "uint64": "<u8"}
_SUPPORTED = ", ".join(_DTYPES)
# Tensors' storages are pickled under these legacy class names (still so in torch 2.13).
_STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
             "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}


class TorchFileError(ValueError):
    """A file that is not a readable torch.save checkpoint of tensors."""


class _Bad(Exception):
    """A reason found while unpickling; load() prefixes it with the path."""


class _Storage(NamedTuple):
    dtype: str  # a key of _DTYPES ("uint8" for an untyped storage)
    data: bytes


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    """torch._utils._rebuild_tensor(_v2): a (possibly strided) view of a typed storage."""
    return _tensor(storage, offset, size, stride, getattr(storage, "dtype", None))


def _tensor(storage, offset, size, stride, dtype) -> np.ndarray:
    """Gather size/stride elements from offset of the storage, copied to C order, every index checked."""
    if not isinstance(storage, _Storage):
        raise _Bad("builds a tensor from something that is not a storage record")
    if dtype not in _DTYPES:
        raise _Bad(f"holds a tensor of dtype {dtype!r}, which is not supported (supported: {_SUPPORTED})")
    np_dtype = np.dtype(_DTYPES[dtype])
    flat = np.frombuffer(storage.data, np_dtype, count=len(storage.data) // np_dtype.itemsize)
    size, stride, offset = tuple(map(int, size)), tuple(map(int, stride)), int(offset)
    if len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise _Bad(f"has a tensor with an invalid layout (offset {offset}, size {size}, stride {stride})")
    if 0 in size:
        out = np.zeros(size, np_dtype)
    else:
        # as_strided reads raw memory, so the last element must be proven inside the storage first.
        if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(flat):
            raise _Bad(f"has a tensor reaching past the end of its storage ({len(flat)} elements)")
        view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * np_dtype.itemsize for s in stride])
        out = np.array(view, order="C")  # a copy that owns its memory, 0-d stays 0-d
    if dtype == "bfloat16":  # bfloat16 is the top half of a float32, so the upcast is exact
        wide = np.empty(out.shape, np.float32)
        np.left_shift(out, 16, out=wide.view(np.uint32), dtype=np.uint32)
        return wide
    return out


# Everything a pickled checkpoint may name: containers, tensor rebuilders, storage and dtype tags,
# and a few inert builtins; any other global (os.system, a custom class) is refused.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    # (storage, offset, size, stride, ...); v3 adds an explicit dtype for dtypes without a storage class.
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): lambda st, off, size, stride, _grad, _hooks, dtype, *_: _tensor(
        st, off, size, stride, dtype),
    # A Parameter is (data, requires_grad, hooks[, state]); here it is just its data.
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *_: data,
    ("torch.storage", "UntypedStorage"): "uint8",
    ("torch", "Size"): tuple,
    ("torch", "device"): lambda kind, index=None: kind if index is None else f"{kind}:{index}",
    ("_codecs", "encode"): lambda text, _encoding="latin1": text.encode("latin1"),  # protocol 2's bytes
    **{(mod, name): obj for mod in ("builtins", "__builtin__")
       for name, obj in (("set", set), ("frozenset", frozenset), ("slice", slice), ("complex", complex))},
    **{("torch", name): dtype for name, dtype in _STORAGES.items()},
    **{("torch", name): name for name in _DTYPES},  # a dtype is kept as its name, e.g. "float16"
}


class _Unpickler(pickle.Unpickler):
    """Unpickles data.pkl with only _ALLOWED globals, reading each storage record once."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module == "torch" and name.endswith("Storage"):
            raise _Bad(f"holds tensors of type torch.{name}, which is not supported (supported: {_SUPPORTED})")
        raise _Bad(f"refers to '{module}.{name}', which a checkpoint of tensors does not need (refusing to run it)")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _DTYPES):
            raise _Bad(f"has an unsupported storage record {pid!r}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                data = self.archive.read(name)
            except KeyError:
                raise _Bad(f"is missing storage record {name!r} (incomplete copy?)") from None
            if len(data) < int(numel) * np.dtype(_DTYPES[dtype]).itemsize:
                raise _Bad(f"has a short storage record {name!r} ({len(data)} bytes for {numel} {dtype})")
            self.storages[key] = _Storage(dtype, data)
        return self.storages[key]


def load(path: str) -> Any:
    """Load a torch.save zip file, returning its object with every tensor as a numpy array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torch checkpoint '{path}' not found")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            raise TorchFileError(f"'{path}' is a truncated or corrupt zip file ({e}); copy it again") from None
        if head in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):  # legacy: a bare pickle stream
            raise TorchFileError(f"'{path}' is in torch's legacy pre-1.6 format (_use_new_zipfile_serialization="
                                 "False); re-save it with a current torch.save") from None
        raise TorchFileError(f"'{path}' is not a torch.save zip file (legacy format before torch 1.6?): {e}") \
            from None
    with archive:
        # The top folder is the saved file's stem ("archive/", "ckpt/", ...), so find data.pkl by suffix.
        names = archive.namelist()
        pkls = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            raise TorchFileError(f"'{path}' is a zip file but not a torch.save one ({len(pkls)} data.pkl records)")
        prefix = pkls[0][:-len("data.pkl")]
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode(errors="replace").strip()
            if order != "little":
                raise TorchFileError(f"'{path}' was saved with {order!r} byte order; only 'little' is supported")
        try:
            return _Unpickler(archive, prefix).load()
        except _Bad as e:
            raise TorchFileError(f"'{path}' {e}") from None
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError,
                IndexError, AttributeError, OverflowError, MemoryError) as e:
            reason = f"{type(e).__name__}: {e}".replace("\n", " ")
            raise TorchFileError(f"'{path}' has a corrupt data.pkl ({reason})") from None
