"""Tests of sparse_training.init: signal propagation of sparse inits, fans by hand, samplers, gains, seeds."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from sparse_training.errors import UserError
from sparse_training.init import activation_gain, initialize, weight_std
from sparse_training.masks import Masks
from sparse_training.models import build_model

N_IN, N_OUT, N_SAMPLES = 1000, 200, 4000
RELU_GAIN = math.sqrt(2.0)


def two_layer(n_in: int = N_IN, n_hidden: int = N_OUT) -> nn.Module:
    """A hidden sparse Linear (gain sqrt 2 for ReLU) followed by a small output layer."""
    model = nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, 10))
    model.nonlinearity = "relu"
    return model


def row_density_mask(densities: torch.Tensor, n_in: int, seed: int) -> torch.Tensor:
    """Row i has exactly round(densities[i] * n_in) active entries at random positions."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in densities.tolist():
        row = torch.zeros(n_in, dtype=torch.bool)
        row[torch.randperm(n_in, generator=g)[: round(d * n_in)]] = True
        rows.append(row)
    return torch.stack(rows)


def preact_variance(model: nn.Module, seed: int = 123) -> torch.Tensor:
    """Per-unit variance of the first layer's pre-activation under unit-variance Gaussian input."""
    x = torch.randn(N_SAMPLES, model[0].in_features, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        h = model[0](x).double()
    return h.var(0)


def init_with_mask(mask: torch.Tensor, scheme: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = two_layer(mask.shape[1], mask.shape[0])
    masks = Masks({"0.weight": mask, "2.weight": torch.ones(10, mask.shape[0], dtype=torch.bool)})
    initialize(model, masks, scheme=scheme, **kw)
    return model


# ---------------------------------------------------------------------------
# the test: sparse init preserves the pre-activation variance, dense init shrinks it


def test_sparse_init_preserves_variance_with_random_mask():
    mask = torch.rand(N_OUT, N_IN, generator=torch.Generator().manual_seed(0)) < 0.1
    fan_in = mask.sum(1).double()
    var = preact_variance(init_with_mask(mask, "sparse", seed=1))
    ratio = var / RELU_GAIN**2
    # per unit: sum of fan_in squared normals / fan_in -> relative sd sqrt(2 / fan_in) ~ 0.14
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.05)
    assert ((ratio - 1).abs() < 5 * (2 / fan_in).sqrt() + 0.05).all()

    dense = preact_variance(init_with_mask(mask, "dense", seed=1))
    expected = RELU_GAIN**2 * fan_in / N_IN  # too small, in proportion to the density
    assert (dense / expected).mean().item() == pytest.approx(1.0, abs=0.05)
    assert (dense / RELU_GAIN**2).mean().item() == pytest.approx(0.1, abs=0.01)


def test_sparse_init_preserves_variance_with_nonuniform_row_densities():
    densities = torch.linspace(0.02, 0.6, N_OUT)
    mask = row_density_mask(densities, N_IN, seed=0)
    fan_in = mask.sum(1).double()
    assert fan_in.min() == 20 and fan_in.max() == 600

    var_sparse = preact_variance(init_with_mask(mask, "sparse", seed=2)) / RELU_GAIN**2
    assert ((var_sparse - 1).abs() < 5 * (2 / fan_in).sqrt() + 0.05).all()
    low, high = var_sparse[:50].mean().item(), var_sparse[-50:].mean().item()
    assert low == pytest.approx(1.0, abs=0.15)  # the sparsest quarter is not starved...
    assert high == pytest.approx(1.0, abs=0.05)  # ...and the densest is not inflated

    var_dense = preact_variance(init_with_mask(mask, "dense", seed=2)) / RELU_GAIN**2
    expected = fan_in / N_IN
    assert (var_dense / expected).mean().item() == pytest.approx(1.0, abs=0.05)
    # variance tracks density: the densest quarter sees far more than the sparsest
    ratio = var_dense[-50:].mean() / var_dense[:50].mean()
    assert ratio.item() == pytest.approx((fan_in[-50:].mean() / fan_in[:50].mean()).item(), rel=0.15)


def test_sparse_weight_std_is_gain_over_sqrt_row_fan_in():
    mask = row_density_mask(torch.linspace(0.05, 0.5, 30), 80, seed=3)
    std = weight_std(mask.shape, mask, "sparse", gain=1.7)
    fan_in = mask.sum(1, keepdim=True).double()
    assert torch.allclose(std, (1.7 / fan_in.sqrt()).expand(mask.shape), rtol=1e-12)


def test_liu_std_is_dense_std_over_sqrt_density():
    mask = torch.rand(40, 250, generator=torch.Generator().manual_seed(0)) < 0.2
    density = mask.double().mean()
    dense = weight_std(mask.shape, mask, "dense", gain=RELU_GAIN)
    liu = weight_std(mask.shape, mask, "liu", gain=RELU_GAIN)
    assert torch.allclose(dense, torch.full(mask.shape, RELU_GAIN / math.sqrt(250), dtype=torch.float64))
    assert torch.allclose(liu, dense / density.sqrt(), rtol=1e-12)
    # and the drawn active weights have that std (1 layer of 40x250 at ~20%: ~2000 draws, sd of std ~1.6%)
    model = init_with_mask(mask, "liu", seed=0)
    w = model[0].weight.detach().double()[mask]
    assert w.std().item() == pytest.approx(RELU_GAIN / math.sqrt(250 * density.item()), rel=0.08)


def test_zero_fan_in_units_get_zero_weights():
    mask = torch.rand(12, 30, generator=torch.Generator().manual_seed(1)) < 0.3
    mask[[2, 7]] = False  # two units with no inputs
    mask[:, 5] = False  # an input with no outputs
    for mode in ("fanin", "fanout", "fanavg"):
        std = weight_std(mask.shape, mask, "sparse", gain=1.0, mode=mode)
        assert torch.isfinite(std).all()
        model = init_with_mask(mask, "sparse", mode=mode, seed=0)
        w = model[0].weight.detach()
        assert torch.isfinite(w).all()
        assert torch.equal(w[[2, 7]], torch.zeros(2, 30))
        assert torch.equal(w[:, 5], torch.zeros(12))
        assert (w[mask] != 0).all()
    # the std itself is zero exactly where the fan is zero
    std_in = weight_std(mask.shape, mask, "sparse", gain=1.0, mode="fanin")
    std_out = weight_std(mask.shape, mask, "sparse", gain=1.0, mode="fanout")
    assert torch.equal(std_in[[2, 7]], torch.zeros(2, 30, dtype=torch.float64))
    assert torch.equal(std_out[:, 5], torch.zeros(12, dtype=torch.float64))
    assert (std_in[[0, 1, 3]] > 0).all() and (std_out[:, [0, 1]] > 0).all()


# ---------------------------------------------------------------------------
# fans by hand


HAND_MASK = torch.tensor([[1, 1, 0, 0],
                          [1, 0, 1, 1],
                          [0, 0, 0, 1]], dtype=torch.bool)
# fan_in of output rows: 2, 3, 1; fan_out of input columns: 2, 1, 1, 2


@pytest.mark.parametrize("mode,fan", [
    ("fanin", [[2, 2, 2, 2], [3, 3, 3, 3], [1, 1, 1, 1]]),
    ("fanout", [[2, 1, 1, 2], [2, 1, 1, 2], [2, 1, 1, 2]]),
    ("fanavg", [[2, 1.5, 1.5, 2], [2.5, 2, 2, 2.5], [1.5, 1, 1, 1.5]]),
])
def test_hand_computed_fans_of_small_mask(mode, fan):
    std = weight_std(HAND_MASK.shape, HAND_MASK, "sparse", gain=3.0, mode=mode)
    expected = 3.0 / torch.tensor(fan, dtype=torch.float64).sqrt()
    assert torch.allclose(std, expected, rtol=1e-12)


@pytest.mark.parametrize("mode", ["fanin", "fanout", "fanavg"])
def test_dense_fans_match_pytorch_for_conv(mode):
    conv = nn.Conv2d(4, 6, (3, 5))
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    fan = {"fanin": fan_in, "fanout": fan_out, "fanavg": (fan_in + fan_out) / 2}[mode]
    std = weight_std(conv.weight.shape, None, "dense", gain=1.0, mode=mode)
    assert torch.allclose(std, torch.full(conv.weight.shape, 1 / math.sqrt(fan), dtype=torch.float64))


def test_sparse_conv_fan_counts_channels_times_kernel():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 4, 3, 3, generator=g) < 0.4
    std_in = weight_std(mask.shape, mask, "sparse", gain=2.0, mode="fanin")
    std_out = weight_std(mask.shape, mask, "sparse", gain=2.0, mode="fanout")
    for i in range(6):
        fi = int(mask[i].sum())  # active weights over in-channels x kernel of output channel i
        assert torch.allclose(std_in[i], torch.full((4, 3, 3), 2.0 / math.sqrt(fi), dtype=torch.float64))
    for j in range(4):
        fo = int(mask[:, j].sum())  # active weights over out-channels x kernel of input channel j
        assert torch.allclose(std_out[:, j], torch.full((6, 3, 3), 2.0 / math.sqrt(fo), dtype=torch.float64))


