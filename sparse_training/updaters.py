"""Mask updaters that run between optimizer steps: gradual magnitude pruning, RigL and SET.

Each is composed of small parts (sparsimony-style): a *schedule* (cubic sparsity, cosine drop
fraction), a *drop rule* (smallest magnitude) and a *grow rule* (largest dense gradient, or random).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .config import TrainConfig
from .distributions import active_counts, layer_densities
from .errors import UserError
from .masks import Masks

GradFn = Callable[[], dict[str, torch.Tensor]]  # dense gradients of the grow batch, by param name


# --- schedules -----------------------------------------------------------------------
def cubic_sparsity(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0)/(t1 - t0))^3, clamped to [t0, t1]."""
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / max(end - start, 1)
    return final + (initial - final) * (1.0 - frac) ** 3


def cosine_fraction(step: int, end: int, alpha: float) -> float:
    """RigL's drop fraction: alpha/2 * (1 + cos(pi t / T_end))."""
    return alpha / 2.0 * (1.0 + math.cos(math.pi * min(step, end) / max(end, 1)))


def lr_scaled_fraction(step: int, alpha: float, lr: Callable[[int], float]) -> float:
    """rigl_tf2's 'lr' schedule: the drop fraction follows the learning rate, alpha * lr(t) / lr(0)."""
    lr0 = lr(0)
    return alpha * lr(step) / lr0 if lr0 > 0 else 0.0


