"""Sparsity distributions: how a global sparsity target is spread over layers (uniform, ERK)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .errors import UserError

DISTRIBUTIONS = ("uniform", "erk")


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as float if it lies in [0, 1), else raise a UserError."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise UserError(f"sparsity must be a number in [0, 1), not {sparsity!r}.") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise UserError(f"sparsity must lie in [0, 1), got {sparsity}.")
    return s


def _erk_raw(shape: Sequence[int]) -> float:
    # Erdős–Rényi-Kernel: (sum of dimensions) / (product of dimensions).
    return sum(shape) / math.prod(shape)


def layer_densities(shapes: Mapping[str, Sequence[int]], sparsity: float,
                    distribution: str = "uniform", dense_layers: Sequence[str] = ()) -> dict[str, float]:
    """Per-layer densities whose weighted mean equals ``1 - sparsity``.

    ``uniform`` gives every layer the same density; ``erk`` makes density proportional to
    (sum of dims)/(prod of dims) and redistributes when a layer would exceed density 1.
    Layers named in ``dense_layers`` are kept at density 1 and the others absorb the budget.
    """
    sparsity = check_sparsity(sparsity)
    if distribution not in DISTRIBUTIONS:
        raise UserError(f"unknown distribution '{distribution}'; choose one of {', '.join(DISTRIBUTIONS)}.")
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    budget = (1.0 - sparsity) * total
    dense = set(dense_layers)
    budget -= sum(sizes[n] for n in dense)
    free = [n for n in shapes if n not in dense]
    if budget <= 0 or not free:
        raise UserError(
            f"sparsity {sparsity} cannot be met with layers {sorted(dense)} kept dense; lower it or drop the dense-layer option."
        )
    raw = {n: (1.0 if distribution == "uniform" else _erk_raw(shapes[n])) for n in free}
    densities = {n: 1.0 for n in dense}
    # Redistribute: fix layers that would exceed density 1, then rescale the rest.
    while True:
        scale = budget / sum(raw[n] * sizes[n] for n in free)
        over = [n for n in free if raw[n] * scale > 1.0]
        if not over:
            break
        for n in over:
            densities[n] = 1.0
            budget -= sizes[n]
            free.remove(n)
        if not free:
            break
    for n in free:
        densities[n] = raw[n] * scale
    return {n: densities[n] for n in shapes}


def active_counts(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]) -> dict[str, int]:
    """Number of active weights per layer: density times size, rounded (so within one weight per layer)."""
    return {n: int(min(math.prod(s), max(0, round(densities[n] * math.prod(s))))) for n, s in shapes.items()}
