"""Mesh construction and the one logical-axis rules table (the only place mesh axes are named).

Mesh axes: `data` (pure data parallel: params replicated) and `fsdp` (params and optimizer state
sharded, batch sharded too). The batch is split over both axes. A parameter dim is sharded only
when its size divides the mesh axis (vocab 65 cannot be split 4 ways): otherwise it is replicated.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from modgpt.config import ConfigError, SystemConfig

AXES = ("data", "fsdp")
BATCH = AXES  # the batch dim is split over every device
# logical name -> mesh axis (None = replicated). The model only ever names the left column.
RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": None,
    "positions": None,
    "heads": None,
    "mlp": None,
    "norm": None,
    "layers": None,
}


def mesh_shape(s: SystemConfig, n_devices: int) -> tuple[int, int]:
    """(data, fsdp) from the config; -1 takes all remaining devices."""
    data, fsdp = s.mesh_data, s.mesh_fsdp
    if data == -1:
        data = n_devices // fsdp if fsdp > 0 and n_devices % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n_devices // data if data > 0 and n_devices % data == 0 else 0
    if data * fsdp != n_devices or data < 1 or fsdp < 1:
        raise ConfigError(f"mesh_data={s.mesh_data} x mesh_fsdp={s.mesh_fsdp} does not fit the "
                          f"{n_devices} available devices; use -1 for one axis to take the rest")
    return data, fsdp


def make_mesh(s: SystemConfig, devices=None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(s, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def check_batch(batch_size: int, mesh) -> None:
    """The batch dim is split over every mesh device: it must divide evenly (raises ConfigError)."""
    n = mesh.size
    if batch_size % n:
        raise ConfigError(f"batch_size={batch_size} cannot be split over the {n} devices of the mesh "
                          f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); set --batch_size to a "
                          f"multiple of {n} or use fewer devices (--mesh_data, --mesh_fsdp)")


def spec_for(names, shape, mesh) -> P:
    """Logical names of one array -> PartitionSpec, replicating dims the mesh axis does not divide."""
    used, out = set(), []
    for name, size in zip(names or (None,) * len(shape), shape):
        axis = RULES.get(name) if name is not None else None
        if axis is None or axis in used or size % mesh.shape[axis]:
            out.append(None)
        else:
            used.add(axis)
            out.append(axis)
    return P(*out)


def param_shardings(model, mesh) -> dict:
    """Nested pure dict (like weights.param_dict) of NamedShardings from the params' logical names."""
    state = nnx.state(model, nnx.Param)

    def rec(tree):
        out = {}
        for k, v in tree.items():
            if isinstance(v, nnx.Variable):
                names = v.get_metadata().get("out_sharding")
                out[k] = NamedSharding(mesh, spec_for(names, v.shape, mesh))
            else:
                out[k] = rec(v)
        return out
    return rec(_variables(state))


def _variables(state) -> dict:
    """nnx.State -> nested dict whose leaves are the Variables themselves (keeps the metadata)."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = var
    return out


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh, ndim: int = 2, lead: int = 0) -> NamedSharding:
    """(lead dims..., B, T): B split over all mesh axes."""
    return NamedSharding(mesh, P(*([None] * lead), BATCH, *([None] * (ndim - lead - 1))))


def put_global(x, sharding: NamedSharding):
    """A host array (identical on every process) -> a global array with this sharding."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_params(params: dict, shardings: dict) -> dict:
    return jax.tree.map(lambda a, s: put_global(jax.device_get(a), s), params, shardings)


def put_batch(local_x, mesh, lead: int = 0):
    """This process's slice of the global batch -> global array sharded on the batch dim."""
    s = batch_sharding(mesh, local_x.ndim, lead)
    return jax.make_array_from_process_local_data(s, np.asarray(local_x))


def describe(mesh) -> str:
    d, f = mesh.shape["data"], mesh.shape["fsdp"]
    kind = "single device" if d * f == 1 else ("data parallel" if f == 1 else ("FSDP" if d == 1 else "data x FSDP"))
    return f"{kind}: mesh data={d} x fsdp={f} ({jax.process_count()} process(es))"
