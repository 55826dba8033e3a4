"""Tests of landscape.interpolate: paths, BatchNorm recalibration, planes and filter-normalized slices."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from landscape.evaluate import evaluate
from landscape.interpolate import (
    PathResult,
    default_alphas,
    filter_normalize,
    interpolate,
    plane,
    plane_coordinates,
    random_direction,
    recalibrate_bn,
    slice_1d,
    slice_2d,
)
from landscape.params import ParamSpace


def _convnet(seed: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)]
    return nn.Sequential(*layers)


def _masks(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in model.named_parameters() if p.dim() > 1}


def _masked(model: nn.Module, masks) -> nn.Module:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    return model


def _data(n: int = 60, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _trained_bn(seed: int, x: torch.Tensor) -> nn.Module:
    model = _convnet(seed, bn=True)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(x * (1 + seed))  # distinct running stats per endpoint
    return model.eval()


def test_endpoints_equal_plain_evaluation_and_model_untouched():
    x, y = _data()
    a, b = _trained_bn(0, x), _trained_bn(1, x)
    before = copy.deepcopy(a.state_dict())
    calls = []
    hook = a.register_forward_pre_hook(lambda m, inp: calls.append(1))
    res = interpolate(a, a.state_dict(), b.state_dict(), (x, y), batch_size=25)
    hook.remove()
    assert isinstance(res, PathResult)
    np.testing.assert_array_equal(res.alphas, default_alphas())
    assert len(res.alphas) == 29 and res.alphas[0] == pytest.approx(-0.2)
    i0, i1 = int(np.argmin(abs(res.alphas))), int(np.argmin(abs(res.alphas - 1)))
    ea, eb = evaluate(a, (x, y)), evaluate(b, (x, y))
    assert res.loss[i0] == pytest.approx(ea.loss, rel=1e-5)
    assert res.accuracy[i0] == ea.accuracy
    assert res.loss[i1] == pytest.approx(eb.loss, rel=1e-5)
    assert res.accuracy[i1] == eb.accuracy
    # one forward pass over the data per point, on one copy; the caller's model is unchanged
    assert len(calls) == 29 * 3
    for k, t in a.state_dict().items():
        assert torch.equal(t, before[k])
    frame = res.to_frame()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["alpha", "loss", "accuracy"]


def test_buffers_are_interpolated():
    x, y = _data()
    a, b = _trained_bn(0, x), _trained_bn(1, x)
    mid = copy.deepcopy(a)
    mid.load_state_dict(
        {k: (a.state_dict()[k] + b.state_dict()[k]) / 2 if v.is_floating_point() else v for k, v in a.state_dict().items()}
    )
    res = interpolate(a, a.state_dict(), b.state_dict(), (x, y), alphas=[0.5])
    assert res.loss[0] == pytest.approx(evaluate(mid, (x, y)).loss, rel=1e-5)


def test_vector_endpoints_in_masked_space():
    x, y = _data()
    a = _convnet(0)
    masks = _masks(a)
    _masked(a, masks)
    b = _masked(_convnet(1), masks)
    space = ParamSpace(a, masks)
    va, vb = space.to_vector(a), space.to_vector(b)
    res = interpolate(a, va, vb, (x, y), alphas=[0.0, 1.0], space=space)
    assert res.loss[0] == pytest.approx(evaluate(a, (x, y)).loss, rel=1e-5)
    assert res.loss[1] == pytest.approx(evaluate(b, (x, y)).loss, rel=1e-5)
    with pytest.raises(ValueError, match="ParamSpace"):
        interpolate(a, va, vb, (x, y))


def test_recalibrate_bn_recomputes_exact_statistics():
    x, _ = _data(80)
    model = _trained_bn(0, x)
    with torch.no_grad():
        model[1].running_mean.fill_(5.0)
    model.train()
    recalibrate_bn(model, x, batch_size=20)
    assert model.training and model[1].momentum == 0.1
    with torch.no_grad():
        pre = model[0](x)
    # equal batches: the cumulative average of batch means is the mean over all data
    assert torch.allclose(model[1].running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert int(model[1].num_batches_tracked) == 4


def test_interpolation_with_bn_recalibration():
    x, y = _data()
    xtr = _data(100, seed=3)[0]
    a, b = _trained_bn(0, x), _trained_bn(1, x)
    plain = interpolate(a, a.state_dict(), b.state_dict(), (x, y), alphas=[0.0, 0.5, 1.0])
    recal = interpolate(
        a, a.state_dict(), b.state_dict(), (x, y), alphas=[0.0, 0.5, 1.0],
        recalibrate_bn=True, recalibration_data=(xtr, torch.zeros(100, dtype=torch.long)),
        batch_size=20,
    )
    assert recal.recalibrated and not plain.recalibrated
    ref = recalibrate_bn(copy.deepcopy(b), xtr, batch_size=20)
    assert recal.loss[2] == pytest.approx(evaluate(ref, (x, y)).loss, rel=1e-5)
    assert not np.allclose(recal.loss, plain.loss)
    with pytest.raises(ValueError, match="recalibration_data"):
        interpolate(a, a.state_dict(), b.state_dict(), (x, y), recalibrate_bn=True)


def test_plane_through_three_points_hits_them():
    x, y = _data()
    models = [_convnet(s) for s in range(3)]
    states = [m.state_dict() for m in models]
    space = ParamSpace(models[0])
    anchors = plane_coordinates(space, *states)
    (ga, ha) = anchors["c"]
    res = plane(models[0], *states, (x, y), alphas=[0.0, 1.0, ga], betas=[0.0, ha])
    assert res.loss.shape == (2, 3)
    assert res.anchors["c"] == pytest.approx((ga, ha))
    assert res.loss[0, 0] == pytest.approx(evaluate(models[0], (x, y)).loss, rel=1e-5)
    assert res.loss[0, 1] == pytest.approx(evaluate(models[1], (x, y)).loss, rel=1e-5)
    assert res.loss[1, 2] == pytest.approx(evaluate(models[2], (x, y)).loss, rel=1e-5)
    frame = res.to_frame()
    assert list(frame.columns) == ["alpha", "beta", "loss", "accuracy"] and len(frame) == 6
    default = plane(models[0], *states, (x, y), grid_size=3)
    assert default.loss.shape == (3, 3)
    with pytest.raises(ValueError, match="collinear"):
        plane(models[0], states[0], states[1], states[1], (x, y))


def test_filter_normalized_direction():
    model = _masked(_convnet(0), masks := _masks(_convnet(0)))
    space = ParamSpace(model, masks)
    d = random_direction(space, model, seed=4)
    parts = space.from_vector(d)
    params = dict(model.named_parameters())
    for name, t in parts.items():
        if name in masks:
            assert torch.all(t[~masks[name]] == 0)
        p = params[name].detach()
        if p.dim() <= 1:
            assert torch.all(t == 0)  # biases ignored, as in Li et al.
            continue
        assert torch.allclose(t.reshape(t.shape[0], -1).norm(dim=1), p.reshape(p.shape[0], -1).norm(dim=1), rtol=1e-5)
    kept = filter_normalize(space, space.randn(torch.Generator().manual_seed(0)), model, ignore_1d=False)
    bias = space.from_vector(kept)["0.bias"]
    assert float(bias.norm()) == pytest.approx(float(params["0.bias"].detach().norm()), rel=1e-5)
    assert not torch.equal(random_direction(space, model, seed=5), d)


def test_slices_center_on_the_model():
    x, y = _data()
    model = _masked(_convnet(0), masks := _masks(_convnet(0)))
    res = slice_1d(model, (x, y), masks=masks, alphas=[-0.5, 0.0, 0.5])
    assert res.loss[1] == pytest.approx(evaluate(model, (x, y)).loss, rel=1e-5)
    surf = slice_2d(model, (x, y), masks=masks, alphas=[0.0, 1.0], betas=[0.0, 0.5, 1.0])
    assert surf.loss.shape == (3, 2)
    assert surf.loss[0, 0] == pytest.approx(evaluate(model, (x, y)).loss, rel=1e-5)
