"""Sums over the ranks of an initialized ``torch.distributed`` process group, for data sharded by rank.

Each rank passes its own shard; quantities that are sums over examples (losses, products, counts)
are all-reduced, so every rank gets the full-data result and deterministic algorithms built on it
(Lanczos, SLQ, Hutchinson with the same seed) run identically on every rank. Giving every rank the
whole data is also correct (counts are summed too), only redundant.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def use_distributed(flag: bool | None) -> bool:
    """Whether to all-reduce: ``flag`` if given, else whether a process group with more than one rank is up."""
    up = dist.is_available() and dist.is_initialized()
    if flag is None:
        return up and dist.get_world_size() > 1
    if flag and not up:
        raise RuntimeError("distributed=True needs an initialized torch.distributed process group.")
    return bool(flag)


def all_reduce_sum(t: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``t`` summed over the ranks (in place) when ``enabled``; ``t`` itself otherwise."""
    if enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
