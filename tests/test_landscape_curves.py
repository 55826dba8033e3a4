"""Tests of landscape.curves (Bezier curves, barriers), plane projection and per-layer Hessian blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import masked_mlp
from torch import nn

from landscape import (
    ParamSpace,
    barrier_above_chord,
    barrier_max_minus_mean,
    bezier_point,
    evaluate,
    evaluate_curve,
    exact_hessian,
    interpolate,
    layer_operators,
    plane_coordinates,
    project_to_plane,
    train_bezier,
)


# --- barriers on known curves ----------------------------------------------------------------------
def test_two_barrier_definitions_on_a_known_curve():
    t = np.linspace(0.0, 1.0, 101)
    # L(t) = 1 + 2t + 0.5 sin(pi t): chord 1 + 2t, bump 0.5 at t = 0.5 above it
    loss = 1.0 + 2.0 * t + 0.5 * np.sin(np.pi * t)
    assert barrier_above_chord(t, loss) == pytest.approx(0.5)
    # max is where 2 + 0.5 pi cos(pi t) = 0 -> t* = arccos(-4 / pi) / pi ... |4/pi| > 1: no interior max,
    # so the maximum is the endpoint L(1) = 3 and the Frankle barrier is 3 - (1 + 3) / 2 = 1.
    assert barrier_max_minus_mean(t, loss) == pytest.approx(1.0)
    # equal endpoints: both definitions agree
    sym = 0.2 + 0.3 * np.sin(np.pi * t)
    assert barrier_above_chord(t, sym) == pytest.approx(0.3)
    assert barrier_max_minus_mean(t, sym) == pytest.approx(0.3)
    # a convex profile has no barrier above the chord, but max-minus-mean is half the endpoint gap
    convex = (t - 0.3) ** 2
    assert barrier_above_chord(t, convex) == pytest.approx(0.0, abs=1e-12)
    assert barrier_max_minus_mean(t, convex) == pytest.approx(0.49 - (0.09 + 0.49) / 2)
    with pytest.raises(ValueError):
        barrier_above_chord([0.1, 0.5, 1.0], [1.0, 1.0, 1.0])


def test_analysis_interpolate_barrier_is_the_chord_barrier():
    from analysis.interpolate import alpha_grid, barrier

    a = alpha_grid()
    loss = 2.0 - a + 0.7 * np.sin(np.pi * np.clip(a, 0, 1)) + 3.0 * (a > 1.0)
    assert barrier(a, loss) == pytest.approx(barrier_above_chord(a, loss)) == pytest.approx(0.7)


# --- Bezier curves ------------------------------------------------------------------------------
def _two_permuted_solutions():
    """A small tanh MLP trained on a toy problem, and the same network with its hidden units permuted:
    the same function (equal loss), but the straight line between them crosses a barrier."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=gen)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR-like quadrants
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    perm = torch.roll(torch.arange(64), 32)
    b = {"0.weight": a["0.weight"][perm], "0.bias": a["0.bias"][perm], "2.weight": a["2.weight"][:, perm],
         "2.bias": a["2.bias"].clone()}
    return model, a, b, (x, y)


def test_trained_bezier_curve_has_a_much_lower_barrier_than_the_line():
    model, a, b, data = _two_permuted_solutions()
    space = ParamSpace(model)
    va, vb = space.to_vector(a), space.to_vector(b)
    ts = np.linspace(0, 1, 21)
    line = interpolate(model, a, b, data, alphas=ts)
    assert line.loss[0] == pytest.approx(line.loss[-1], rel=1e-5)  # permutation: same function
    line_barrier = barrier_above_chord(ts, line.loss)
    assert line_barrier > 1.0
    curve = train_bezier(model, va, vb, data, space, steps=400, batch_size=64, lr=0.2, seed=0)
    on_curve = evaluate_curve(model, curve, data, ts)
    curve_barrier = barrier_above_chord(ts, on_curve.loss)
    assert curve_barrier < 0.1 * line_barrier
    # the untrained curve (bend at the midpoint) is the line itself
    mid = bezier_point(va, 0.5 * (va + vb), vb, 0.3)
    assert torch.allclose(mid, 0.7 * va + 0.3 * vb, atol=1e-6)
    # same seed, same bits
    again = train_bezier(model, va, vb, data, space, steps=20, batch_size=64, lr=0.05, seed=0)
    twice = train_bezier(model, va, vb, data, space, steps=20, batch_size=64, lr=0.05, seed=0)
    assert torch.equal(again.bend, twice.bend)


