"""Tests of sparse_training.models: registry shapes, exact layer structure and parameter counts, options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_training.errors import UserError
from sparse_training.models import (
    ACTIVATIONS,
    DEFAULT_INPUT,
    MLP,
    MODELS,
    LeNet5,
    MaxPool2x2,
    build_model,
    count_parameters,
    fused_relu_pools,
    make_activation,
    max_pool2x2_values,
    relu_max_pool2x2,
)


def linear_params(*dims: int) -> int:
    """Hand count of a chain of Linear layers with biases."""
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registry_model_forward_shape(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    x = torch.randn(2, *DEFAULT_INPUT[name])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    # the two samples are different inputs, so the outputs must differ (not a constant network)
    assert not torch.allclose(out[0], out[1])
    assert isinstance(model.nonlinearity, str) and model.nonlinearity in ACTIVATIONS


def test_registry_and_default_inputs_agree():
    assert set(MODELS) == set(DEFAULT_INPUT)


def test_lenet5_layer_structure_and_count():
    model = build_model("lenet5")
    assert isinstance(model, LeNet5)
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (1, 6, (5, 5))
    assert (model.conv2.in_channels, model.conv2.out_channels, model.conv2.kernel_size) == (6, 16, (5, 5))
    assert (model.fc1.in_features, model.fc1.out_features) == (256, 120)
    assert (model.fc2.in_features, model.fc2.out_features) == (120, 84)
    assert (model.fc3.in_features, model.fc3.out_features) == (84, 10)
    hand = (6 * 1 * 25 + 6) + (16 * 6 * 25 + 16) + linear_params(256, 120, 84, 10)
    assert hand == 44_426
    assert count_parameters(model) == 44_426


def test_lenet300_structure_and_count():
    model = build_model("lenet300")
    dims = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert dims == [(784, 300), (300, 100), (100, 10)]
    assert linear_params(784, 300, 100, 10) == 266_610
    assert count_parameters(model) == 266_610


def test_lenet5_on_other_image_sizes():
    # 32x32 (e.g. CIFAR): ((32-4)/2-4)/2 = 5 -> fc1 takes 16*5*5 = 400 features
    model = build_model("lenet5", input_shape=(3, 32, 32))
    assert model.fc1.in_features == 400
    assert model.conv1.in_channels == 3
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["lenet5", "lenet300", "mlp", "mnist1d-mlp", "mnist1d-cnn", "resnet18"])
def test_width_makes_count_monotone(name):
    counts = [count_parameters(build_model(name, width=w)) for w in (0.25, 0.5, 1.0, 1.5)]
    assert all(a < b for a, b in zip(counts[:-1], counts[1:])), counts


def test_width_scales_hidden_widths_exactly():
    lenet = build_model("lenet5", width=0.5)
    assert (lenet.conv1.out_channels, lenet.conv2.out_channels) == (3, 8)
    assert (lenet.fc1.out_features, lenet.fc2.out_features, lenet.fc3.out_features) == (60, 42, 10)
    assert lenet.fc1.in_features == 8 * 4 * 4
    mlp = build_model("lenet300", width=2.0)
    dims = [(m.in_features, m.out_features) for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert dims == [(784, 600), (600, 200), (200, 10)]
    assert count_parameters(mlp) == linear_params(784, 600, 200, 10)
    # tiny widths never reach zero units
    tiny = build_model("lenet300", width=0.001)
    assert [m.out_features for m in tiny.modules() if isinstance(m, nn.Linear)] == [1, 1, 10]


def test_vgg16_width_scales_convs():
    full = [m.out_channels for m in build_model("vgg16").modules() if isinstance(m, nn.Conv2d)]
    half = [m.out_channels for m in build_model("vgg16", width=0.125).modules() if isinstance(m, nn.Conv2d)]
    assert full == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert half == [c // 8 for c in full]


@pytest.mark.parametrize("depth,hidden", [(1, 16), (3, 32), (5, 8)])
def test_mlp_depth_and_hidden(depth, hidden):
    model = build_model("mlp", input_shape=(20,), num_classes=3, depth=depth, hidden=hidden)
    assert isinstance(model, MLP)
    dims = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert dims == [(20, hidden)] + [(hidden, hidden)] * (depth - 1) + [(hidden, 3)]
    assert count_parameters(model) == linear_params(20, *([hidden] * depth), 3)
    assert model(torch.randn(2, 20)).shape == (2, 3)


def test_mlp_batchnorm_option():
    plain = build_model("mlp", input_shape=(20,), depth=3, hidden=16)
    bn = build_model("mlp", input_shape=(20,), depth=3, hidden=16, batchnorm=True)
    norms = [m for m in bn.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 3 and all(m.num_features == 16 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert count_parameters(bn) == count_parameters(plain) + 3 * 2 * 16
    # in train mode each hidden pre-activation is normalized: the first BN output has batch mean 0, var 1
    outs = []
    hook = norms[0].register_forward_hook(lambda m, i, o: outs.append(o))
    bn.train()
    bn(torch.randn(64, 20) * 5 + 3)
    hook.remove()
    assert torch.allclose(outs[0].mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(outs[0].var(0, unbiased=False), torch.ones(16), atol=1e-3)


def test_mlp_skip_adds_identity_between_equal_widths():
    torch.manual_seed(0)
    kw = dict(input_shape=(6,), num_classes=2, depth=3, hidden=4)
    skip = build_model("mlp", skip=True, **kw)
    plain = build_model("mlp", skip=False, **kw)
    plain.load_state_dict(skip.state_dict())
    with torch.no_grad():
        # hidden layers 2 and 3 (4 -> 4) output zero: a residual block is then the identity
        for layer in list(skip.layers)[1:] + list(plain.layers)[1:]:
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(5, 6)
    h1 = torch.relu(skip.layers[0](x))
    expected_skip = skip.head(h1)                      # h1 + 0 + 0
    expected_plain = skip.head(torch.zeros_like(h1))   # relu(0) = 0 through the chain
    assert torch.allclose(skip(x), expected_skip, atol=1e-6)
    assert torch.allclose(plain(x), expected_plain, atol=1e-6)
    assert not torch.allclose(skip(x), plain(x))


def test_mlp_skip_forward_matches_manual_residual():
    torch.manual_seed(1)
    model = build_model("mlp", input_shape=(6,), num_classes=2, depth=3, hidden=4, skip=True, activation="tanh")
    x = torch.randn(3, 6)
    h = torch.tanh(model.layers[0](x))       # 6 -> 4: widths differ, no skip
    h = h + torch.tanh(model.layers[1](h))   # 4 -> 4: residual
    h = h + torch.tanh(model.layers[2](h))
    assert torch.allclose(model(x), model.head(h), atol=1e-6)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlp_every_activation(act):
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(5,), num_classes=3, depth=1, hidden=4, activation=act)
    assert model.nonlinearity == act
    assert isinstance(model.acts[0], type(make_activation(act)))
    x = torch.randn(4, 5)
    reference = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                 "swish": lambda z: z * torch.sigmoid(z), "elu": torch.nn.functional.elu,
                 "prelu": lambda z: torch.where(z >= 0, z, 0.25 * z),
                 "srelu": lambda z: torch.where(z >= 0, z, 0.2 * z)}[act]  # SReLU starts as leaky ReLU 0.2
    manual = model.head(reference(model.layers[0](x)))
    assert torch.allclose(model(x), manual, atol=1e-6)


@pytest.mark.parametrize("name", ["lenet5", "mlp", "vgg16"])
def test_activation_option_reaches_model(name):
    model = build_model(name, activation="tanh", width=0.25)
    assert model.nonlinearity == "tanh"
    assert any(isinstance(m, nn.Tanh) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_unknown_model_raises_user_error():
    with pytest.raises(UserError, match="unknown model 'lenet7'"):
        build_model("lenet7")


@pytest.mark.parametrize("name,option", [("lenet5", "hidden"), ("lenet300", "depth"), ("vgg16", "hiden"),
                                         ("resnet18", "batchnorm")])
def test_option_a_model_does_not_take_raises_user_error(name, option):
    with pytest.raises(UserError, match=f"model '{name}' does not take {option}; it takes width"):
        build_model(name, **{option: 3})


def test_unknown_activation_raises_user_error():
    with pytest.raises(UserError, match="unknown activation"):
        build_model("mlp", activation="gelu-ish")


def test_lenet5_too_small_input_raises_user_error():
    with pytest.raises(UserError, match="16x16"):
        build_model("lenet5", input_shape=(1, 8, 8))
    with pytest.raises(UserError):
        build_model("lenet5", input_shape=(40,))  # not an image at all
    # 16x16 is the smallest size that leaves a 1x1 map
    assert build_model("lenet5", input_shape=(1, 16, 16)).fc1.in_features == 16


def pool_inputs() -> list[torch.Tensor]:
    """Post-ReLU activations with ties (zeros, equal positives), odd edges and NaN windows."""
    g = torch.Generator().manual_seed(0)
    out = []
    for shape in [(16, 6, 24, 24), (16, 16, 8, 8), (3, 2, 9, 11), (2, 1, 5, 4)]:
        x = torch.relu(torch.randn(shape, generator=g))
        x[0, 0, :2, :2] = 0.25  # a window of four equal positives
        x[0, 0, 2, 3] = x[0, 0, 3, 2] = 3.0  # two equal maxima in one window
        out.append(x)
    x = torch.randn(4, 3, 6, 6, generator=g)
    x[0, 0, 0, 1] = x[1, 2, 5, 5] = x[2, 1, 3, 3] = float("nan")
    out.append(x)
    return out


def test_max_pool2x2_values_equal_max_pool2d_elementwise():
    for x in pool_inputs():
        ours, ref = max_pool2x2_values(x), F.max_pool2d(x, 2)
        assert ours.shape == ref.shape
        assert torch.equal(ours.isnan(), ref.isnan())
        assert torch.equal(ours.nan_to_num(-1.0), ref.nan_to_num(-1.0))


def test_max_pool2x2_is_max_pool2d_wherever_gradients_may_flow():
    pool = MaxPool2x2()
    for x in pool_inputs()[:4]:
        with torch.inference_mode():  # the value-only path
            assert torch.equal(pool(x), F.max_pool2d(x, 2))
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        g = torch.randn(F.max_pool2d(x, 2).shape, generator=torch.Generator().manual_seed(1))
        pool(a).backward(g)
        F.max_pool2d(b, 2).backward(g)
        assert torch.equal(a.grad, b.grad)  # routed to the first maximum of each window, as max_pool2d
    # forward-mode AD and torch.func see max_pool2d (inference mode is off inside a transform)
    x = pool_inputs()[0].double()
    t = torch.randn_like(x)
    with torch.inference_mode():
        _, ours = torch.func.jvp(pool, (x,), (t,))
    _, ref = torch.func.jvp(lambda z: F.max_pool2d(z, 2), (x,), (t,))
    assert torch.equal(ours, ref)


def test_lenet5_logits_under_inference_mode_are_bit_identical():
    from landscape.evaluate import predict_logits
    from sparse_training.data import load_dataset

    data = load_dataset("mnist")
    model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).eval()
    x = data.x_test[:300]
    with torch.no_grad():
        ref = model(x)  # max_pool2d
    ours = predict_logits(model, x, batch_size=300)
    assert not ours.is_inference()
    assert torch.equal(ours.view(torch.int32), ref.view(torch.int32))


def pre_activations() -> list[torch.Tensor]:
    """Conv-output-like inputs for a ReLU + max-pool: small integers (ties of zeros, of equal positives
    and of equal negatives in one window, in every order), real-valued maps, odd edges."""
    g = torch.Generator().manual_seed(0)
    out = [torch.randint(-2, 3, shape, generator=g).float() for shape in [(8, 4, 6, 6), (3, 2, 7, 5), (2, 3, 5, 8)]]
    out += [torch.randn(shape, generator=g) for shape in [(16, 6, 24, 24), (16, 16, 8, 8), (3, 2, 9, 11)]]
    x = torch.randn(4, 3, 6, 6, generator=g)
    x[0, 0, :2, :2] = 0.5               # four equal positives: the first (top-left) takes it
    x[0, 1, 0, 1] = x[0, 1, 1, 0] = 2.0  # top-right and bottom-left tie: row-major order picks top-right
    x[1, 0, 1, 0] = x[1, 0, 1, 1] = 3.0  # the bottom row's two tie
    x[2, 0, :2, :2] = -0.0               # relu keeps -0.0; a window of signed zeros
    x[2, 1, 0, 0], x[2, 1, 0, 1] = -0.0, 0.0
    out.append(x)
    return out


def fused(out: torch.Tensor) -> bool:
    return type(out.grad_fn).__name__ == "_ReLUMaxPool2x2Backward"


def fused_nodes(out: torch.Tensor) -> int:
    """How many fused ReLU + max-pool nodes the autograd graph behind ``out`` holds."""
    seen, stack, count = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == "_ReLUMaxPool2x2Backward"
        stack.extend(n for n, _ in node.next_functions)
    return count


def test_fused_relu_pool_gives_max_pool2d_values_and_gradients_bit_for_bit():
    for x in pre_activations():
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ref = F.max_pool2d(F.relu(b), 2)
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
        g.view(-1)[::5] = -0.0  # ATen's gradient holds +0.0 there
        with fused_relu_pools():
            out = relu_max_pool2x2(a)
        assert fused(out)
        assert torch.equal(out.view(torch.int32), ref.view(torch.int32))  # the signs of zeros too
        out.backward(g)
        ref.backward(g)
        assert torch.equal(a.grad.view(torch.int32), b.grad.view(torch.int32)), x.shape


def test_fused_relu_pool_with_nan_and_infinities_is_aten_bit_for_bit():
    """A NaN wins its window in ATen's max-pool (and +/-inf are ordinary extremes): the compiled kernel
    hands such inputs to ATen's forward and routes the gradient by its indices."""
    x = torch.randn(4, 3, 7, 6, generator=torch.Generator().manual_seed(2))
    x[0, 0, 0, 1] = x[0, 0, 1, 1] = float("nan")  # two NaNs in one window: the later one wins
    x[1, 2, 3, 3], x[2, 1, 2, 2], x[3, 0, 6, 0] = float("inf"), -float("inf"), float("nan")  # last: a dropped row
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with fused_relu_pools():
        out = relu_max_pool2x2(a)
    assert fused(out)
    ref = F.max_pool2d(F.relu(b), 2)
    assert torch.equal(out.view(torch.int32), ref.view(torch.int32))
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3))
    out.backward(g)
    ref.backward(g)
    assert torch.equal(a.grad.view(torch.int32), b.grad.view(torch.int32))
    assert a.grad[1, 2, 3, 3] == g[1, 2, 1, 1]  # the infinity took its window's gradient