# --- rules ---------------------------------------------------------------------------
def drop_smallest(weight: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """The mask with the ``n`` smallest-magnitude active weights switched off."""
    score = torch.where(mask, weight.detach().abs(), torch.full_like(weight, float("inf")))
    idx = torch.argsort(score.reshape(-1), stable=True)[:n]
    out = mask.clone().reshape(-1)
    out[idx] = False
    return out.reshape(mask.shape)


def keep_largest(score: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """A mask of the ``n`` largest-``score`` entries among ``candidates``."""
    s = torch.where(candidates, score, torch.full_like(score, -float("inf"))).reshape(-1)
    idx = torch.argsort(s, descending=True, stable=True)[:n]
    out = torch.zeros(s.numel(), dtype=torch.bool, device=score.device)
    out[idx] = True
    return out.reshape(score.shape)


def grow_by_gradient(grad: torch.Tensor, inactive: torch.Tensor, n: int, generator=None) -> torch.Tensor:
    """RigL growth: the ``n`` inactive positions with the largest dense-gradient magnitude."""
    return keep_largest(grad.detach().abs(), inactive, n)


def grow_random(grad: torch.Tensor, inactive: torch.Tensor, n: int, generator=None) -> torch.Tensor:
    """SET growth: ``n`` inactive positions drawn uniformly at random."""
    score = torch.rand(inactive.shape, generator=generator).to(inactive.device)
    return keep_largest(score, inactive, n)


# --- updaters ------------------------------------------------------------------------
class MaskUpdater(Protocol):
    """What the trainer calls between steps. ``snapshots``: write pre/post checkpoints around updates."""

    snapshots: bool

    def is_update_step(self, step: int) -> bool: ...

    def update(self, step: int, model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer,
               grad_fn: GradFn) -> dict: ...


def _reset_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == where.shape:
            value.masked_fill_(where.to(value.device), 0)


@dataclass
class GradualPruner:
    """Gradual magnitude pruning to ``final`` sparsity on a cubic schedule, per layer or global."""

    final: float
    start: int
    end: int
    every: int
    scope: str = "layer"
    distribution: str = "uniform"
    first_layer_dense: bool = False
    snapshots: bool = False

    def is_update_step(self, step: int) -> bool:
        return self.start <= step <= self.end and ((step - self.start) % self.every == 0 or step == self.end)

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.start, self.end, self.final)

    @torch.no_grad()
    def update(self, step, model, masks, optimizer, grad_fn) -> dict:
        sparsity = self.target(step)
        params = dict(model.named_parameters())
        names = list(masks)
        shapes = {n: tuple(masks[n].shape) for n in names}
        if self.scope == "global":
            # one magnitude ranking over all layers; a first layer kept dense is left out of it and
            # the others absorb its share of the budget (as layer_densities does per layer)
            dense = names[:1] if self.first_layer_dense else []
            ranked = [n for n in names if n not in dense]
            total = sum(masks[n].numel() for n in names)
            keep = round((1.0 - sparsity) * total) - sum(masks[n].numel() for n in dense)
            if keep < 0 or not ranked:
                raise UserError(f"sparsity {sparsity:g} cannot be met with the first layer kept dense; lower it "
                                "or drop --first-layer-dense.")
            scores = torch.cat([torch.where(masks[n], params[n].abs(), torch.full_like(params[n], -1.0)).reshape(-1).cpu()
                                for n in ranked])
            order = torch.argsort(scores, descending=True, stable=True)[:keep]
            flat = torch.zeros(scores.numel(), dtype=torch.bool)
            flat[order] = True
            offset = 0
            for n in ranked:
                k = masks[n].numel()
                masks[n] = flat[offset:offset + k].reshape(shapes[n]).to(masks[n].device) & masks[n]
                offset += k
        else:
            dense = names[:1] if self.first_layer_dense else []
            counts = active_counts(shapes, layer_densities(shapes, sparsity, self.distribution, dense))
            for n in names:
                score = torch.where(masks[n], params[n].abs(), torch.full_like(params[n], -1.0))
                masks[n] = keep_largest(score, masks[n], min(counts[n], int(masks[n].sum())))
        masks.apply(model)
        masks.mask_optimizer_state(optimizer, model)
        return {"target_sparsity": sparsity, "sparsity": masks.sparsity()}


@dataclass
class DynamicSparse:
    """RigL (grow by gradient) or SET (grow at random): drop then regrow the same count per layer."""

    every: int
    end: int
    alpha: float
    grow: Callable = grow_by_gradient
    seed: int = 0
    snapshots: bool = True
    schedule: Callable[[int], float] | None = None  # step -> drop fraction; None: cosine to `end`

    def fraction(self, step: int) -> float:
        """The drop fraction at ``step``."""
        return cosine_fraction(step, self.end, self.alpha) if self.schedule is None else self.schedule(step)

    def is_update_step(self, step: int) -> bool:
        return step > 0 and step % self.every == 0 and step <= self.end

    def update(self, step, model, masks, optimizer, grad_fn) -> dict:
        grads = grad_fn() if self.grow is grow_by_gradient else {}  # needs autograd: outside no_grad
        with torch.no_grad():
            return self._swap(step, model, masks, optimizer, grads)

    def _swap(self, step, model, masks, optimizer, grads) -> dict:
        fraction = self.fraction(step)
        params = dict(model.named_parameters())
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        dropped, grown = {}, {}
        for n in list(masks):
            old = masks[n]
            n_swap = int(fraction * int(old.sum()))
            if n_swap == 0:
                continue
            kept = drop_smallest(params[n], old, n_swap)
            new = self.grow(grads.get(n), ~kept, n_swap, generator)
            masks[n] = kept | new
            # A connection dropped and regrown in the same update keeps its weight and optimizer
            # state (as in rigl_tf2's generic_mask_update); only newly activated ones start afresh.
            fresh = new & ~old
            params[n].masked_fill_(fresh, 0.0)  # grown weights start at zero
            _reset_state(optimizer, params[n], fresh)  # ... with fresh optimizer state
            dropped[n] = int((old & ~masks[n]).sum())
            grown[n] = int(fresh.sum())
        masks.apply(model)
        masks.mask_optimizer_state(optimizer, model)
        return {"drop_fraction": fraction, "dropped": sum(dropped.values()), "grown": sum(grown.values())}


def prune_window(cfg: TrainConfig, total_steps: int) -> tuple[int, int]:
    """First and last pruning step: the step-valued options when set, else fractions of training."""
    start = cfg.prune_begin_step if cfg.prune_begin_step is not None else int(cfg.prune_start * total_steps)
    end = cfg.prune_end_step if cfg.prune_end_step is not None else int(cfg.prune_end * total_steps)
    return start, max(end, start + 1)


def make_updater(cfg: TrainConfig, kind: str | None, total_steps: int, seed: int,
                 lr: Callable[[int], float] | None = None) -> MaskUpdater | None:
    """The updater for a method kind ('prune', 'rigl', 'set' or None) under this config.

    ``lr`` (step -> learning rate) is needed by ``--drop-schedule lr``.
    """
    if kind is None:
        return None
    if kind == "prune":
        start, end = prune_window(cfg, total_steps)
        return GradualPruner(final=cfg.sparsity, start=start, end=end,
                             every=max(1, cfg.prune_every), scope=cfg.prune_scope,
                             distribution=cfg.distribution, first_layer_dense=cfg.first_layer_dense)
    grow = grow_by_gradient if kind == "rigl" else grow_random
    schedule = None
    if cfg.drop_schedule == "lr":
        if lr is None:
            raise ValueError("--drop-schedule lr needs the learning-rate schedule")
        schedule = functools.partial(lr_scaled_fraction, alpha=cfg.drop_fraction, lr=lr)
    return DynamicSparse(every=max(1, cfg.update_every), end=int(cfg.update_end * total_steps),
                         alpha=cfg.drop_fraction, grow=grow, seed=seed, schedule=schedule)
