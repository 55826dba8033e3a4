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

The forward kernel reports whether its input held a NaN or an infinity; ATen lets a NaN win its window,
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
def _window_rows(plane, p, h, w, ho, wo):  # pragma: no cover - compiled
    """Flat offsets of window row ``p`` of ``plane``: its top and bottom input rows, and its output row."""
    top = (plane * h + 2 * p) * w
    return top, top + w, (plane * ho + p) * wo


@numba.njit(**_KW)
def _forward(x, out, code):  # pragma: no cover - compiled
    """``out = max_pool2d(relu(x), 2)``; ``code`` = the winning corner (0-3, row-major) + 4 where the
    maximum is positive. ``x`` is (N, C, H, W), C-contiguous; odd last rows/columns are dropped.
    Returns False when ``x`` holds a NaN or an infinity (then ``out`` and ``code`` are not ATen's)."""
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    xf, of, cf = x.ravel(), out.ravel(), code.ravel()
    zero = x.dtype.type(0.0)
    one, two, four = np.uint8(1), np.uint8(2), np.uint8(4)
    for plane in range(n * c):
        for p in range(ho):
            s0, s1, t = _window_rows(plane, p, h, w, ho, wo)
            for q in range(wo):
                a, b = xf[s0 + 2 * q], xf[s0 + 2 * q + 1]
                cc, d = xf[s1 + 2 * q], xf[s1 + 2 * q + 1]
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
                of[t + q] = best
                low = np.uint8(lower)
                cf[t + q] = (low * (two + np.uint8(right_bottom)) + (one - low) * np.uint8(right_top)
                             + four * np.uint8(best > zero))
    bad = False
    for i in range(xf.size):
        v = xf[i]
        bad |= (v - v) != (v - v)  # NaN exactly where v is NaN or infinite
    return not bad


@numba.njit(**_KW)
def _backward(grad, code, grad_x):  # pragma: no cover - compiled
    """The gradient of :func:`_forward` into ``grad_x`` (N, C, H, W), every element written."""
    n, c, h, w = grad_x.shape
    ho, wo = h // 2, w // 2
    gf, cf, xf = grad.ravel(), code.ravel(), grad_x.ravel()
    zero = grad_x.dtype.type(0.0)
    if h % 2 or w % 2:
        xf[:] = zero  # the dropped last row/column
    for plane in range(n * c):
        for p in range(ho):
            s0, s1, t = _window_rows(plane, p, h, w, ho, wo)
            for q in range(wo):
                k = cf[t + q]
                v = zero + gf[t + q]  # +0.0 where the incoming gradient is -0.0, as ATen's
                xf[s0 + 2 * q] = v if k == 4 else zero
                xf[s0 + 2 * q + 1] = v if k == 5 else zero
                xf[s1 + 2 * q] = v if k == 6 else zero
                xf[s1 + 2 * q + 1] = v if k == 7 else zero


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
