"""Tests of sparse_training.updaters: schedules, drop/grow rules against brute force, pruning, RigL and SET."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparse_training.config import TrainConfig
from sparse_training.distributions import active_counts, layer_densities
from sparse_training.errors import UserError
from sparse_training.masks import Masks
from sparse_training.models import build_model
from sparse_training.updaters import (
    DynamicSparse,
    GradualPruner,
    cosine_fraction,
    cubic_sparsity,
    drop_smallest,
    grow_by_gradient,
    grow_random,
    keep_largest,
    make_updater,
)

# ---------------------------------------------------------------------------
# schedules


def zhu_gupta(t: float, t0: float, t1: float, s_i: float, s_f: float) -> float:
    return s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3


@pytest.mark.parametrize("step,expected", [
    (100, 0.0),                    # start: still the initial sparsity
    (350, 0.9 - 0.9 * 0.75**3),     # a quarter of the way
    (600, 0.9 - 0.9 * 0.5**3),      # half way: 0.7875
    (850, 0.9 - 0.9 * 0.25**3),
    (1099, zhu_gupta(1099, 100, 1100, 0.0, 0.9)),
])
def test_cubic_sparsity_matches_zhu_gupta(step, expected):
    assert cubic_sparsity(step, 100, 1100, 0.9) == pytest.approx(expected, abs=1e-12)


def test_cubic_sparsity_endpoints_and_clamping():
    assert cubic_sparsity(600, 100, 1100, 0.9) == pytest.approx(0.7875)
    assert cubic_sparsity(1100, 100, 1100, 0.9) == 0.9  # exactly the final value
    assert cubic_sparsity(5000, 100, 1100, 0.9) == 0.9
    assert cubic_sparsity(0, 100, 1100, 0.9) == 0.0
    assert cubic_sparsity(0, 100, 1100, 0.9, initial=0.5) == 0.5
    assert cubic_sparsity(600, 100, 1100, 0.9, initial=0.5) == pytest.approx(zhu_gupta(600, 100, 1100, 0.5, 0.9))
    values = [cubic_sparsity(t, 100, 1100, 0.95) for t in range(0, 1200, 7)]
    assert all(a <= b for a, b in zip(values[:-1], values[1:]))


@pytest.mark.parametrize("step,factor", [(0, 1.0), (250, (1 + math.cos(math.pi / 4)) / 2), (500, 0.5),
                                         (1000 / 3, 0.75), (1000, 0.0), (4000, 0.0)])
def test_cosine_fraction(step, factor):
    assert cosine_fraction(step, 1000, 0.3) == pytest.approx(0.3 * factor, abs=1e-12)


# ---------------------------------------------------------------------------
# drop and grow rules against brute force


def _weight_and_mask(seed: int, shape=(13, 17), density=0.4):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 3  # distinct magnitudes, both signs
    mask = torch.rand(shape, generator=g) < density
    return w, mask


def brute_drop(weight: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    active = [(abs(weight.reshape(-1)[i].item()), i) for i in range(mask.numel()) if mask.reshape(-1)[i]]
    out = mask.clone().reshape(-1)
    for _, i in sorted(active)[:n]:
        out[i] = False
    return out.reshape(mask.shape)


def brute_top(score: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    cand = [(score.reshape(-1)[i].item(), i) for i in range(candidates.numel()) if candidates.reshape(-1)[i]]
    out = torch.zeros(candidates.numel(), dtype=torch.bool)
    for _, i in sorted(cand, reverse=True)[:n]:
        out[i] = True
    return out.reshape(candidates.shape)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [0, 1, 7, 40])
def test_drop_smallest_matches_brute_force(seed, n):
    w, mask = _weight_and_mask(seed)
    out = drop_smallest(w, mask, n)
    assert torch.equal(out, brute_drop(w, mask, n))
    assert int(out.sum()) == int(mask.sum()) - n
    assert not (out & ~mask).any()  # never revives


def test_drop_smallest_ignores_small_inactive_weights():
    w = torch.tensor([0.0, 0.1, -5.0, 0.2, 3.0, -0.05])
    mask = torch.tensor([False, True, True, False, True, True])
    assert drop_smallest(w, mask, 2).tolist() == [False, False, True, False, True, False]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 9, 50])
def test_grow_by_gradient_matches_brute_force(seed, n):
    _, mask = _weight_and_mask(seed)
    grad = torch.randn(mask.shape, generator=torch.Generator().manual_seed(100 + seed))
    grown = grow_by_gradient(grad, ~mask, n)
    assert torch.equal(grown, brute_top(grad.abs(), ~mask, n))
    assert int(grown.sum()) == n and not (grown & mask).any()
    assert torch.equal(keep_largest(grad, ~mask, n), brute_top(grad, ~mask, n))


def test_grow_random_is_reproducible_subset_of_inactive():
    _, mask = _weight_and_mask(0)
    inactive = ~mask
    a = grow_random(None, inactive, 30, torch.Generator().manual_seed(1))
    b = grow_random(None, inactive, 30, torch.Generator().manual_seed(1))
    c = grow_random(None, inactive, 30, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for m in (a, c):
        assert int(m.sum()) == 30 and not (m & mask).any()


# ---------------------------------------------------------------------------
# gradual magnitude pruning


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(20,), num_classes=4, depth=2, hidden=32)


def perturb(model: nn.Module, masks: Masks, seed: int) -> None:
    """Stand-in for training between updates: moves weights so their magnitude order changes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    masks.apply(model)


