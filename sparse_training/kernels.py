"""Compiled CPU kernels (numba): LeNet-5's ReLU + 2x2 max-pool in one pass each way, and convolutions over
the active weights of a mask only (at the end of this module).

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


# --- convolutions over the active weights only (sparse_training.models.sparse_kernels) -----------------
#
# A stride-1, unpadded 2-D convolution with mask m computes, for each active weight (o, c, ky, kx),
# out[n, o, y, x] += w * in[n, c, y + ky, x + kx]. Over the flattened (H*W) plane of channel c that is
# one shifted multiply-add: out_wide[n, o, p] += w * in_flat[n, c, ky*W + kx + p] for p < L, where
# out_wide keeps rows W wide (its last W - WO columns of each row are junk, dropped afterwards) and
# L = (HO - 1) * W + WO. Each tap is then one contiguous loop that LLVM vectorizes without reassociating
# a sum, so the results do not depend on the vector width. A layer with 5% of its weights active does
# about 5% of the dense multiply-adds (plus the junk columns).


@numba.njit(**_KW)
def _conv_taps(mask, width):  # pragma: no cover - compiled
    """The active weights of a conv mask (O, C, KH, KW) as taps, in row-major order: output channel,
    input channel, offset ``ky * width + kx`` in a flattened input plane, and flat index in the weight."""
    n_out, n_in, kh, kw = mask.shape
    flat_mask = mask.reshape(-1)
    count = 0
    for i in range(flat_mask.shape[0]):
        count += flat_mask[i] != 0
    out_ch, in_ch = np.empty(count, np.int64), np.empty(count, np.int64)
    offset, flat = np.empty(count, np.int64), np.empty(count, np.int64)
    k = 0
    for i in range(flat_mask.shape[0]):
        if flat_mask[i] != 0:
            kx = i % kw
            ky = (i // kw) % kh
            out_ch[k], in_ch[k] = i // (kw * kh * n_in), (i // (kw * kh)) % n_in
            offset[k], flat[k] = ky * width + kx, i
            k += 1
    return out_ch, in_ch, offset, flat


@numba.njit(**_KW)
def _sparse_conv_forward(x, out_ch, in_ch, offset, flat, weight, bias, out, width):  # pragma: no cover
    """``out`` (N, O, HO, WO) = ``bias`` + the taps of ``weight`` (flat) applied to ``x`` (N, C, H*W);
    the taps of one output channel are summed in the order given, then the bias is added."""
    n_batch, n_out, ho, wo = out.shape
    length = (ho - 1) * width + wo
    acc = np.empty((n_out, length), dtype=out.dtype)
    for n in range(n_batch):
        acc[:] = 0.0
        xn = x[n]
        for k in range(out_ch.shape[0]):
            a = acc[out_ch[k]]
            s = xn[in_ch[k], offset[k]:offset[k] + length]
            wk = weight[flat[k]]
            for p in range(length):
                a[p] += wk * s[p]
        for o in range(n_out):
            b = bias[o]
            for y in range(ho):
                row, a = out[n, o, y], acc[o, y * width:y * width + wo]
                for q in range(wo):
                    row[q] = a[q] + b


@numba.njit(**_KW)
def _sparse_conv_backward(x, grad, out_ch, in_ch, offset, flat, weight, width, grad_x, need_x, grad_w,
                          grad_b):  # pragma: no cover - compiled
    """Gradients of :func:`_sparse_conv_forward`: ``grad_w`` (flat, zero where no tap is), ``grad_b``
    and, with ``need_x``, ``grad_x`` (N, C, H*W), every element written. Sums over the batch are kept
    per position and summed over positions at the end (no reassociated float sums)."""
    n_batch, n_out, ho, wo = grad.shape
    length = (ho - 1) * width + wo
    n_taps = out_ch.shape[0]
    wide = np.zeros((n_out, length), dtype=grad.dtype)  # junk columns stay zero: they add nothing below
    acc = np.zeros((n_taps, length), dtype=grad.dtype)
    acc_b = np.zeros((n_out, length), dtype=grad.dtype)
    for n in range(n_batch):
        for o in range(n_out):
            for y in range(ho):
                src, dst = grad[n, o, y], wide[o, y * width:y * width + wo]
                for q in range(wo):
                    dst[q] = src[q]
            a, g = acc_b[o], wide[o]
            for p in range(length):
                a[p] += g[p]
        xn = x[n]
        if need_x:
            gx = grad_x[n]
            gx[:] = 0.0
        for k in range(n_taps):
            g = wide[out_ch[k]]
            s = xn[in_ch[k], offset[k]:offset[k] + length]
            a = acc[k]
            for p in range(length):
                a[p] += g[p] * s[p]
            if need_x:
                d = gx[in_ch[k], offset[k]:offset[k] + length]
                wk = weight[flat[k]]
                for p in range(length):
                    d[p] += wk * g[p]
    grad_w[:] = 0.0
    for k in range(n_taps):
        total = grad_w.dtype.type(0.0)
        for p in range(length):
            total += acc[k, p]
        grad_w[flat[k]] = total
    for o in range(n_out):
        total = grad_b.dtype.type(0.0)
        for p in range(length):
            total += acc_b[o, p]
        grad_b[o] = total


def conv_taps(mask: torch.Tensor, width: int) -> tuple[np.ndarray, ...]:
    """The active weights of a conv ``mask`` (O, C, KH, KW, bool) for inputs ``width`` pixels wide:
    (output channel, input channel, offset ``ky * width + kx``, flat index), row-major order."""
    return _conv_taps(mask.detach().contiguous().numpy(), width)


def sparse_conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          taps: tuple[np.ndarray, ...]) -> torch.Tensor:
    """``F.conv2d(x, weight * mask, bias)`` (stride 1, no padding) over the ``taps`` of the mask only
    (:func:`conv_taps`); ``x`` and ``weight`` are float32/float64 CPU tensors of one dtype. Weights
    outside the taps are never read."""
    x = x.detach().contiguous()
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    out = torch.empty((n, o, h - kh + 1, w - kw + 1), dtype=x.dtype)
    b = bias.detach().contiguous() if bias is not None else torch.zeros(o, dtype=x.dtype)
    _sparse_conv_forward(x.view(n, c, h * w).numpy(), *taps, weight.detach().contiguous().view(-1).numpy(),
                         b.numpy(), out.numpy(), w)
    return out


def sparse_conv2d_backward(x: torch.Tensor, weight: torch.Tensor, taps: tuple[np.ndarray, ...],
                           grad: torch.Tensor, need_x: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(grad_x or None, grad_weight, grad_bias)`` of :func:`sparse_conv2d_forward`; ``grad_weight`` is
    zero outside the taps (the masked gradient)."""
    x, grad = x.detach().contiguous(), grad.detach().contiguous()
    n, c, h, w = x.shape
    grad_x = torch.empty((n, c, h * w) if need_x else (1, 1, 1), dtype=x.dtype)
    grad_w = torch.empty(weight.shape, dtype=x.dtype)
    grad_b = torch.empty(weight.shape[0], dtype=x.dtype)
    _sparse_conv_backward(x.view(n, c, h * w).numpy(), grad.numpy(), *taps,
                          weight.detach().contiguous().view(-1).numpy(), w, grad_x.numpy(), need_x,
                          grad_w.view(-1).numpy(), grad_b.numpy())
    return (grad_x.view(n, c, h, w) if need_x else None), grad_w, grad_b
