"""Tests of landscape.params: ParamSpace round trips, masks, state_dicts and BatchNorm buffers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape.params import ParamSpace, flatten_params, unflatten_params, weights_only


def _net(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3), nn.ReLU()]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.Flatten(), nn.Linear(4 * 6 * 6, 5)]
    return nn.Sequential(*layers)


def _masks(model: nn.Module, density: float = 0.5, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: torch.rand(p.shape, generator=gen) < density
        for n, p in model.named_parameters()
        if p.dim() > 1
    }


def test_flatten_unflatten_round_trip():
    model = _net()
    named = dict(model.named_parameters())
    vec = flatten_params(named)
    assert vec.numel() == sum(p.numel() for p in model.parameters())
    back = unflatten_params(vec, named)
    for name, p in named.items():
        assert torch.equal(back[name], p.detach())
    with pytest.raises(ValueError):
        unflatten_params(vec[:-1], named)


def test_space_size_counts_only_active_entries():
    model = _net()
    masks = _masks(model)
    space = ParamSpace(model, masks)
    expected = sum(int(m.sum()) for m in masks.values()) + sum(
        p.numel() for n, p in model.named_parameters() if n not in masks
    )
    assert space.size == expected
    assert space.names == tuple(n for n, _ in model.named_parameters())
    assert space.full_size == sum(p.numel() for p in model.parameters())
    for name, m in masks.items():
        assert torch.equal(space.masks[name], m)
        assert space.counts[name] == int(m.sum())


def test_round_trip_and_zero_off_mask():
    model = _net()
    masks = _masks(model)
    space = ParamSpace(model, masks)
    vec = torch.randn(space.size, dtype=torch.float64)
    tensors = space.from_vector(vec)
    for name, m in masks.items():
        assert torch.all(tensors[name][~m] == 0)
    assert torch.equal(space.to_vector(tensors), vec)
    # from a module: load, then read back; masked entries are zero in the module
    space.load_into(model, vec)
    assert torch.allclose(space.to_vector(model, dtype=torch.float64), vec, atol=1e-7)
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.all(p[~masks[name]] == 0)
    # split gives views per parameter
    parts = space.split(vec)
    assert sum(t.numel() for t in parts.values()) == space.size


def test_load_into_keeps_off_mask_when_asked():
    model = _net()
    masks = _masks(model)
    space = ParamSpace(model, masks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    space.load_into(model, space.zeros(), zero_off_mask=False)
    for name, m in masks.items():
        p = dict(model.named_parameters())[name]
        assert torch.equal(p[~m], before[name][~m])
        assert torch.all(p[m] == 0)


def test_state_dict_space_skips_batchnorm_buffers():
    model = _net(bn=True)
    masks = _masks(model)
    sd = model.state_dict()
    assert any(k.endswith("running_mean") for k in sd)
    from_module = ParamSpace(model, masks)
    from_state = ParamSpace(sd, masks)
    assert from_state.names == from_module.names
    assert from_state.size == from_module.size
    assert torch.equal(from_state.to_vector(sd), from_module.to_vector(model))


def test_include_filter_and_errors():
    model = _net()
    space = ParamSpace(model, include=weights_only)
    assert all(dict(model.named_parameters())[n].dim() > 1 for n in space.names)
    with pytest.raises(ValueError, match="masks name parameters"):
        ParamSpace(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        ParamSpace(model, {"0.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="length"):
        space.from_vector(torch.zeros(space.size + 1))


def test_distance_in_space():
    model = _net()
    masks = _masks(model)
    space = ParamSpace(model, masks)
    a = space.to_vector(model, dtype=torch.float64)
    b = a + 1.0
    assert space.distance(a, b) == pytest.approx(space.size**0.5)
    other = _net()
    space.load_into(other, b)
    assert space.distance(model, other) == pytest.approx(space.size**0.5, rel=1e-6)
