"""Data parallelism applied after the model is built: DDP, ZeRO-1, FSDP2 (fully_shard).

Also the process-group setup under torchrun and full-state-dict gathering for checkpoints, so the
model files never import torch.distributed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> Dist:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU); a no-op when not under torchrun."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 1:
        return Dist()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(rank, world, local, True)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    """Leave the process group together: a rank destroying the group while a peer still uses it
    aborts, hence the barrier first. The group may live on after this (see exit_process)."""
    if not (d.enabled and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_main(main) -> NoReturn:
    """The entry point of a training process: rc = main(), then exit_process(rc). An exception out of
    main is reported as Python reports it (the traceback; exit 1, or 130 for Ctrl-C) and ends the
    process the same way, since a failed run leaves the group's threads behind as well."""
    try:
        rc = main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            rc = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        rc = 130
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception, then the same exit
        traceback.print_exc()
        rc = 1
    exit_process(rc)


def exit_process(rc: int) -> NoReturn:
    """End the process with rc; without interpreter finalization where a gloo group outlived shutdown.

    destroy_process_group only unregisters the group: its worker threads live until the last
    reference to it goes, and once torch._dynamo is imported (the first optimizer step imports it)
    references to the default group stay that no Python object we can reach holds (torch 2.13:
    the threads outlive shutdown in every training run). A worker may still be releasing a finished
    collective's tensors when Python finalizes; it then waits for the GIL, the interpreter ends the
    thread, and the process aborts (SIGABRT, "terminate called without an active exception", exit
    -6 after a completed run: seen about once in 50 runs on two busy cores; none in 300 with this).
    Everything is written and closed by then (run-log records are single unbuffered writes, the run
    lock is released), so the process flushes stdio and leaves at once. Where the threads cannot be
    seen (no /proc: not Linux) it exits as usual; NCCL groups end in destroy_process_group."""
    if group_threads():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (| head) must not keep the process from leaving
                pass
        os._exit(rc)
    sys.exit(rc)


def group_threads() -> list[str]:
    """Names of this process's threads that belong to a gloo process group (Linux; torch names
    them pt_gloo_runloop and gloo_tcp_loop)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    names = []
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith(("pt_gloo", "gloo_tcp")):
            names.append(name)
    return sorted(names)


def any_flag(d: Dist, flag: bool, device) -> bool:
    """True when the flag is set on any rank (all ranks agree on a stop)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def to_host(t: torch.Tensor, timing: bool = False):
    """(host copy, event) of a device tensor without waiting: on a GPU a non-blocking copy into
    pinned memory with an event recorded right behind it (synchronize the event before reading the
    copy; it waits for the work queued so far, not for later work); elsewhere (t, None)."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event(enable_timing=timing)
    event.record()
    return host, event


class StopVote:
    """Whether to stop at this step boundary, agreed by all ranks without waiting for the device.

    The loop keeps one step in flight, and a collective read at once (any_flag) would wait for it:
    its all_reduce is queued behind the step. Here each boundary starts the all_reduce of this
    rank's flag and reads the one the previous boundary started, which was queued before the step
    now in flight (on a GPU its result is copied to pinned memory behind an event, so the read
    waits for the vote only). Every rank reads the same votes at the same boundaries, so they stop
    together, one boundary after the one where a single process would stop. Single process: the
    flag itself, at once."""

    def __init__(self, d: Dist, device):
        self.d, self.device, self.pending = d, device, None

    def __call__(self, flag: bool) -> bool:
        if not self.d.enabled:
            return flag
        # torch.full launches a fill; torch.tensor([...], device=cuda) would copy from the host and
        # wait for the stream, i.e. for the step in flight
        t = torch.full((1,), 1.0 if flag else 0.0, device=self.device)
        work = dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True)
        work.wait()  # on a GPU: the current stream waits for the all_reduce, the host does not
        previous, self.pending = self.pending, to_host(t)
        if previous is None:
            return False
        value, event = previous
        if event is not None:
            event.synchronize()
        return bool(value.item() > 0)


def total(d: Dist, x: torch.Tensor) -> torch.Tensor:
    """The sum of a scalar tensor over ranks, on the device, without waiting for it (float64 on
    the CPU, float32 on a GPU); x itself in a single process."""
    if not d.enabled:
        return x
    t = x.detach().to(torch.float64 if x.device.type == "cpu" else torch.float32).reshape(1).clone()
    dist.all_reduce(t)
    return t[0]


def mean(d: Dist, x: float, device) -> float:
    if not d.enabled:
        return x
    t = torch.tensor([x], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.item() / d.world


def describe(mode: str, d: Dist) -> str:
    names = {"none": "none (single process)", "ddp": "DDP", "zero1": "ZeRO-1 (ZeroRedundancyOptimizer)",
             "fsdp": "FSDP2 (fully_shard per block + root)"}
    return f"{names[mode]} x{d.world} processes" if d.enabled else names["none"]


def wrap(model, mode: str, d: Dist, device):
    """The module to call in training; `model` itself stays the raw module for state dicts."""
    if mode != "none" and not d.enabled:
        raise RuntimeError(f"parallel={mode} needs torchrun (e.g. torchrun --nproc_per_node=2 -m modgpt_torch.train)")
    if mode in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def make_optimizer(params_groups, mode: str, **kw):
    """AdamW, or AdamW partitioned across ranks for ZeRO-1."""
    if mode == "zero1":
        from torch.distributed.optim import ZeroRedundancyOptimizer
        # ZeRO wants a flat param list first; the no-decay group is added as a second group
        opt = ZeroRedundancyOptimizer(params_groups[0]["params"], optimizer_class=torch.optim.AdamW,
                                      weight_decay=params_groups[0]["weight_decay"], **kw)
        for g in params_groups[1:]:
            opt.add_param_group(g)
        return opt
    return torch.optim.AdamW(params_groups, **kw)


def no_sync(wrapped, mode: str, last: bool):
    """Skip DDP's gradient all-reduce on non-final micro steps."""
    if mode in ("ddp", "zero1") and not last:
        return wrapped.no_sync()
    if mode == "fsdp" and hasattr(wrapped, "set_requires_gradient_sync"):
        wrapped.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def full_state(model, opt, mode: str, d: Dist) -> tuple[dict | None, dict | None]:
    """(model, optimizer) full state dicts on rank 0 (None elsewhere); collective under parallelism."""
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        o = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=o)
        # before the first step the optimizer has no state, and get_optimizer_state_dict would
        # create it with a zero-lr fake step that bumps Adam's step count: record "fresh" instead
        osd = get_optimizer_state_dict(model, opt, options=o) if opt.state else None
        return (msd, osd) if d.is_main else (None, None)
    if mode == "zero1":
        opt.consolidate_state_dict(to=0)
        return (model.state_dict(), opt.state_dict()) if d.is_main else (None, None)
    return model.state_dict(), opt.state_dict()


def full_model(model, mode: str, d: Dist, device):
    """An unsharded model with the current weights on rank 0 (None elsewhere); collective under FSDP."""
    if mode != "fsdp":
        return model if d.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    msd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return None
    from modgpt_torch.model import GPT
    full = GPT(model.cfg).to(device)
    full.load_state_dict(msd)
    return full


def load_optimizer(model, opt, osd: dict, mode: str) -> None:
    """Restore a full optimizer state dict (as written by full_state) on every rank."""
    if osd is None:  # saved before the first step: the fresh optimizer is already right
        return
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(osd)