def test_sparse_conv_preserves_variance():
    conv = nn.Conv2d(32, 16, 3, bias=True)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    model.nonlinearity = "relu"
    density = torch.linspace(0.05, 0.8, 16)
    mask = torch.stack([torch.rand(32, 3, 3, generator=torch.Generator().manual_seed(i)) < d
                        for i, d in enumerate(density.tolist())])
    fan_in = mask.reshape(16, -1).sum(1).double()
    masks = Masks({"0.weight": mask, "3.weight": torch.ones(10, 576, dtype=torch.bool)})
    initialize(model, masks, scheme="sparse", seed=0)
    # exact pre-activation variance under unit-variance i.i.d. input: sum of squared weights per channel
    var = conv.weight.detach().double().pow(2).reshape(16, -1).sum(1) / RELU_GAIN**2
    assert ((var - 1).abs() < 5 * (2 / fan_in).sqrt() + 0.05).all()
    assert var.mean().item() == pytest.approx(1.0, abs=0.15)


# ---------------------------------------------------------------------------
# samplers, seeds, gains, biases


@pytest.mark.parametrize("sampler,dist", [("normal", stats.norm()),
                                          ("uniform", stats.uniform(-math.sqrt(3), 2 * math.sqrt(3)))])
def test_sampler_distribution_and_variance(sampler, dist):
    model = two_layer(500, 400)
    initialize(model, None, scheme="dense", sampler=sampler, seed=0)
    w = model[0].weight.detach().double().reshape(-1)
    std = RELU_GAIN / math.sqrt(500)
    assert w.var().item() == pytest.approx(std**2, rel=0.02)  # 200k draws: sd of var ~0.3-0.5%
    assert stats.kstest((w / std).numpy(), dist.cdf).pvalue > 1e-3
    if sampler == "uniform":
        assert w.abs().max().item() <= math.sqrt(3) * std * (1 + 1e-6)


