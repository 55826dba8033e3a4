"""Compiled CPU kernels (numba) for LeNet-5's ReLU + 2x2 max-pool, forward and backward in one pass each.

ATen's CPU ``max_pool2d`` also finds arg-max indices (int64) and its backward scatters into a zeroed
tensor; as a chain of tensor ops the same work takes about a dozen passes over the activations. These
loops read and write each element once and give ATen's results bit for bit (see
:mod:`sparse_training.models`, ``fused_relu_pools``):

* ``relu`` keeps NaN and -0.0 and turns every negative into +0.0, as ``torch.relu`` does;
* a window's maximum is its first in row-major order (a later element must be strictly greater);
* the gradient goes to that element where the maximum is positive (ReLU's backward zeroes it where
  the output is <= 0), as ``0.0 + g``: ATen's gradient is zero-filled and then accumulated into, so a
  -0.0 there becomes +0.0; every other element gets +0.0.

The forward kernel reports whether a window held a NaN or an infinity; ATen lets a NaN win its window,
which these comparisons do not, so the caller then takes ATen's own forward (see
:func:`relu_max_pool2x2_forward`). Importing this module imports numba; kernels compile on first use
and are cached next to this file.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F

_KW = dict(nogil=True, cache=True, boundscheck=False)


@numba.njit(**_KW)
def _forward(x, out, code):  # pragma: no cover - compiled
    """``out = max_pool2d(relu(x), 2)``; ``code`` = the winning corner (0-3, row-major) + 4 where the
    maximum is positive. ``x`` is (N, C, H, W), C-contiguous; odd last rows/columns are dropped.
    Returns False when a window holds a NaN or an infinity (then ``out`` and ``code`` are not ATen's).

    The loops index one row at a time (views, non-negative offsets) and the NaN test is an OR, not a
    float sum, so that LLVM vectorizes the inner loop (about 4x the speed of flat offsets here)."""
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    x3, o3, c3 = x.reshape(n * c, h, w), out.reshape(n * c, ho, wo), code.reshape(n * c, ho, wo)
    zero = x.dtype.type(0.0)
    bad = False
    for plane in range(n * c):
        for p in range(ho):
            top_row, bottom_row, o, k = x3[plane, 2 * p], x3[plane, 2 * p + 1], o3[plane, p], c3[plane, p]
            for q in range(wo):
                a, b = top_row[2 * q], top_row[2 * q + 1]
                cc, d = bottom_row[2 * q], bottom_row[2 * q + 1]
                s = (a - a) + (b - b) + (cc - cc) + (d - d)
                bad |= s != s  # NaN exactly where the window holds a NaN or an infinity
                a = zero if a < zero else a  # torch.relu: -0.0 and NaN stay as they are
                b = zero if b < zero else b
                cc = zero if cc < zero else cc
                d = zero if d < zero else d
                right_top = b > a  # strictly greater: a tie goes to the earlier element
                top = b if right_top else a
                right_bottom = d > cc
                bottom = d if right_bottom else cc
                lower = bottom > top
                best = bottom if lower else top
                o[q] = best
                corner = np.uint8(2) + np.uint8(right_bottom) if lower else np.uint8(right_top)
                k[q] = corner + (np.uint8(4) if best > zero else np.uint8(0))
    return not bad


@numba.njit(**_KW)
def _backward(grad, code, grad_x):  # pragma: no cover - compiled
    """The gradient of :func:`_forward` into ``grad_x`` (N, C, H, W), every element written; one input
    row at a time, which LLVM vectorizes (about 4x the speed of writing both rows in one loop here)."""
    n, c, h, w = grad_x.shape
    ho, wo = h // 2, w // 2
    zero = grad_x.dtype.type(0.0)
    if h % 2 or w % 2:
        grad_x[:] = zero  # the dropped last row/column
    x3, g3, c3 = grad_x.reshape(n * c, h, w), grad.reshape(n * c, ho, wo), code.reshape(n * c, ho, wo)
    for plane in range(n * c):
        for p in range(ho):
            g, k = g3[plane, p], c3[plane, p]
            for row in range(2):
                r = x3[plane, 2 * p + row]
                left = np.uint8(4 + 2 * row)  # the code of this row's left corner, when positive
                for q in range(wo):
                    v = zero + g[q]  # +0.0 where the incoming gradient is -0.0, as ATen's
                    r[2 * q] = v if k[q] == left else zero
                    r[2 * q + 1] = v if k[q] == left + np.uint8(1) else zero


def relu_max_pool2x2_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max_pool2d(relu(x), 2), code)`` for a 4-D float32/float64 CPU tensor; ``code`` (uint8, the
    output's shape) is what :func:`relu_max_pool2x2_backward` needs. Where ``x`` holds a NaN or an
    infinity the values and the routing are ATen's own (its kernels run instead)."""
    x = x.detach().contiguous()
    n, c, h, w = x.shape
    out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype)
    code = torch.empty((n, c, h // 2, w // 2), dtype=torch.uint8)
    if _forward(x.numpy(), out.numpy(), code.numpy()):
        return out, code
    out, idx = F.max_pool2d(F.relu(x), 2, return_indices=True)
    row, col = idx.div(w, rounding_mode="floor"), idx.remainder(w)
    code = (row.remainder(2) * 2 + col.remainder(2) + 4 * ~(out <= 0)).to(torch.uint8)
    return out, code


def relu_max_pool2x2_backward(grad: torch.Tensor, code: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """The gradient with respect to the input of :func:`relu_max_pool2x2_forward`, ATen's bit for bit."""
    grad = grad.detach().contiguous()
    grad_x = torch.empty(in_shape, dtype=grad.dtype)
    _backward(grad.numpy(), code.numpy(), grad_x.numpy())
    return grad_x