def momentum_optimizer(model: nn.Module, masks: Masks) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(16, 20), torch.randint(0, 4, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    for p in model.parameters():  # a dense, nonzero momentum everywhere
        p.grad = torch.randn_like(p)
    opt.step()
    masks.apply(model)
    return opt


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_gradual_pruner_follows_cubic_schedule_layerwise(distribution):
    model = small_mlp()
    masks = Masks.dense(model)
    opt = momentum_optimizer(model, masks)
    pruner = GradualPruner(final=0.9, start=10, end=50, every=10, distribution=distribution)
    params = dict(model.named_parameters())
    shapes = {n: tuple(masks[n].shape) for n in masks}
    total = masks.numel()
    updates = []
    for step in range(0, 70):
        if not pruner.is_update_step(step):
            continue
        updates.append(step)
        before = {n: masks[n].clone() for n in masks}
        weights = {n: params[n].detach().clone() for n in masks}
        info = pruner.update(step, model, masks, opt, grad_fn=lambda: pytest.fail("pruning needs no gradients"))
        target = cubic_sparsity(step, 10, 50, 0.9)
        assert info["target_sparsity"] == pytest.approx(target)
        expected = active_counts(shapes, layer_densities(shapes, target, distribution))
        assert masks.active_counts() == expected
        assert abs(masks.sparsity() - target) * total <= len(masks)
        for n in masks:
            assert not (masks[n] & ~before[n]).any()  # masks only shrink
            # survivors are the largest-magnitude previously active weights of the layer
            assert torch.equal(masks[n], brute_top(weights[n].abs(), before[n], expected[n]))
            p = params[n].detach()
            assert torch.equal(p[~masks[n]], torch.zeros_like(p[~masks[n]]))
            buf = opt.state[params[n]]["momentum_buffer"]
            assert torch.equal(buf[~masks[n]], torch.zeros_like(buf[~masks[n]]))
            assert (buf[masks[n]] != 0).all()
        perturb(model, masks, seed=step)
    assert updates == [10, 20, 30, 40, 50]
    # ends exactly at the target
    assert masks.active_counts() == active_counts(shapes, layer_densities(shapes, 0.9, distribution))
    if distribution == "uniform":
        assert masks.active_counts() == {n: round(0.1 * masks[n].numel()) for n in masks}
    assert abs(masks.sparsity() - 0.9) * total <= len(masks)


def test_gradual_pruner_is_update_step():
    pruner = GradualPruner(final=0.5, start=5, end=23, every=5)
    assert [s for s in range(40) if pruner.is_update_step(s)] == [5, 10, 15, 20, 23]


def test_gradual_pruner_global_keeps_globally_largest():
    model = small_mlp(1)
    with torch.no_grad():  # give the layers very different scales so global differs from per-layer
        model.layers[0].weight.mul_(10)
        model.head.weight.mul_(0.1)
    masks = Masks.dense(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = GradualPruner(final=0.8, start=0, end=30, every=10, scope="global")
    params = dict(model.named_parameters())
    total = masks.numel()
    for step in range(1, 31):
        if not pruner.is_update_step(step):
            continue
        before = torch.cat([masks[n].reshape(-1) for n in masks])
        flat_w = torch.cat([params[n].detach().abs().reshape(-1) for n in masks])
        pruner.update(step, model, masks, opt, grad_fn=dict)
        after = torch.cat([masks[n].reshape(-1) for n in masks])
        keep = round((1 - cubic_sparsity(step, 0, 30, 0.8)) * total)
        assert int(after.sum()) == keep
        assert not (after & ~before).any()
        # brute force: the survivors are exactly the `keep` largest magnitudes among previously active
        assert torch.equal(after, brute_top(flat_w, before, keep))
        assert flat_w[after].min() > flat_w[before & ~after].max()
        perturb(model, masks, seed=step)
    counts = masks.active_counts()
    assert counts["layers.0.weight"] / masks["layers.0.weight"].numel() > 0.2 > counts["head.weight"] / 128
    assert masks.sparsity() == pytest.approx(0.8, abs=1 / total)


def test_gradual_pruner_global_counts_active_zero_weights():
    """Active weights that are exactly zero must still outrank pruned ones (ties at score 0)."""
    model = small_mlp(2)
    masks = Masks.dense(model)
    pruner = GradualPruner(final=0.5, start=0, end=1, every=1, scope="global")
    params = dict(model.named_parameters())
    # first prune half the network, then zero 40% of the surviving weights while they stay active
    pruner.update(1, model, masks, torch.optim.SGD(model.parameters(), lr=0.1), dict)
    with torch.no_grad():
        for n in masks:
            active = masks[n].reshape(-1).nonzero().reshape(-1)
            params[n].view(-1)[active[: int(0.4 * len(active))]] = 0.0
    before = masks.num_active()
    second = GradualPruner(final=0.6, start=0, end=1, every=1, scope="global")
    second.update(1, model, masks, torch.optim.SGD(model.parameters(), lr=0.1), dict)
    keep = round(0.4 * masks.numel())
    assert before > keep
    assert masks.num_active() == keep  # 60% sparsity, not more


def test_gradual_pruner_first_layer_dense():
    model = small_mlp()
    masks = Masks.dense(model)
    pruner = GradualPruner(final=0.5, start=0, end=1, every=1, first_layer_dense=True)
    pruner.update(1, model, masks, torch.optim.SGD(model.parameters(), lr=0.1), dict)
    assert bool(masks["layers.0.weight"].all())  # 640 of 1,792 weights
    assert abs(masks.sparsity() - 0.5) * masks.numel() <= len(masks)
    # the other two layers share the remaining 256 active weights uniformly: density 256 / 1152
    assert masks.active_counts()["layers.1.weight"] == round(1024 * 256 / 1152)


def test_gradual_pruner_global_honours_first_layer_dense():
    """--prune-scope global with --first-layer-dense: the first layer stays dense, the rest are ranked together."""
    model = small_mlp(3)
    with torch.no_grad():  # a small first layer would be pruned hardest by a global ranking
        model.layers[0].weight.mul_(0.01)
    masks = Masks.dense(model)
    params = dict(model.named_parameters())
    flat_w = torch.cat([params[n].detach().abs().reshape(-1) for n in list(masks)[1:]])
    pruner = GradualPruner(final=0.5, start=0, end=1, every=1, scope="global", first_layer_dense=True)
    pruner.update(1, model, masks, torch.optim.SGD(model.parameters(), lr=0.1), dict)
    assert bool(masks["layers.0.weight"].all())
    assert abs(masks.sparsity() - 0.5) * masks.numel() <= 1
    keep = round(0.5 * masks.numel()) - masks["layers.0.weight"].numel()
    rest = torch.cat([masks[n].reshape(-1) for n in list(masks)[1:]])
    assert torch.equal(rest, brute_top(flat_w, torch.ones_like(rest), keep))
    with pytest.raises(UserError, match="first layer kept dense"):
        GradualPruner(final=0.9, start=0, end=1, every=1, scope="global", first_layer_dense=True).update(
            1, model, Masks.dense(model), torch.optim.SGD(model.parameters(), lr=0.1), dict)


def test_global_prune_scope_refuses_a_distribution():
    from sparse_training.trainer import validate

    base = dict(model="mlp", dataset="digits", method="prune", sparsity=0.9, prune_scope="global")
    validate(TrainConfig(**base))  # the default distribution is accepted (and has no effect)
    with pytest.raises(UserError, match="--distribution uniform would be ignored"):
        validate(TrainConfig(**base, distribution="uniform"))
    validate(TrainConfig(**{**base, "prune_scope": "layer"}, distribution="uniform"))


# ---------------------------------------------------------------------------
# RigL and SET


def fixed_grads(masks: Masks, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(masks[n].shape, generator=g) for n in masks}


def test_rigl_update_drops_smallest_grows_largest_gradient():
    model = small_mlp()
    masks = Masks.random(model, 0.7, seed=0)
    masks.apply(model)
    opt = momentum_optimizer(model, masks)
    params = dict(model.named_parameters())
    rigl = DynamicSparse(every=10, end=100, alpha=0.3, grow=grow_by_gradient)
    grads = fixed_grads(masks, 5)
    calls = []

    def grad_fn():
        calls.append(1)
        return grads

    old = {n: masks[n].clone() for n in masks}
    weights = {n: params[n].detach().clone() for n in masks}
    momenta = {n: opt.state[params[n]]["momentum_buffer"].clone() for n in masks}
    counts = masks.active_counts()
    info = rigl.update(10, model, masks, opt, grad_fn)
    assert calls == [1]
    fraction = cosine_fraction(10, 100, 0.3)
    assert info["drop_fraction"] == pytest.approx(fraction)
    assert masks.active_counts() == counts
    total_grown = 0
    for n in masks:
        n_swap = int(fraction * counts[n])
        kept = brute_drop(weights[n], old[n], n_swap)
        grown = brute_top(grads[n].abs(), ~kept, n_swap)
        assert torch.equal(masks[n], kept | grown), n
        p, buf = params[n].detach(), opt.state[params[n]]["momentum_buffer"]
        fresh, regrown = grown & ~old[n], grown & old[n]
        assert torch.equal(p[fresh], torch.zeros(int(fresh.sum())))  # newly grown weights start at zero
        assert torch.equal(buf[fresh], torch.zeros(int(fresh.sum())))  # ... with zero momentum
        assert torch.equal(p[kept | regrown], weights[n][kept | regrown])  # kept/regrown weights untouched
        assert torch.equal(buf[kept | regrown], momenta[n][kept | regrown])
        assert torch.equal(p[~masks[n]], torch.zeros_like(p[~masks[n]]))
        assert torch.equal(buf[~masks[n]], torch.zeros_like(buf[~masks[n]]))
        total_grown += int(fresh.sum())
    assert info["grown"] == total_grown > 0


def test_rigl_regrown_connection_keeps_its_weight_and_momentum():
    """A connection dropped and regrown in the same update keeps its value and momentum (rigl_tf2's
    generic_mask_update zeroes only connections that were inactive); the old code zeroed it."""
    layer = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 5.0, 3.0, 0.0]]))
    masks = Masks({"weight": torch.tensor([[True, True, True, False]])})
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer.weight.grad = torch.ones_like(layer.weight)
    opt.step()  # momentum buffer 1 everywhere; weights move by -0.1
    masks.apply(layer)
    masks.mask_optimizer_state(opt, layer)
    before = layer.weight.detach().clone()
    assert before[0, 0].item() == pytest.approx(0.4)
    # one swap (int(0.34 * 3) = 1): the smallest active weight (index 0) is dropped, and it also has
    # the largest dense gradient, so it is grown straight back
    rigl = DynamicSparse(every=1, end=10, alpha=0.34, schedule=lambda step: 0.34)
    grads = {"weight": torch.tensor([[9.0, 0.0, 0.0, 1.0]])}
    info = rigl.update(1, layer, masks, opt, lambda: grads)
    assert torch.equal(masks["weight"], torch.tensor([[True, True, True, False]]))
    assert torch.equal(layer.weight.detach(), before)
    assert torch.equal(opt.state[layer.weight]["momentum_buffer"], torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert info["grown"] == 0 and info["dropped"] == 0
    # a truly new connection still starts at zero with zero momentum
    grads = {"weight": torch.tensor([[0.0, 0.0, 0.0, 9.0]])}
    rigl.update(2, layer, masks, opt, lambda: grads)
    assert torch.equal(masks["weight"], torch.tensor([[False, True, True, True]]))
    assert layer.weight[0, 3].item() == 0.0
    assert opt.state[layer.weight]["momentum_buffer"][0, 3].item() == 0.0


def test_lr_scaled_drop_fraction_follows_learning_rate():
    from sparse_training.trainer import lr_at
    from sparse_training.updaters import make_updater

    cfg = TrainConfig(method="rigl", lr=0.05, drop_fraction=0.3, drop_schedule="lr", update_end=1.0,
                      update_every=100)
    total = 11719
    rigl = make_updater(cfg, "rigl", total, 0, lr=lambda t: lr_at(cfg, t, total))
    for step in (100, 5000, 11700):
        assert rigl.fraction(step) == pytest.approx(0.3 * lr_at(cfg, step, total) / 0.05)
    assert rigl.is_update_step(11700) and not rigl.is_update_step(11750)
    assert rigl.fraction(5859) == pytest.approx(0.15, abs=1e-4)  # half way: cosine at pi/2


def test_prune_window_in_absolute_steps():
    from sparse_training.updaters import make_updater, prune_window

    cfg = TrainConfig(method="prune", sparsity=0.95, prune_begin_step=3000, prune_end_step=7000,
                      prune_every=100)
    assert prune_window(cfg, 11719) == (3000, 7000)
    pruner = make_updater(cfg, "prune", 11719, 0)
    steps = [t for t in range(11720) if pruner.is_update_step(t)]
    assert steps == list(range(3000, 7001, 100))
    assert pruner.target(3000) == 0.0 and pruner.target(7000) == pytest.approx(0.95)


def test_rigl_keeps_counts_over_many_updates():
    model = small_mlp()
    masks = Masks.random(model, 0.8, "erk", seed=1)
    masks.apply(model)
    opt = momentum_optimizer(model, masks)
    counts = masks.active_counts()
    rigl = DynamicSparse(every=5, end=40, alpha=0.5)
    start = {n: masks[n].clone() for n in masks}
    updated = []
    for step in range(60):
        if rigl.is_update_step(step):
            updated.append(step)
            rigl.update(step, model, masks, opt, lambda s=step: fixed_grads(masks, s))
            assert masks.active_counts() == counts
        perturb(model, masks, seed=1000 + step)
    assert updated == [5, 10, 15, 20, 25, 30, 35, 40]
    assert any(not torch.equal(start[n], masks[n]) for n in masks)


def test_dynamic_is_update_step_stops_after_end():
    rigl = DynamicSparse(every=4, end=18, alpha=0.3)
    assert [s for s in range(40) if rigl.is_update_step(s)] == [4, 8, 12, 16]


def _set_run(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model = small_mlp()
    masks = Masks.random(model, 0.7, seed=0)
    masks.apply(model)
    old = {n: masks[n].clone() for n in masks}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    set_ = DynamicSparse(every=10, end=100, alpha=0.3, grow=grow_random, seed=seed)
    set_.update(10, model, masks, torch.optim.SGD(model.parameters(), lr=0.1),
                grad_fn=lambda: pytest.fail("SET must not ask for gradients"))
    return old, weights, masks.as_dict()


def test_set_random_growth_reproducible_and_keeps_counts():
    old, weights, a = _set_run(seed=3)
    _, _, b = _set_run(seed=3)
    _, _, c = _set_run(seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    fraction = cosine_fraction(10, 100, 0.3)
    for n in a:
        assert int(a[n].sum()) == int(old[n].sum())
        n_swap = int(fraction * int(old[n].sum()))
        kept = brute_drop(weights[n], old[n], n_swap)
        assert not (kept & ~a[n]).any()  # drop is still by magnitude
        grown = a[n] & ~kept
        assert int(grown.sum()) == n_swap


# ---------------------------------------------------------------------------
# factory


def test_make_updater_from_config():
    assert make_updater(TrainConfig(), None, 1000, 0) is None
    prune = make_updater(TrainConfig(sparsity=0.9, prune_start=0.1, prune_end=0.6, prune_every=20,
                                     prune_scope="global"), "prune", 1000, 0)
    assert isinstance(prune, GradualPruner)
    assert (prune.final, prune.start, prune.end, prune.every, prune.scope) == (0.9, 100, 600, 20, "global")
    rigl = make_updater(TrainConfig(update_every=50, update_end=0.75, drop_fraction=0.3), "rigl", 1000, 7)
    assert isinstance(rigl, DynamicSparse) and rigl.grow is grow_by_gradient
    assert (rigl.every, rigl.end, rigl.alpha, rigl.seed) == (50, 750, 0.3, 7)
    set_ = make_updater(TrainConfig(), "set", 1000, 7)
    assert set_.grow is grow_random