def test_curve_point_loss_matches_direct_evaluation():
    model, masks, data = masked_mlp()
    other, _, _ = masked_mlp(seed=1)
    with torch.no_grad():  # put the second point on the same mask
        for n, p in other.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    space = ParamSpace(model, masks)
    curve = train_bezier(model, space.to_vector(model), space.to_vector(other), data, space, steps=30, seed=1)
    t = 0.37
    result = evaluate_curve(model, curve, data, [t])
    direct = type(model)(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m
                           for m in model])
    direct.load_state_dict(model.state_dict())
    start, bend, end = (space.from_vector(v) for v in (curve.start, curve.bend, curve.end))
    with torch.no_grad():
        for n, p in direct.named_parameters():
            p.copy_((1 - t) ** 2 * start[n] + 2 * t * (1 - t) * bend[n] + t**2 * end[n])
    ref = evaluate(direct, data)
    assert result.loss[0] == pytest.approx(ref.loss, rel=1e-6)
    # the curve keeps masked weights at zero
    assert all(bool((p[~masks[n]] == 0).all()) for n, p in space.from_vector(curve.point(t)).items() if n in masks)


# --- plane projection ----------------------------------------------------------------------------
def test_projection_of_plane_points_and_off_plane_distance():
    model, masks, _ = masked_mlp()
    space = ParamSpace(model, masks)
    gen = torch.Generator().manual_seed(3)
    a, b, c = (space.randn(gen, dtype=torch.float64) for _ in range(3))
    coords = plane_coordinates(space, a, b, c)
    got = project_to_plane(space, a, b, c, [a, b, c, 0.25 * a + 0.5 * b + 0.25 * c])
    assert got[:3, :2] == pytest.approx(np.array([coords["a"], coords["b"], coords["c"]]), abs=1e-9)
    assert got[:, 2] == pytest.approx(np.zeros(4), abs=1e-9)
    mix = 0.5 * np.array(coords["b"]) + 0.25 * np.array(coords["c"])
    assert got[3, :2] == pytest.approx(mix, abs=1e-9)
    # a point moved off the plane by a known orthogonal amount
    normal = space.randn(gen, dtype=torch.float64)
    u, w = b - a, c - a
    for basis in (u, w - (w @ u) / (u @ u) * u):
        normal -= (normal @ basis) / (basis @ basis) * basis
    normal *= 0.5 * torch.linalg.vector_norm(u) / torch.linalg.vector_norm(normal)
    off = project_to_plane(space, a, b, c, [b + normal])
    assert off[0] == pytest.approx([1.0, 0.0, 0.5], abs=1e-9)


# --- per-layer Hessian blocks --------------------------------------------------------------------
def test_layer_blocks_equal_the_exact_hessians_diagonal_blocks():
    model, masks, data = masked_mlp()
    model = model.double()
    data = (data[0].double(), data[1])
    full = exact_hessian(model, F.cross_entropy, data, masks)
    space = ParamSpace(model, masks)
    ops = layer_operators(model, F.cross_entropy, data, masks, dtype=torch.float64)
    assert list(ops) == ["0", "2", "4"]
    assert sum(op.size for op in ops.values()) == space.size
    for layer, op in ops.items():
        idx = torch.cat([torch.arange(space.slices[n].start, space.slices[n].stop)
                         for n in space.names if n.rpartition(".")[0] == layer])
        block = full[idx][:, idx]
        dense = torch.stack([op.matvec(e) for e in torch.eye(op.size, dtype=torch.float64)], dim=1)
        assert torch.allclose(dense, block, atol=1e-10, rtol=1e-8), layer
