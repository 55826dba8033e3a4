"""Loss and accuracy along paths and planes in parameter space, with BatchNorm recalibration and filter-normalized slices."""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .evaluate import (
    DEFAULT_BATCH_SIZE,
    Data,
    LossFn,
    evaluate_batches,
    iterate_batches,
    materialize_batches,
    model_device,
    train_mode,
)
from .lanczos import make_generator
from .params import ParamSpace

Point = Mapping[str, torch.Tensor] | torch.Tensor
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def default_alphas() -> np.ndarray:
    """The default interpolation grid: 29 points from -0.2 to 1.2 (step 0.05)."""
    return np.linspace(-0.2, 1.2, 29)


@dataclass(frozen=True)
class PathResult:
    """Loss and accuracy at points ``alphas`` of a 1-D path or slice."""

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    recalibrated: bool = False

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per point with columns ``alpha``, ``loss``, ``accuracy``."""
        return pd.DataFrame({"alpha": self.alphas, "loss": self.loss, "accuracy": self.accuracy})


@dataclass(frozen=True)
class PlaneResult:
    """Loss and accuracy on a grid of a plane; arrays are ``(len(betas), len(alphas))`` (rows = beta).

    ``anchors`` gives the plane coordinates ``(alpha, beta)`` of the named points that define it.
    """

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    anchors: dict[str, tuple[float, float]] = field(default_factory=dict)
    recalibrated: bool = False

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per grid point with columns ``alpha``, ``beta``, ``loss``, ``accuracy``."""
        a, b = np.meshgrid(self.alphas, self.betas)
        return pd.DataFrame(
            {
                "alpha": a.ravel(),
                "beta": b.ravel(),
                "loss": self.loss.ravel(),
                "accuracy": self.accuracy.ravel(),
            }
        )


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BATCHNORM_TYPES) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: torch.Tensor | Data,
    *,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Recompute BatchNorm running statistics of ``model`` in place from ``data``; returns ``model``.

    Every BatchNorm is reset and, with ``momentum=None`` (a cumulative average), sees the inputs
    ``x`` of ``data`` (a tensor, a pair ``(x, y)`` or batches; the first ``num_batches`` only when
    given) with the model in train mode; momenta and modes are restored after. A model without
    BatchNorm is returned untouched.
    """
    bns = _batchnorms(model)
    if not bns:
        return model
    device = model_device(model) if device is None else torch.device(device)
    if isinstance(data, torch.Tensor):
        data = (data, torch.zeros(data.shape[0], dtype=torch.long))
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    try:
        with train_mode(model, True):
            for i, (x, _) in enumerate(iterate_batches(data, batch_size, device)):
                if num_batches is not None and i >= num_batches:
                    break
                model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return model


class _Sweep:
    """One working copy of the model, the data on its device, and how to score a point."""

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        loss_fn: LossFn,
        batch_size: int | None,
        device: torch.device | str | None,
        recalibrate: bool,
        recalibration_data: torch.Tensor | Data | None,
        recalibration_batches: int | None,
    ) -> None:
        self.device = model_device(model) if device is None else torch.device(device)
        # The caller's model is never touched: every point is written into this one copy.
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.loss_fn = loss_fn
        self.batches = materialize_batches(data, batch_size, self.device)
        self.recalibrate = recalibrate and bool(_batchnorms(self.model))
        self.recal_batches: list = []
        if recalibrate:
            if recalibration_data is None:
                raise ValueError("recalibrate_bn=True needs recalibration_data (training inputs).")
            if isinstance(recalibration_data, torch.Tensor):
                recalibration_data = (
                    recalibration_data,
                    torch.zeros(recalibration_data.shape[0], dtype=torch.long),
                )
            batches = materialize_batches(recalibration_data, batch_size, self.device)
            self.recal_batches = batches[:recalibration_batches]
        self.tensors = dict(self.model.named_parameters())
        self.tensors.update(dict(self.model.named_buffers()))

    def score(self) -> tuple[float, float]:
        if self.recalibrate:
            recalibrate_bn(self.model, self.recal_batches, batch_size=None)
        result = evaluate_batches(self.model, self.batches, self.loss_fn)
        return result.loss, result.accuracy


class _Affine:
    """Writes ``p0 + sum_i c_i (p_i - p0)`` of state_dicts or ParamSpace vectors into the working model."""

    def __init__(self, sweep: _Sweep, points: Sequence[Point], space: ParamSpace | None) -> None:
        self.sweep = sweep
        self.space = space
        if all(isinstance(p, torch.Tensor) for p in points):
            if space is None:
                raise ValueError("points given as vectors need the ParamSpace they live in (space=).")
            vecs = [p.to(sweep.device, torch.float64) for p in points]  # type: ignore[union-attr]
            self.base_vec = vecs[0]
            self.delta_vecs = [v - vecs[0] for v in vecs[1:]]
            self.keys: list[str] = []
            return
        if any(isinstance(p, torch.Tensor) for p in points):
            raise TypeError("give all points as state_dicts or all as ParamSpace vectors, not a mix.")
        expected = set(sweep.model.state_dict())
        for p in points:
            missing = sorted(expected - set(p))  # type: ignore[arg-type]
            if missing:
                raise ValueError(
                    f"a point lacks {len(missing)} state_dict entries of the model (e.g. {missing[0]})."
                )
        self.keys = [k for k in sweep.model.state_dict() if k in sweep.tensors]
        self.base: dict[str, torch.Tensor] = {}
        self.deltas: list[dict[str, torch.Tensor]] = [{} for _ in points[1:]]
        with torch.no_grad():
            for k in self.keys:
                dst = sweep.tensors[k]
                first = points[0][k].detach().to(dst.device, dst.dtype)  # type: ignore[index]
                self.base[k] = first
                if not dst.is_floating_point():
                    continue  # e.g. num_batches_tracked: taken from the first point
                for i, p in enumerate(points[1:]):
                    self.deltas[i][k] = p[k].detach().to(dst.device, dst.dtype) - first  # type: ignore[index]

    @torch.no_grad()
    def load(self, coeffs: Sequence[float]) -> None:
        if not self.keys:
            vec = self.base_vec.clone()
            for c, d in zip(coeffs, self.delta_vecs):
                vec.add_(d, alpha=float(c))
            self.space.load_into(self.sweep.model, vec)  # type: ignore[union-attr]
            return
        for k in self.keys:
            dst = self.sweep.tensors[k]
            dst.copy_(self.base[k])
            if dst.is_floating_point():
                for c, d in zip(coeffs, self.deltas):
                    dst.add_(d[k], alpha=float(c))


def interpolate(
    model: nn.Module,
    theta_a: Point,
    theta_b: Point,
    data: Data,
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    loss_fn: LossFn = F.cross_entropy,
    space: ParamSpace | None = None,
    recalibrate_bn: bool = False,
    recalibration_data: torch.Tensor | Data | None = None,
    recalibration_batches: int | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> PathResult:
    """Loss and accuracy along ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b``.

    Args:
        model: gives the architecture; a single copy of it is evaluated (the caller's model is
            never changed), each point written in place, so a path costs about one forward pass
            over ``data`` per point.
        theta_a, theta_b: state_dicts (parameters *and* buffers are interpolated, BatchNorm
            running statistics included) or vectors of ``space`` (only those coordinates change;
            other parameters and buffers are the model's).
        data: evaluation data, a tensor pair ``(x, y)`` or batches.
        alphas: the grid (default :func:`default_alphas`, 29 points on [-0.2, 1.2]).
        recalibrate_bn: at every point reset and recompute BatchNorm statistics from
            ``recalibration_data`` (training inputs; the first ``recalibration_batches``).
        batch_size: rows per batch for tensor data.
        device: where to evaluate (default: the model's device).
    """
    alphas = default_alphas() if alphas is None else np.asarray(alphas, dtype=np.float64)
    sweep = _Sweep(
        model, data, loss_fn, batch_size, device, recalibrate_bn, recalibration_data,
        recalibration_batches,
    )
    path = _Affine(sweep, [theta_a, theta_b], space)
    loss = np.empty(len(alphas))
    acc = np.empty(len(alphas))
    for i, a in enumerate(alphas):
        path.load([a])
        loss[i], acc[i] = sweep.score()
    return PathResult(alphas=alphas, loss=loss, accuracy=acc, recalibrated=sweep.recalibrate)


def plane_coordinates(
    space: ParamSpace, theta_a: Point, theta_b: Point, theta_c: Point
) -> dict[str, tuple[float, float]]:
    """Coordinates of three points in their plane: a at (0, 0), b at (1, 0), c above the a-b axis.

    The axes are orthogonal in ``space`` and both measured in units of ``|b - a|`` (Garipov et al.
    2018), so the picture is not distorted.
    """
    return _plane_geometry(space, theta_a, theta_b, theta_c)[2]


def _plane_geometry(
    space: ParamSpace, a: Point, b: Point, c: Point
) -> tuple[float, float, dict[str, tuple[float, float]]]:
    """``(gamma, kappa, anchors)``: c - a = gamma (b - a) + v with v orthogonal, kappa = |b-a| / |v|."""
    va, vb, vc = (
        p.detach().double().cpu()
        if isinstance(p, torch.Tensor)
        else space.to_vector(p, dtype=torch.float64, device="cpu")
        for p in (a, b, c)
    )
    u, w = vb - va, vc - va
    uu = float(u @ u)
    if uu == 0.0:
        raise ValueError("theta_a and theta_b coincide; a plane needs three distinct points.")
    gamma = float(w @ u) / uu
    vnorm = float(torch.linalg.vector_norm(w - gamma * u))
    if vnorm <= 1e-12 * uu**0.5:
        raise ValueError("the three points are collinear; they do not span a plane.")
    kappa = uu**0.5 / vnorm
    return gamma, kappa, {"a": (0.0, 0.0), "b": (1.0, 0.0), "c": (gamma, 1.0 / kappa)}


def project_to_plane(
    space: ParamSpace, theta_a: Point, theta_b: Point, theta_c: Point, points: Sequence[Point]
) -> np.ndarray:
    """Plane coordinates (as in :func:`plane_coordinates`) of the orthogonal projections of ``points``.

    Returns an array of shape ``(len(points), 3)``: ``alpha``, ``beta`` and the distance from the
    point to the plane, all in units of ``|b - a|`` (so a training trajectory can be drawn on the
    plane and one can see how far off it it runs).
    """
    _plane_geometry(space, theta_a, theta_b, theta_c)  # refuses coinciding or collinear points
    va, vb, vc = (_as_cpu_vector(space, p) for p in (theta_a, theta_b, theta_c))
    u = vb - va
    unit = float(torch.linalg.vector_norm(u))
    gamma = float((vc - va) @ u) / unit**2
    v = (vc - va) - gamma * u
    v = v / torch.linalg.vector_norm(v)
    out = np.empty((len(points), 3))
    for i, p in enumerate(points):
        w = _as_cpu_vector(space, p) - va
        alpha = float(w @ u) / unit**2
        beta = float(w @ v) / unit
        off = w - alpha * u - beta * unit * v
        out[i] = (alpha, beta, float(torch.linalg.vector_norm(off)) / unit)
    return out


def _as_cpu_vector(space: ParamSpace, p: Point) -> torch.Tensor:
    if isinstance(p, torch.Tensor):
        return p.detach().double().cpu()
    return space.to_vector(p, dtype=torch.float64, device="cpu")


def plane(
    model: nn.Module,
    theta_a: Point,
    theta_b: Point,
    theta_c: Point,
    data: Data,
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    betas: Sequence[float] | np.ndarray | None = None,
    grid_size: int = 21,
    margin: float = 0.2,
    loss_fn: LossFn = F.cross_entropy,
    space: ParamSpace | None = None,
    recalibrate_bn: bool = False,
    recalibration_data: torch.Tensor | Data | None = None,
    recalibration_batches: int | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    progress: Callable[[], object] | None = None,
) -> PlaneResult:
    """Loss and accuracy on the plane through three points, on a grid of plane coordinates.

    Coordinates are those of :func:`plane_coordinates` (orthogonal axes in ``space``, default
    ``ParamSpace(model)``, unit ``|b - a|``). The default grid has ``grid_size`` points per axis
    covering the three points with ``margin`` of the larger span on each side. A grid point is an
    affine combination of a, b and c, applied to every state entry (buffers too) for state_dicts.
    ``progress()`` is called after each grid point (e.g. a progress bar's update). Other arguments
    as for :func:`interpolate`.
    """
    geometry_space = space if space is not None else ParamSpace(model)
    gamma, kappa, anchors = _plane_geometry(geometry_space, theta_a, theta_b, theta_c)
    xs = [p[0] for p in anchors.values()]
    ys = [p[1] for p in anchors.values()]
    pad = margin * max(max(xs) - min(xs), max(ys) - min(ys))
    alphas = (
        np.linspace(min(xs) - pad, max(xs) + pad, grid_size)
        if alphas is None
        else np.asarray(alphas, dtype=np.float64)
    )
    betas = (
        np.linspace(min(ys) - pad, max(ys) + pad, grid_size)
        if betas is None
        else np.asarray(betas, dtype=np.float64)
    )
    sweep = _Sweep(
        model, data, loss_fn, batch_size, device, recalibrate_bn, recalibration_data,
        recalibration_batches,
    )
    surface = _Affine(sweep, [theta_a, theta_b, theta_c], space)
    loss = np.empty((len(betas), len(alphas)))
    acc = np.empty_like(loss)
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            # alpha * u + beta * kappa * v, rewritten on (b - a) and (c - a)
            surface.load([alpha - beta * kappa * gamma, beta * kappa])
            loss[i, j], acc[i, j] = sweep.score()
            if progress is not None:
                progress()
    return PlaneResult(
        alphas=alphas, betas=betas, loss=loss, accuracy=acc, anchors=anchors,
        recalibrated=sweep.recalibrate,
    )


def filter_normalize(
    space: ParamSpace, direction: torch.Tensor, reference: Point, *, ignore_1d: bool = True
) -> torch.Tensor:
    """Filter normalization (Li et al. 2018) of a direction in ``space``.

    Each filter (slice along dim 0 of a weight with dim > 1: a conv output channel, a linear row)
    of the direction is rescaled to the norm of the same filter of ``reference``. One-dimensional
    parameters (biases, norm parameters) are zeroed when ``ignore_1d`` (Li et al.'s default),
    else rescaled as a whole. Masked entries stay zero; a filter with zero norm stays zero.
    """
    ref_vec = reference if isinstance(reference, torch.Tensor) else space.to_vector(reference)
    d = space.from_vector(direction)
    r = space.from_vector(ref_vec.to(direction.device, direction.dtype))
    out: dict[str, torch.Tensor] = {}
    for name in space.names:
        dn, rn = d[name], r[name]
        if dn.dim() <= 1:
            if ignore_1d:
                out[name] = torch.zeros_like(dn)
            else:
                out[name] = dn * _safe_ratio(rn.norm(), dn.norm())
            continue
        d_norm = dn.reshape(dn.shape[0], -1).norm(dim=1)
        r_norm = rn.reshape(rn.shape[0], -1).norm(dim=1)
        scale = _safe_ratio(r_norm, d_norm)
        out[name] = dn * scale.view(-1, *([1] * (dn.dim() - 1)))
    return space.to_vector(out)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))


def random_direction(
    space: ParamSpace,
    reference: Point,
    *,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    normalize: bool = True,
    ignore_1d: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A Gaussian direction in ``space`` (zero off the mask), filter-normalized to ``reference``.

    ``generator`` (else a CPU generator seeded with ``seed``) draws the direction.
    """
    gen = make_generator(seed, generator)
    direction = space.randn(gen, dtype=dtype, device=device)
    if not normalize:
        return direction
    return filter_normalize(space, direction, reference, ignore_1d=ignore_1d)


def _slice_setup(
    model: nn.Module,
    center: Mapping[str, torch.Tensor] | None,
    space: ParamSpace | None,
    masks: Mapping[str, torch.Tensor] | None,
) -> tuple[ParamSpace, torch.Tensor, nn.Module]:
    source = model
    if center is not None:
        source = copy.deepcopy(model)
        source.load_state_dict(dict(center))
    space = space if space is not None else ParamSpace(source, masks)
    return space, space.to_vector(source, dtype=torch.float64), source


def slice_1d(
    model: nn.Module,
    data: Data,
    *,
    direction: torch.Tensor | None = None,
    alphas: Sequence[float] | np.ndarray | None = None,
    center: Mapping[str, torch.Tensor] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    space: ParamSpace | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    ignore_1d: bool = True,
    loss_fn: LossFn = F.cross_entropy,
    recalibrate_bn: bool = False,
    recalibration_data: torch.Tensor | Data | None = None,
    recalibration_batches: int | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> PathResult:
    """Loss along ``theta + alpha d`` for a (default: random, filter-normalized) direction ``d``.

    ``theta`` is ``center`` (a state_dict) or the model's own state; ``d`` lives in ``space``
    (default ``ParamSpace(model, masks)``, so it is zero off the mask). Default ``alphas``:
    21 points on [-1, 1]. Buffers stay at the center's unless recalibrated.
    """
    space, theta, source = _slice_setup(model, center, space, masks)
    if direction is None:
        direction = random_direction(
            space, theta, seed=seed, generator=generator, ignore_1d=ignore_1d, dtype=torch.float64
        )
    alphas = np.linspace(-1.0, 1.0, 21) if alphas is None else np.asarray(alphas, dtype=np.float64)
    end = theta + direction.to(theta.device, theta.dtype)
    return interpolate(
        source, theta, end, data, alphas=alphas, loss_fn=loss_fn, space=space,
        recalibrate_bn=recalibrate_bn, recalibration_data=recalibration_data,
        recalibration_batches=recalibration_batches, batch_size=batch_size, device=device,
    )


def slice_2d(
    model: nn.Module,
    data: Data,
    *,
    directions: tuple[torch.Tensor, torch.Tensor] | None = None,
    alphas: Sequence[float] | np.ndarray | None = None,
    betas: Sequence[float] | np.ndarray | None = None,
    center: Mapping[str, torch.Tensor] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    space: ParamSpace | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    ignore_1d: bool = True,
    loss_fn: LossFn = F.cross_entropy,
    recalibrate_bn: bool = False,
    recalibration_data: torch.Tensor | Data | None = None,
    recalibration_batches: int | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> PlaneResult:
    """Loss on ``theta + alpha d1 + beta d2`` for two (default: random, filter-normalized) directions.

    As :func:`slice_1d`; default ``alphas`` and ``betas``: 21 points on [-1, 1]; the two random
    directions come from one generator, one after the other.
    """
    space, theta, source = _slice_setup(model, center, space, masks)
    if directions is None:
        gen = make_generator(seed, generator)
        directions = (
            random_direction(space, theta, generator=gen, ignore_1d=ignore_1d, dtype=torch.float64),
            random_direction(space, theta, generator=gen, ignore_1d=ignore_1d, dtype=torch.float64),
        )
    grid = np.linspace(-1.0, 1.0, 21)
    alphas = grid if alphas is None else np.asarray(alphas, dtype=np.float64)
    betas = grid if betas is None else np.asarray(betas, dtype=np.float64)
    d1, d2 = (d.to(theta.device, theta.dtype) for d in directions)
    sweep = _Sweep(
        source, data, loss_fn, batch_size, device, recalibrate_bn, recalibration_data,
        recalibration_batches,
    )
    surface = _Affine(sweep, [theta, theta + d1, theta + d2], space)
    loss = np.empty((len(betas), len(alphas)))
    acc = np.empty_like(loss)
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            surface.load([alpha, beta])
            loss[i, j], acc[i, j] = sweep.score()
    return PlaneResult(
        alphas=alphas, betas=betas, loss=loss, accuracy=acc, anchors={"center": (0.0, 0.0)},
        recalibrated=sweep.recalibrate,
    )


__all__ = [
    "PathResult",
    "PlaneResult",
    "default_alphas",
    "filter_normalize",
    "interpolate",
    "plane",
    "plane_coordinates",
    "project_to_plane",
    "random_direction",
    "recalibrate_bn",
    "slice_1d",
    "slice_2d",
]