def test_fused_relu_pool_only_where_first_order_reverse_mode_gradients_are_recorded():
    x = pre_activations()[3][:2].requires_grad_(True)
    assert not fused(relu_max_pool2x2(x))  # outside the block
    with fused_relu_pools():
        assert fused(relu_max_pool2x2(x))
        assert not fused(relu_max_pool2x2(x.detach()))  # nothing to differentiate
        with torch.no_grad():
            assert torch.equal(relu_max_pool2x2(x), F.max_pool2d(F.relu(x), 2))
        # torch.func sees the usual ops (the fused function has no functorch rules) and gets their gradient
        ours = torch.func.grad(lambda z: relu_max_pool2x2(z).pow(2).sum())(x.detach())
    ref = torch.func.grad(lambda z: F.max_pool2d(F.relu(z), 2).pow(2).sum())(x.detach())
    assert torch.equal(ours, ref)
    assert not fused(relu_max_pool2x2(x))  # the block's end switches it off again


def test_lenet5_in_the_fused_block_same_gradients_and_hessian_products():
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).double()
    x = torch.rand(6, 1, 28, 28, dtype=torch.double)
    x[:, :, :8] = 0  # blank rows: windows of equal pre-activations (the bias) at every layer
    y = torch.randint(0, 10, (6,))
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def grads_and_hvp(in_block: bool):
        if in_block:
            with fused_relu_pools():
                logits = model(x)
        else:
            logits = model(x)
        assert fused_nodes(logits) == (2 if in_block else 0)  # both of LeNet-5's pools, or none
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params, create_graph=True)
        hvp = torch.autograd.grad(sum((g * t).sum() for g, t in zip(grads, v)), params)
        return [g.detach() for g in grads], hvp

    (g0, h0), (g1, h1) = grads_and_hvp(False), grads_and_hvp(True)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(h0, h1))
    assert not all(torch.equal(a, torch.zeros_like(a)) for a in h1)
