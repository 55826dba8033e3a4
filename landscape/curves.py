"""Low-loss curves between two solutions (quadratic Bezier, trained bend) and the two loss-barrier definitions.

Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", join two
solutions ``w0`` and ``w1`` by a parametric curve whose free parameters are trained to minimise the
loss averaged over the curve, ``E_{t ~ U(0, 1)} L(phi(t))``; their quadratic Bezier curve is

    phi(t) = (1 - t)^2 w0 + 2 t (1 - t) theta + t^2 w1,     t in [0, 1],

with one free point, the bend ``theta``. Draxler et al. (2018), "Essentially No Barriers in Neural
Network Energy Landscape", find such paths with a nudged elastic band; both report that
independently trained solutions are joined by paths of nearly constant low loss.

Here the curve lives in a :class:`ParamSpace` (for sparse networks: the active coordinates of the
union of the two endpoints' masks, so the bend may use a weight that either endpoint uses and no
other). Everything is model-agnostic: any ``nn.Module``, loss and data.

Barriers of a loss profile ``L(t)`` on ``t in [0, 1]``:

- :func:`barrier_above_chord`: ``max_t L(t) - ((1 - t) L(0) + t L(1))``, the height above the
  straight chord between the endpoint losses (the definition of Entezari et al. 2022, "The Role of
  Permutation Invariance in Linear Mode Connectivity"); 0 for a convex profile.
- :func:`barrier_max_minus_mean`: ``max_t L(t) - (L(0) + L(1)) / 2``, the height above the mean of
  the endpoints — Frankle et al. (2020), "Linear Mode Connectivity and the Lottery Ticket
  Hypothesis", who apply it to the test *error* along the straight line and call two networks
  linearly mode connected (stable to SGD noise) when it is about 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .evaluate import DEFAULT_BATCH_SIZE, Data, LossFn, model_device, train_mode
from .interpolate import PathResult, _Sweep
from .params import ParamSpace


# --- barriers ----------------------------------------------------------------------------------
def _endpoints(ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray):
    t = np.asarray(ts, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError("ts and values must be 1-D and of the same length.")

    def at(x: float) -> int:
        hits = np.flatnonzero(np.isclose(t, x, atol=1e-9))
        if not len(hits):
            raise ValueError(f"the grid must contain t = {x:g}.")
        return int(hits[0])

    inside = (t >= -1e-9) & (t <= 1 + 1e-9)
    return t, y, y[at(0.0)], y[at(1.0)], inside


def barrier_above_chord(ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> float:
    """``max over t in [0, 1] of L(t) - ((1 - t) L(0) + t L(1))`` (Entezari et al. 2022); ``ts`` holds 0 and 1.

    Never negative (t = 0 is on the grid); 0 for a straight or convex profile.
    """
    t, y, y0, y1, inside = _endpoints(ts, values)
    return float(np.max(y[inside] - ((1 - t[inside]) * y0 + t[inside] * y1)))


def barrier_max_minus_mean(ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> float:
    """``max over t in [0, 1] of L(t) - (L(0) + L(1)) / 2`` (Frankle et al. 2020's barrier height).

    Never below ``|L(1) - L(0)| / 2``; equal to :func:`barrier_above_chord` when the endpoint values
    are equal.
    """
    _, y, y0, y1, inside = _endpoints(ts, values)
    return float(np.max(y[inside]) - 0.5 * (y0 + y1))


# --- Bezier curves ------------------------------------------------------------------------------
def bezier_point(start: torch.Tensor, bend: torch.Tensor, end: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """``(1 - t)^2 start + 2 t (1 - t) bend + t^2 end`` (differentiable in all arguments)."""
    return (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end


@dataclass(frozen=True)
class BezierCurve:
    """A quadratic Bezier curve in a :class:`ParamSpace`: endpoints, bend, and the training losses.

    ``history`` holds the loss of every training step (at its sampled ``t`` and batch).
    """

    space: ParamSpace
    start: torch.Tensor
    bend: torch.Tensor
    end: torch.Tensor
    history: np.ndarray

    def point(self, t: float) -> torch.Tensor:
        """The vector ``phi(t)`` of the space."""
        return bezier_point(self.start, self.bend, self.end, float(t))


def train_bezier(
    model: nn.Module,
    start: torch.Tensor,
    end: torch.Tensor,
    data: tuple[torch.Tensor, torch.Tensor],
    space: ParamSpace,
    *,
    loss_fn: LossFn = F.cross_entropy,
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 0.02,
    momentum: float = 0.9,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress=None,
) -> BezierCurve:
    """Train the bend of a quadratic Bezier curve from ``start`` to ``end`` (Garipov et al. 2018).

    The bend starts at the midpoint (so the untrained curve is the straight line) and is moved by
    SGD with momentum on ``loss(phi(t))`` with one ``t ~ U(0, 1)`` and one mini-batch of ``data``
    (drawn with replacement of batches, without replacement within one) per step; the learning rate
    follows a cosine decay to 0. The model is evaluated in eval mode (Dropout off, BatchNorm on its
    running statistics); parameters outside ``space`` and buffers keep ``model``'s values. A
    ``torch.Generator`` seeded with ``seed`` draws ``t`` and the batches, so a run is reproducible.

    Args:
        model: gives the architecture (not changed).
        start, end: vectors of ``space``.
        data: a tensor pair ``(x, y)`` of training data.
        progress: optional callable ``progress(step, loss)`` called after each step (e.g. a bar).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    device = model_device(model) if device is None else torch.device(device)
    dtype = start.dtype if start.is_floating_point() else torch.float32
    start = start.detach().to(device, dtype)
    end = end.detach().to(device, dtype)
    constants = {n: t.detach().to(device) for n, t in model.named_parameters() if n not in space}
    constants.update({n: t.detach().to(device) for n, t in model.named_buffers()})
    x, y = data
    x, y = x.to(device), y.to(device)
    n = int(x.shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    bend = (0.5 * (start + end)).clone().requires_grad_(True)
    opt = torch.optim.SGD([bend], lr=lr, momentum=momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history = np.empty(steps)
    order = torch.randperm(n, generator=gen)
    pos = 0
    with train_mode(model, False):
        for step in range(steps):
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + batch_size].to(device)
            pos += batch_size
            t = float(torch.rand((), generator=gen))
            params = {**constants, **space.from_vector(bezier_point(start, bend, end, t))}
            loss = loss_fn(functional_call(model, params, (x[idx],)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history[step] = float(loss.detach())
            if progress is not None:
                progress(step, history[step])
    return BezierCurve(space, start, bend.detach(), end, history)


def evaluate_curve(
    model: nn.Module,
    curve: BezierCurve,
    data: Data,
    ts: Sequence[float] | np.ndarray,
    *,
    loss_fn: LossFn = F.cross_entropy,
    recalibrate_bn: bool = False,
    recalibration_data: torch.Tensor | Data | None = None,
    recalibration_batches: int | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> PathResult:
    """Loss and accuracy at ``phi(t)`` for each ``t`` (a copy of ``model`` is evaluated; ``alphas`` = ts).

    Parameters outside the curve's space and buffers are ``model``'s (recomputed at every point with
    ``recalibrate_bn``, as in :func:`landscape.interpolate.interpolate`).
    """
    ts = np.asarray(ts, dtype=np.float64)
    sweep = _Sweep(model, data, loss_fn, batch_size, device, recalibrate_bn, recalibration_data,
                   recalibration_batches)
    loss, acc = np.empty(len(ts)), np.empty(len(ts))
    for i, t in enumerate(ts):
        curve.space.load_into(sweep.model, curve.point(float(t)))
        loss[i], acc[i] = sweep.score()
    return PathResult(alphas=ts, loss=loss, accuracy=acc, recalibrated=sweep.recalibrate)


__all__ = [
    "BezierCurve",
    "barrier_above_chord",
    "barrier_max_minus_mean",
    "bezier_point",
    "evaluate_curve",
    "train_bezier",
]
