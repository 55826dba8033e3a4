"""Lanczos eigenvalues (largest/smallest, full reorthogonalization), SLQ spectral density, Hutchinson trace."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy.linalg import eigh_tridiagonal

from .hessian import SymmetricOperator

Which = Literal["LA", "SA", "both"]


def make_generator(seed: int | None = 0, generator: torch.Generator | None = None) -> torch.Generator:
    """``generator`` if given, else a new CPU generator seeded with ``seed`` (no global RNG)."""
    if generator is not None:
        return generator
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


def _gaussian(n: int, gen: torch.Generator, like: SymmetricOperator) -> torch.Tensor:
    # Drawn on the generator's device in float64, so a seed gives the same start on CPU and CUDA.
    v = torch.randn(n, generator=gen, device=gen.device, dtype=torch.float64)
    return v.to(device=like.device, dtype=like.dtype)


def _rademacher(n: int, gen: torch.Generator, like: SymmetricOperator) -> torch.Tensor:
    bits = torch.randint(0, 2, (n,), generator=gen, device=gen.device)
    return (bits * 2 - 1).to(device=like.device, dtype=like.dtype)


class _Basis:
    """The Lanczos vectors, stored in blocks of ``block`` rows allocated as the run needs them.

    Memory never exceeds ``(rows + block) * n`` elements of ``dtype`` (not ``max_iter * n`` up
    front), and the vectors may live in a cheaper dtype or on another device (e.g. float32 on the
    CPU while the model is on the GPU); projections move only the short coefficient vectors and
    one length-``n`` vector between devices.
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device, block: int) -> None:
        self.n, self.dtype, self.device, self.block = n, dtype, torch.device(device), max(1, int(block))
        self.blocks: list[torch.Tensor] = []
        self.rows = 0
        self.peak_bytes = 0

    def append(self, v: torch.Tensor) -> None:
        """Store a unit vector as the next row."""
        if self.rows == len(self.blocks) * self.block:
            self.blocks.append(torch.empty(self.block, self.n, dtype=self.dtype, device=self.device))
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
        full, pos = divmod(self.rows, self.block)
        self.blocks[full][pos].copy_(v)
        self.rows += 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the allocated blocks."""
        return sum(b.numel() * b.element_size() for b in self.blocks)

    def _views(self):
        for i, b in enumerate(self.blocks):
            rows = min(self.block, self.rows - i * self.block)
            if rows > 0:
                yield b[:rows]

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` minus its projection on the span of the rows (one classical Gram-Schmidt pass)."""
        wb = w.to(device=self.device, dtype=self.dtype)
        correction = None
        for view in self._views():
            part = view.T @ (view @ wb)
            correction = part if correction is None else correction.add_(part)
        if correction is None:
            return w
        return w - correction.to(device=w.device, dtype=w.dtype)

    def combine(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``coeffs.T @ rows`` for ``coeffs`` of shape ``(rows, k)``: Ritz vectors, block by block."""
        coeffs = coeffs.to(device=self.device, dtype=self.dtype)
        out = torch.zeros(coeffs.shape[1], self.n, dtype=self.dtype, device=self.device)
        for i, view in enumerate(self._views()):
            out.addmm_(coeffs[i * self.block : i * self.block + view.shape[0]].T, view)
        return out


@dataclass(frozen=True)
class _Tridiagonal:
    alphas: np.ndarray  # (m,) diagonal of T
    betas: np.ndarray  # (m-1,) off-diagonal; zeros where the recurrence restarted
    last_beta: float  # norm of the residual after the last step
    basis: _Basis  # the m orthonormal Lanczos vectors
    matvecs: int


def _lanczos_run(
    operator: SymmetricOperator,
    v0: torch.Tensor,
    max_steps: int,
    *,
    gen: torch.Generator,
    restart: bool,
    stop: Callable[[np.ndarray, np.ndarray, float], bool] | None = None,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
    block: int = 32,
) -> _Tridiagonal:
    """Lanczos with full (twice classical Gram-Schmidt) reorthogonalization.

    On breakdown (an invariant subspace was found) the recurrence restarts from a fresh random
    vector orthogonal to the basis when ``restart`` (T becomes block diagonal), else stops.
    ``stop(alphas, betas, last_beta)`` is asked after every step. The basis grows by blocks
    (see :class:`_Basis`); the current vector stays in the operator's precision.
    """
    n = operator.size
    max_steps = min(max_steps, n)
    eps = torch.finfo(operator.dtype).eps
    basis = _Basis(
        n,
        operator.dtype if basis_dtype is None else basis_dtype,
        operator.device if basis_device is None else torch.device(basis_device),
        min(block, max_steps),
    )
    v = v0 / torch.linalg.vector_norm(v0)
    prev: torch.Tensor | None = None  # the previous vector, for the three-term recurrence
    alphas: list[float] = []
    betas: list[float] = []
    anorm = 0.0
    last_beta = 0.0
    matvecs = 0
    m = 0
    while m < max_steps:
        basis.append(v)
        w = operator.matvec(v)
        matvecs += 1
        alpha = float(torch.dot(v, w))
        # three-term recurrence first (in full precision), then two passes against the whole basis
        w = w - alpha * v
        if prev is not None and betas:
            w = w - betas[-1] * prev
        w = basis.orthogonalize(basis.orthogonalize(w))
        alphas.append(alpha)
        beta = float(torch.linalg.vector_norm(w))
        anorm = max(anorm, abs(alpha), beta, betas[-1] if betas else 0.0)
        m += 1
        breakdown = beta <= 100 * eps * max(anorm, 1e-300)
        last_beta = 0.0 if breakdown else beta
        a, b = np.asarray(alphas), np.asarray(betas)
        if m == max_steps or (stop is not None and stop(a, b, last_beta)):
            break
        prev = v
        if breakdown:
            if not restart:
                break
            w = _gaussian(n, gen, operator)
            w = basis.orthogonalize(basis.orthogonalize(w))
            nrm = float(torch.linalg.vector_norm(w))
            if nrm <= 1e-8:  # the basis already spans the space
                break
            v = w / nrm
            betas.append(0.0)
        else:
            v = w / beta
            betas.append(beta)
    return _Tridiagonal(
        alphas=np.asarray(alphas),
        betas=np.asarray(betas[: len(alphas) - 1]),
        last_beta=last_beta,
        basis=basis,
        matvecs=matvecs,
    )


def _ritz(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if alphas.size == 1:
        return alphas.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alphas, betas)


def _converged(theta: np.ndarray, s: np.ndarray, sel: np.ndarray, last_beta: float, tol: float) -> np.ndarray:
    """Whether each selected Ritz pair has residual ``< tol * max(|theta|, ||T||)``."""
    res = np.abs(last_beta * s[-1, sel])
    return res < tol * np.maximum(np.abs(theta[sel]), np.abs(theta).max())


def _wanted(theta: np.ndarray, k: int, which: Which) -> np.ndarray:
    """Indices (into ascending ``theta``) of the wanted Ritz values, in output order."""
    m = theta.size
    top = np.arange(m - 1, max(m - k, 0) - 1, -1)
    bottom = np.arange(0, min(k, m))
    if which == "LA":
        return top
    if which == "SA":
        return bottom
    return np.unique(np.concatenate([top, bottom]))[::-1]  # all wanted, descending


@dataclass(frozen=True)
class EigenResult:
    """Ritz pairs of a symmetric operator from Lanczos.

    ``eigenvalues`` are descending for ``which="LA"``, ascending for ``"SA"``, and for ``"both"``
    descending with the k largest first and the k smallest last. ``residuals`` are the norms
    ``||H v - lambda v||`` (from the Lanczos relation), ``converged`` says whether each is below
    ``tol * max(|lambda|, ||T||)`` (``||T||`` the largest Ritz value in magnitude, an estimate of
    ``||H||``), so an eigenvalue at or near zero can converge. ``basis_bytes`` is the most memory
    the Lanczos basis held.
    """

    eigenvalues: torch.Tensor  # (k,) float64, CPU
    eigenvectors: torch.Tensor | None  # (k, n) on the operator's device, unit norm
    residuals: torch.Tensor  # (k,) float64, CPU
    matvecs: int
    iterations: int
    converged: torch.Tensor  # (k,) bool, CPU
    which: str = "LA"
    tol: float = 1e-4
    basis_bytes: int = 0

    @property
    def relative_residuals(self) -> torch.Tensor:
        """``residuals / |eigenvalues|``."""
        return self.residuals / self.eigenvalues.abs().clamp_min(1e-300)

    @property
    def all_converged(self) -> bool:
        """True when every wanted pair met the tolerance."""
        return bool(self.converged.all())

    def to_frame(self) -> pd.DataFrame:
        """One row per eigenvalue: rank, eigenvalue, residual, relative residual, converged."""
        return pd.DataFrame(
            {
                "rank": np.arange(len(self.eigenvalues)),
                "eigenvalue": self.eigenvalues.numpy(),
                "residual": self.residuals.numpy(),
                "relative_residual": self.relative_residuals.numpy(),
                "converged": self.converged.numpy(),
            }
        )


def lanczos(
    operator: SymmetricOperator,
    k: int = 10,
    which: Which = "LA",
    *,
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = True,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
) -> EigenResult:
    """The k largest (``"LA"``), k smallest (``"SA"``) or both k (``"both"``) algebraic eigenvalues.

    Lanczos with full reorthogonalization from a seeded Gaussian start; after every step the Ritz
    values of the tridiagonal matrix are checked and the run stops once every wanted pair has
    ``||H v - lambda v|| < tol * max(|lambda|, ||T||)`` (the residual norm from the Lanczos relation,
    exact up to rounding with full reorthogonalization; the ``||T||`` floor lets eigenvalues near
    zero converge). Memory: the basis grows with the iterations actually run, in blocks of 32
    vectors of length ``n`` (``EigenResult.basis_bytes``), never ``max_iter`` vectors up front.

    Args:
        operator: a :class:`SymmetricOperator` (e.g. :class:`HessianOperator`).
        k: pairs wanted at each requested end.
        which: ``"LA"``, ``"SA"`` or ``"both"``.
        tol: relative residual tolerance.
        max_iter: most matvecs (default ``min(n, max(300, 10 k))``).
        seed, generator: the start vector's randomness (a CPU generator seeded with ``seed``
            unless ``generator`` is given).
        return_eigenvectors: also form the Ritz vectors (``k x n``).
        basis_dtype, basis_device: where the Lanczos vectors are kept (default: the operator's);
            e.g. ``torch.float32`` halves a float64 basis, ``"cpu"`` keeps it off the GPU. The
            Ritz vectors are returned on the operator's device and dtype either way.

    A single start vector sees each repeated eigenvalue once (in exact arithmetic); multiplicities
    show only after a breakdown restart.
    """
    if which not in ("LA", "SA", "both"):
        raise ValueError(f"which must be 'LA', 'SA' or 'both', got {which!r}.")
    n = operator.size
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    k = min(k, n)
    n_wanted = min(n, 2 * k if which == "both" else k)
    max_iter = min(n, max(300, 10 * k)) if max_iter is None else min(int(max_iter), n)
    if max_iter < n_wanted:
        raise ValueError(f"max_iter={max_iter} is below the {n_wanted} eigenvalues wanted.")
    gen = make_generator(seed, generator)

    def stop(alphas: np.ndarray, betas: np.ndarray, last_beta: float) -> bool:
        if alphas.size < n_wanted:
            return False
        theta, s = _ritz(alphas, betas)
        sel = _wanted(theta, k, which)
        return bool(np.all(_converged(theta, s, sel, last_beta, tol)))

    td = _lanczos_run(
        operator, _gaussian(n, gen, operator), max_iter, gen=gen, restart=True, stop=stop,
        basis_dtype=basis_dtype, basis_device=basis_device,
    )
    theta, s = _ritz(td.alphas, td.betas)
    sel = _wanted(theta, k, which)
    values = theta[sel]
    residuals = np.abs(td.last_beta * s[-1, sel])
    converged = _converged(theta, s, sel, td.last_beta, tol)
    vectors = None
    if return_eigenvectors:
        vectors = td.basis.combine(torch.as_tensor(s[:, sel]))
        vectors = vectors.to(device=operator.device, dtype=operator.dtype)
    return EigenResult(
        eigenvalues=torch.as_tensor(values, dtype=torch.float64),
        eigenvectors=vectors,
        residuals=torch.as_tensor(residuals, dtype=torch.float64),
        matvecs=td.matvecs,
        iterations=int(td.alphas.size),
        converged=torch.as_tensor(converged),
        which=which,
        tol=tol,
        basis_bytes=td.basis.peak_bytes,
    )


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature estimate of the eigenvalue density of a symmetric operator.

    ``density`` on ``grid`` is the Gaussian-smoothed (width ``sigma``) average over probes of the
    quadrature measures ``sum_j weights[p, j] * delta(t - nodes[p, j])``; it integrates to about 1.
    Rows of ``nodes``/``weights`` are probes (padded with zero weight where a probe stopped early).
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray  # (probes, steps)
    weights: np.ndarray  # (probes, steps), each row sums to 1
    sigma: float
    matvecs: int

    def moment(self, power: int) -> float:
        """Quadrature estimate of ``trace(H^power) / n`` (exact for each probe up to power < 2 steps)."""
        return float(np.mean(np.sum(self.weights * self.nodes**power, axis=1)))

    def to_frame(self) -> pd.DataFrame:
        """Tidy table with columns ``eigenvalue`` (the grid) and ``density``."""
        return pd.DataFrame({"eigenvalue": self.grid, "density": self.density})


def spectral_density(
    operator: SymmetricOperator,
    *,
    num_probes: int = 10,
    num_steps: int = 80,
    sigma: float | None = None,
    grid: np.ndarray | None = None,
    grid_size: int = 2001,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

    Each probe is a normalized Rademacher vector; ``num_steps`` Lanczos steps (fully
    reorthogonalized) give nodes (Ritz values) and weights (squared first components).

    Args:
        num_probes: independent probes averaged.
        num_steps: Lanczos steps per probe (matvecs per probe).
        sigma: Gaussian smoothing width (default 1% of the span of all nodes).
        grid: where to evaluate the density (default ``grid_size`` points over the nodes' span
            padded by 6 sigma on each side).
        seed, generator: the probes' randomness.
        basis_dtype, basis_device: where each probe's Lanczos vectors are kept (see :func:`lanczos`).
    """
    if num_probes < 1 or num_steps < 1:
        raise ValueError("num_probes and num_steps must be at least 1.")
    gen = make_generator(seed, generator)
    n = operator.size
    steps = min(num_steps, n)
    nodes = np.zeros((num_probes, steps))
    weights = np.zeros((num_probes, steps))
    matvecs = 0
    for p in range(num_probes):
        td = _lanczos_run(
            operator, _rademacher(n, gen, operator), steps, gen=gen, restart=False,
            basis_dtype=basis_dtype, basis_device=basis_device,
        )
        theta, s = _ritz(td.alphas, td.betas)
        nodes[p, : theta.size] = theta
        weights[p, : theta.size] = s[0] ** 2
        matvecs += td.matvecs
    real = weights > 0
    lo, hi = float(nodes[real].min()), float(nodes[real].max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    if grid is None:
        grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, grid_size)
    grid = np.asarray(grid, dtype=np.float64)
    z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernel = np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    density = kernel @ weights.reshape(-1) / num_probes
    return SpectralDensity(
        grid=grid, density=density, nodes=nodes, weights=weights, sigma=float(sigma), matvecs=matvecs
    )


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of ``trace(H)`` with its standard error and per-probe samples."""

    trace: float
    std_error: float
    samples: np.ndarray
    matvecs: int


def hutchinson_trace(
    operator: SymmetricOperator,
    num_probes: int = 100,
    *,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate ``mean_p z_p^T H z_p`` of the trace with Rademacher probes ``z_p``."""
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}.")
    gen = make_generator(seed, generator)
    samples = np.empty(num_probes)
    for p in range(num_probes):
        z = _rademacher(operator.size, gen, operator)
        samples[p] = float(torch.dot(z, operator.matvec(z)))
    std_error = float(samples.std(ddof=1) / math.sqrt(num_probes)) if num_probes > 1 else math.nan
    return TraceEstimate(
        trace=float(samples.mean()), std_error=std_error, samples=samples, matvecs=num_probes
    )
