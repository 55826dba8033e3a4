"""Tests of sparse_training.distributions and sparse_training.masks: per-layer budgets, ERK, masking invariants."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq
from torch import nn

from sparse_training.distributions import active_counts, check_sparsity, layer_densities
from sparse_training.errors import UserError
from sparse_training.init import initialize
from sparse_training.masks import Masks, maskable_names, random_layer_mask
from sparse_training.models import build_model

SPARSITIES = (0.5, 0.9, 0.95, 0.99)
_MODEL_CACHE: dict[str, nn.Module] = {}


def model_named(name: str) -> nn.Module:
    """Registry models are built once per module; mask construction never modifies them.

    VGG-16 keeps its 13 conv + 1 linear structure at a quarter width (drawing 15M-entry masks is slow)."""
    if name not in _MODEL_CACHE:
        _MODEL_CACHE[name] = build_model(name, width=0.25 if name == "vgg16" else 1.0)
    return _MODEL_CACHE[name]


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Oracle for the maskable weights: every >=2-D weight of a Linear/Conv module, by parameter name."""
    return {n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2}


def erk_oracle(shapes: dict[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Water-filling ERK: d_l = min(1, c * raw_l) with c found by root finding so that sum d_l n_l = budget."""
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    size = {n: math.prod(s) for n, s in shapes.items()}
    budget = (1 - sparsity) * sum(size.values())

    def excess(c: float) -> float:
        return sum(min(1.0, c * raw[n]) * size[n] for n in shapes) - budget

    c = brentq(excess, 0.0, 1e9, xtol=1e-14, rtol=1e-14, maxiter=500)
    return {n: min(1.0, c * raw[n]) for n in shapes}


# ---------------------------------------------------------------------------
# distributions


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("name", ["lenet5", "lenet300", "mlp", "vgg16"])
def test_random_masks_meet_budget_per_layer_and_total(name, distribution, sparsity):
    model = model_named(name)
    shapes = weight_shapes(model)
    masks = Masks.random(model, sparsity, distribution, seed=1)
    assert list(masks) == list(shapes)
    densities = layer_densities(shapes, sparsity, distribution)
    realised = masks.active_counts()
    for n, s in shapes.items():
        assert masks[n].shape == s and masks[n].dtype == torch.bool
        assert realised[n] == round(densities[n] * math.prod(s)), n
    total = sum(math.prod(s) for s in shapes.values())
    assert abs(masks.num_active() - (1 - sparsity) * total) <= len(shapes)
    assert abs(masks.sparsity() - sparsity) <= len(shapes) / total
    if distribution == "uniform":
        for n, s in shapes.items():
            assert abs(realised[n] - (1 - sparsity) * math.prod(s)) <= 0.5


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("name", ["lenet5", "lenet300", "mlp", "vgg16"])
def test_erk_matches_water_filling_oracle(name, sparsity):
    shapes = weight_shapes(model_named(name))
    got = layer_densities(shapes, sparsity, "erk")
    want = erk_oracle(shapes, sparsity)
    for n in shapes:
        assert got[n] == pytest.approx(want[n], rel=1e-9, abs=1e-12), n
    assert all(0 < d <= 1.0 for d in got.values())
    size = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(got[n] * size[n] for n in shapes) / sum(size.values()) == pytest.approx(1 - sparsity, rel=1e-12)


def test_erk_redistributes_on_lenet5_at_half_density():
    shapes = weight_shapes(model_named("lenet5"))
    dens = layer_densities(shapes, 0.5, "erk")
    capped = [n for n, d in dens.items() if d == 1.0]
    # hand: raw conv1 = 17/150, fc3 = 94/840; unconstrained scale = 22095/723 makes both exceed 1
    assert set(capped) == {"conv1.weight", "fc3.weight"}
    assert max(dens.values()) <= 1.0
    size = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(dens[n] * size[n] for n in shapes) == pytest.approx(0.5 * sum(size.values()), rel=1e-12)
    # capped layers really would have exceeded 1 at the final scale of the free layers
    scale = dens["fc1.weight"] / (sum(shapes["fc1.weight"]) / size["fc1.weight"])
    for n in capped:
        assert scale * sum(shapes[n]) / size[n] > 1.0
    # the uncapped layers absorbed the leftover budget: their densities rose above the naive ERK value
    naive = 0.5 * sum(size.values()) / sum(sum(s) for s in shapes.values())
    assert scale > naive


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_erk_ratio_between_uncapped_layers(sparsity):
    shapes = weight_shapes(model_named("lenet5"))
    dens = layer_densities(shapes, sparsity, "erk")
    a, b = "conv2.weight", "fc1.weight"
    assert dens[a] < 1 and dens[b] < 1
    ratio_raw = (sum(shapes[a]) / math.prod(shapes[a])) / (sum(shapes[b]) / math.prod(shapes[b]))
    assert dens[a] / dens[b] == pytest.approx(ratio_raw, rel=1e-12)
    # conv: (16+6+5+5)/2400 vs fc: (120+256)/30720
    assert ratio_raw == pytest.approx((32 / 2400) / (376 / 30720))


def test_erk_high_sparsity_caps_nothing():
    shapes = {"a": (100, 100), "b": (10, 1000)}
    dens = layer_densities(shapes, 0.99, "erk")
    # hand: raw a = 200/10000, raw b = 1010/10000; scale = 200 / 1210
    assert dens["a"] == pytest.approx(0.02 * 200 / 1210)
    assert dens["b"] == pytest.approx(0.101 * 200 / 1210)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_first_layer_dense_keeps_layer0_and_meets_target(distribution, sparsity):
    model = model_named("lenet5")
    shapes = weight_shapes(model)
    masks = Masks.random(model, sparsity, distribution, first_layer_dense=True, seed=0)
    first = next(iter(shapes))
    assert first == "conv1.weight"
    assert bool(masks[first].all())
    total = sum(math.prod(s) for s in shapes.values())
    assert abs(masks.num_active() - (1 - sparsity) * total) <= len(shapes)
    if distribution == "uniform":
        # the other layers share one density, lower than 1 - sparsity because layer 0 took its share
        rest = [masks.densities()[n] for n in shapes if n != first]
        d = ((1 - sparsity) * total - 150) / (total - 150)
        assert all(abs(r - d) < 1.0 / 840 for r in rest)
        assert d < 1 - sparsity


def test_first_layer_dense_impossible_budget_is_user_error():
    # lenet300's first layer holds 235,200 of 266,200 weights: 90% sparsity cannot keep it dense
    with pytest.raises(UserError, match="dense"):
        Masks.random(model_named("lenet300"), 0.9, first_layer_dense=True)


def test_active_counts_rounding_and_clamping():
    shapes = {"a": (3, 3), "b": (10,)}
    assert active_counts(shapes, {"a": 0.5, "b": 0.26}) == {"a": round(4.5), "b": 3}
    assert active_counts(shapes, {"a": 1.0 + 1e-9, "b": 0.0}) == {"a": 9, "b": 0}


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "abc", None])
def test_check_sparsity_refuses(bad):
    with pytest.raises(UserError, match="sparsity"):
        check_sparsity(bad)


def test_check_sparsity_accepts():
    assert check_sparsity(0) == 0.0
    assert check_sparsity("0.95") == 0.95
    assert check_sparsity(0.999) == 0.999


def test_unknown_distribution_is_user_error():
    with pytest.raises(UserError, match="distribution"):
        layer_densities({"a": (4, 4)}, 0.5, "pareto")


# ---------------------------------------------------------------------------
# maskable names


def test_maskable_names_exclude_biases_batchnorm_prelu():
    model = build_model("mlp", input_shape=(8,), depth=2, hidden=5, batchnorm=True, activation="prelu")
    names = maskable_names(model)
    assert names == ["layers.0.weight", "layers.1.weight", "head.weight"]
    params = dict(model.named_parameters())
    # the excluded parameters do exist in the model
    assert "norms.0.weight" in params and "acts.0.weight" in params and "layers.0.bias" in params
    assert not any(n.startswith(("norms.", "acts.")) or n.endswith("bias") for n in names)


@pytest.mark.parametrize("name", ["lenet5", "vgg16", "resnet18", "mnist1d-cnn"])
def test_maskable_names_match_weight_oracle(name):
    model = build_model(name, width=0.25)
    assert maskable_names(model) == list(weight_shapes(model))


def test_maskable_names_of_bare_layer():
    assert maskable_names(nn.Linear(3, 2)) == ["weight"]
    masks = Masks.random(nn.Linear(10, 10), 0.5, seed=0)
    assert masks.active_counts() == {"weight": 50}


# ---------------------------------------------------------------------------
# Masks object


def test_random_masks_reproducible_by_seed():
    model = model_named("lenet5")
    a = Masks.random(model, 0.9, "erk", seed=3)
    b = Masks.random(model, 0.9, "erk", seed=3)
    c = Masks.random(model, 0.9, "erk", seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert a.active_counts() == c.active_counts()
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    d, e = Masks.random(model, 0.9, generator=g1), Masks.random(model, 0.9, generator=g2)
    assert all(torch.equal(d[n], e[n]) for n in d)


def test_random_layer_mask_exact_count_and_uniform_positions():
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(20)
    for _ in range(2000):
        m = random_layer_mask(torch.Size([4, 5]), 5, g)
        assert int(m.sum()) == 5
        hits += m.reshape(-1).float()
    # each position is active with probability 1/4: 500 expected, binomial sd ~19.4
    assert (hits - 500).abs().max() < 100


def test_apply_and_mask_grads_zero_exactly_the_masked_entries():
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(6,), num_classes=3, depth=2, hidden=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = Masks.random(model, 0.6, seed=0)
    masks.apply(model)
    for n, p in model.named_parameters():
        if n in masks:
            assert torch.equal(p[~masks[n]], torch.zeros(int((~masks[n]).sum())))
            assert torch.equal(p[masks[n]], before[n][masks[n]])
        else:
            assert torch.equal(p, before[n])  # biases untouched
    model(torch.randn(4, 6)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    masks.mask_grads(model)
    for n, p in model.named_parameters():
        expected = grads[n] * masks[n] if n in masks else grads[n]
        assert torch.equal(p.grad, expected)


def test_masks_bookkeeping():
    model = build_model("lenet300", input_shape=(20,), width=0.1)
    shapes = weight_shapes(model)
    dense = Masks.dense(model)
    assert dense.sparsity() == 0.0 and dense.numel() == sum(math.prod(s) for s in shapes.values())
    masks = Masks.random(model, 0.75, seed=0)
    assert masks.numel() == dense.numel()
    for n, s in shapes.items():
        assert masks.densities()[n] == pytest.approx(masks.active_counts()[n] / math.prod(s))
    assert masks.num_active() == sum(int(masks[n].sum()) for n in shapes)
    saved = masks.as_dict()
    first = next(iter(saved))
    saved[first][...] = False  # a copy: the Masks are unchanged
    assert masks[first].any()
    with pytest.raises(ValueError):
        masks[first] = torch.ones(3, 3, dtype=torch.bool)
    masks.check_compatible(model)
    with pytest.raises(UserError):
        masks.check_compatible(build_model("lenet300", input_shape=(21,), width=0.1))


# ---------------------------------------------------------------------------
# the key invariant: nothing revives a masked weight

OPTIMIZERS = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.1), set()),
    "momentum-wd": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3), {"momentum_buffer"}),
    "adam-wd": (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2), {"exp_avg", "exp_avg_sq"}),
    "adamw-amsgrad": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
                      {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=1e-2), {"square_avg"}),
    "rmsprop-centered-momentum": (lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True),
                                  {"square_avg", "momentum_buffer", "grad_avg"}),
    "adagrad": (lambda p: torch.optim.Adagrad(p, lr=5e-2), {"sum"}),
}


def _train(model, masks, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        masks.mask_grads(model)
        opt.step()
        masks.apply(model)


def _state_tensors(opt, param, shape):
    return {k: v for k, v in opt.state[param].items() if torch.is_tensor(v) and v.shape == shape}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_masked_training_keeps_weights_and_state_zero(opt_name):
    make_opt, expected_state = OPTIMIZERS[opt_name]
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(12,), num_classes=3, depth=2, hidden=16)
    masks = Masks.random(model, 0.7, "erk", seed=0)
    initialize(model, masks, scheme="sparse", seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    opt = make_opt(model.parameters())
    _train(model, masks, opt, x, y, 30)
    params = dict(model.named_parameters())
    for n in masks:
        p, m = params[n], masks[n]
        assert torch.equal(p[~m], torch.zeros_like(p[~m])), n
        assert not torch.equal(p[m], start[n][m]), n  # the active weights did train
        states = _state_tensors(opt, p, m.shape)
        assert set(states) == expected_state, (n, set(states))
        for key, value in states.items():
            assert torch.equal(value[~m], torch.zeros_like(value[~m])), (n, key)
            assert value[m].abs().sum() > 0, (n, key)

    # drop a third of each layer's active weights, as a pruning step would
    old = {n: masks[n].clone() for n in masks}
    for n in masks:
        flat = masks[n].reshape(-1).clone()
        active = flat.nonzero().reshape(-1)
        flat[active[: len(active) // 3]] = False
        masks[n] = flat.reshape(masks[n].shape)
    saved = {n: {k: v.clone() for k, v in _state_tensors(opt, params[n], masks[n].shape).items()} for n in masks}
    masks.apply(model)
    masks.mask_optimizer_state(opt, model)
    for n in masks:
        m, dropped = masks[n], old[n] & ~masks[n]
        assert dropped.sum() > 0
        assert torch.equal(params[n][~m], torch.zeros_like(params[n][~m]))
        for key, value in _state_tensors(opt, params[n], m.shape).items():
            assert torch.equal(value[~m], torch.zeros_like(value[~m])), (n, key)
            assert torch.equal(value[m], saved[n][key][m]), (n, key)  # the kept entries are untouched
    # and a few more steps do not revive the dropped weights
    _train(model, masks, opt, x, y, 5)
    for n in masks:
        m = masks[n]
        assert torch.equal(params[n][~m], torch.zeros_like(params[n][~m]))
        for key, value in _state_tensors(opt, params[n], m.shape).items():
            assert torch.equal(value[~m], torch.zeros_like(value[~m])), (n, key)


def test_without_state_masking_momentum_revives_dropped_weights():
    """Negative control: the state masking above is what keeps dropped weights at zero."""
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(12,), num_classes=3, depth=1, hidden=16)
    masks = Masks.random(model, 0.5, seed=0)
    initialize(model, masks, seed=0)
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, masks, opt, x, y, 10)
    n = "layers.0.weight"
    new = masks[n].clone()
    new[masks[n]] = torch.arange(int(masks[n].sum())) % 2 == 0
    masks[n] = new
    masks.apply(model)  # no mask_optimizer_state
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    masks.mask_grads(model)
    opt.step()  # momentum alone moves the dropped weights
    assert dict(model.named_parameters())[n].detach()[~new].abs().sum() > 0
