"""Data-parallel training plumbing on torch.distributed: process group from torchrun, sharding, checks.

``torchrun --nproc-per-node N -m sparse_training.train ...`` (or submitit tasks, see
:func:`env_from_submitit`) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``; the trainer
then wraps the model in ``DistributedDataParallel`` (gradients averaged by its all-reduce), gives
each rank a contiguous slice of every global batch (the ``--batch-size`` flag is the global batch),
takes every mask decision from quantities that are bitwise equal on all ranks (parameters after an
all-reduced step, the same fixed growth batch, seeded generators) and checks after every update
that the masks really are identical. Rank 0 alone writes the run directory. NCCL on GPUs, gloo on
CPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and measures metrics."""
        return self.rank == 0


def env_from_submitit() -> None:
    """Fill torch.distributed's environment variables from a submitit job (one task per GPU).

    No-op outside submitit or when torchrun's variables are already set.
    """
    if "WORLD_SIZE" in os.environ:
        return
    try:
        import submitit

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return
    if env.num_tasks <= 1:
        return
    os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank),
                      WORLD_SIZE=str(env.num_tasks), MASTER_ADDR=env.hostnames[0],
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(20000 + int(env.job_id.split("_")[0]) % 20000)))


def init_from_env(device: str = "auto") -> DistInfo | None:
    """Join the process group described by torchrun's environment; None for a single process.

    The backend is NCCL when the run uses CUDA, gloo otherwise. A group already initialized (tests,
    a caller) is reused.
    """
    env_from_submitit()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized():
        if world <= 1:
            return None
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_world_size() <= 1:
        return None
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                    backend=str(dist.get_backend()))


def device_for(info: DistInfo | None, device: torch.device) -> torch.device:
    """One GPU per process: ``cuda:LOCAL_RANK`` under NCCL; the given device otherwise."""
    if info is not None and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def wrap(model: nn.Module, info: DistInfo | None, device: torch.device) -> nn.Module:
    """The module that training steps call: ``DistributedDataParallel(model)`` when distributed.

    BatchNorm layers are synchronized across GPUs (SyncBatchNorm needs CUDA; on CPU each rank
    normalizes with its shard's statistics, so BatchNorm models differ slightly from 1 process).
    """
    if info is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def shard(idx: torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """This rank's contiguous slice of a global batch's indices (sizes differ by at most one)."""
    if info is None:
        return idx
    return idx.tensor_split(info.world_size)[info.rank]


def all_reduce_sum(t: torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """``t`` summed over ranks (in place) when distributed."""
    if info is not None:
        dist.all_reduce(t)
    return t


def check_identical(masks: dict[str, torch.Tensor], info: DistInfo | None, step: int) -> None:
    """Raise unless every rank holds bitwise the same masks (element-wise min == max over ranks)."""
    if info is None or not masks:
        return
    flat = torch.cat([m.reshape(-1).to(torch.uint8) for m in masks.values()])
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"the masks differ between ranks after the mask update at step {step}; "
                           f"{int((lo != hi).sum())} entries disagree.")


def gather_rng(info: DistInfo | None, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG state (CPU, and CUDA when used), stacked by rank, for a checkpoint."""
    states = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    if info is None:
        return states
    out = {}
    for key, s in states.items():
        local = s.to(device) if info.backend == "nccl" else s
        parts = [torch.empty_like(local) for _ in range(info.world_size)]
        dist.all_gather(parts, local)
        out[key + "_ranks"] = torch.stack([p.cpu() for p in parts])
    out.update(states)  # rank 0's own state under the 1-process names
    return out


def restore_rng(ckpt: dict, info: DistInfo | None, device: torch.device) -> None:
    """Set this rank's RNG state from a checkpoint written by :func:`gather_rng` (if it has one).

    A checkpoint from a different world size gives every rank rank 0's state.
    """
    world = 1 if info is None else info.world_size
    rank = 0 if info is None else info.rank
    for key, setter in (("rng", torch.set_rng_state),
                        ("cuda_rng", (lambda s: torch.cuda.set_rng_state(s, device)) if device.type == "cuda" else None)):
        if setter is None:
            continue
        per_rank = ckpt.get(key + "_ranks")
        if per_rank is not None and per_rank.shape[0] == world:
            setter(per_rank[rank].to(torch.uint8).clone())  # a row of its own (set_state reads the storage)
        elif key in ckpt:
            setter(ckpt[key].to(torch.uint8))


def barrier(info: DistInfo | None) -> None:
    """Wait for every rank (e.g. before others read what rank 0 wrote)."""
    if info is not None:
        dist.barrier()


def check_launch(info: DistInfo | None, cfg) -> None:
    """Refuse settings that cannot be split over the ranks."""
    if info is not None and cfg.batch_size < info.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must be at least the "
                        f"{info.world_size} processes.")