def test_same_seed_same_bits_and_generator():
    masks_model = build_model("lenet5")
    masks = Masks.random(masks_model, 0.9, "erk", seed=0)
    a, b, c, d = (build_model("lenet5") for _ in range(4))
    initialize(a, masks, scheme="sparse", seed=7)
    initialize(b, masks, scheme="sparse", seed=7)
    initialize(c, masks, scheme="sparse", seed=8)
    initialize(d, masks, scheme="sparse", generator=torch.Generator().manual_seed(7))
    sa, sb, sc, sd = (m.state_dict() for m in (a, b, c, d))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(sa[k], sd[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    for name in masks:  # and the masks hold after init
        assert torch.equal(sa[name][~masks[name]], torch.zeros(int((~masks[name]).sum())))


@pytest.mark.parametrize("activation,torch_gain", [
    ("relu", nn.init.calculate_gain("relu")),
    ("tanh", nn.init.calculate_gain("tanh")),
    ("sigmoid", nn.init.calculate_gain("sigmoid")),
    ("prelu", nn.init.calculate_gain("leaky_relu", 0.25)),
])
def test_activation_gain_matches_pytorch(activation, torch_gain):
    assert activation_gain(activation) == pytest.approx(torch_gain)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_output_layer_gain_one_hidden_layers_activation_gain(activation):
    model = build_model("lenet300", activation=activation)
    initialize(model, None, scheme="dense", seed=0)
    gain = activation_gain(activation)
    w0 = model.layers[0].weight.detach().double()  # 235,200 draws
    w1 = model.layers[1].weight.detach().double()  # 30,000 draws
    head = model.head.weight.detach().double()  # 1,000 draws
    assert w0.std().item() == pytest.approx(gain / math.sqrt(784), rel=0.01)
    assert w1.std().item() == pytest.approx(gain / math.sqrt(300), rel=0.02)
    assert head.std().item() == pytest.approx(1.0 / math.sqrt(100), rel=0.07)


def test_biases_zero_and_norm_layers_reset():
    model = build_model("mlp", input_shape=(10,), depth=2, hidden=20, batchnorm=True, activation="prelu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
        for b in model.buffers():
            b.fill_(3)
    masks = Masks.random(model, 0.5, seed=0)
    initialize(model, masks, scheme="sparse", seed=0)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
        assert torch.equal(bn.weight, torch.ones(20)) and torch.equal(bn.running_var, torch.ones(20))
        assert torch.equal(bn.running_mean, torch.zeros(20))
    for act in (m for m in model.modules() if isinstance(m, nn.PReLU)):
        assert torch.equal(act.weight, torch.full_like(act.weight, 0.25))
    for name in masks:
        w = dict(model.named_parameters())[name]
        assert (w[masks[name]] != 3.0).all() and torch.equal(w[~masks[name]], torch.zeros(int((~masks[name]).sum())))


@pytest.mark.parametrize("kwargs,word", [({"scheme": "kaiming"}, "init"), ({"mode": "fan_in"}, "mode"),
                                         ({"sampler": "laplace"}, "distribution")])
def test_bad_options_are_user_errors(kwargs, word):
    with pytest.raises(UserError, match=word):
        initialize(two_layer(10, 5), None, **kwargs)


def test_unknown_activation_gain_is_user_error():
    with pytest.raises(UserError):
        activation_gain("softsign")
