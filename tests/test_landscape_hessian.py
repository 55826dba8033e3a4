"""Tests of landscape.hessian and landscape.exact: HVPs against the exact Hessian, double backward and finite differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import masked_mlp
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator
from torch import nn

from landscape.exact import dense_matrix, exact_hessian
from landscape.hessian import HessianOperator, LambdaOperator, gradient
from landscape.params import ParamSpace




@pytest.fixture(scope="module")
def problem():
    model, masks, data = masked_mlp()
    H = exact_hessian(model, F.cross_entropy, data, masks, chunk_size=64)
    return model, masks, data, H


def test_exact_hessian_is_symmetric_and_sized(problem):
    model, masks, _, H = problem
    space = ParamSpace(model, masks)
    assert H.shape == (space.size, space.size)
    assert H.dtype == torch.float64
    assert torch.allclose(H, H.T, atol=1e-12)


@pytest.mark.parametrize("method", ["forward-over-reverse", "double-backward"])
@pytest.mark.parametrize("cache", [True, False])
def test_hvp_matches_exact_hessian(problem, method, cache):
    model, masks, data, H = problem
    op = HessianOperator(
        model, F.cross_entropy, data, masks, dtype=torch.float64, chunk_size=64,
        method=method, cache=cache,
    )
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(op.size, generator=gen, dtype=torch.float64)
        assert torch.allclose(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert op.matvecs == 3
    if cache and method == "forward-over-reverse":
        assert op.cache_info.startswith("on")


def test_forward_over_reverse_agrees_with_double_backward(problem):
    model, masks, data, _ = problem
    kw = dict(dtype=torch.float64, chunk_size=50)
    fwd = HessianOperator(model, F.cross_entropy, data, masks, cache=False, **kw)
    dbl = HessianOperator(model, F.cross_entropy, data, masks, method="double-backward", **kw)
    v = torch.randn(fwd.size, dtype=torch.float64)
    assert torch.allclose(fwd.matvec(v), dbl.matvec(v), rtol=1e-12, atol=1e-14)


def test_hvp_matches_central_finite_differences(problem):
    model, masks, data, _ = problem
    op = HessianOperator(model, F.cross_entropy, data, masks, dtype=torch.float64, cache=False)
    space = op.space
    theta = op.point()
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v /= v.norm()
    eps = 1e-4
    shifted = model.double()  # a float64 copy of the model is what the operator sees
    grads = []
    for sign in (1.0, -1.0):
        space.load_into(shifted, theta + sign * eps * v)
        grads.append(gradient(shifted, F.cross_entropy, data, masks, dtype=torch.float64))
    fd = (grads[0] - grads[1]) / (2 * eps)
    hv = op.matvec(v)
    assert torch.allclose(hv, fd, rtol=1e-6, atol=1e-8)
    space.load_into(shifted, theta)  # leave the shared fixture as it was
    model.float()


def test_gradient_matches_autograd(problem):
    model, masks, data, _ = problem
    x, y = data
    g = gradient(model, F.cross_entropy, data, masks, dtype=torch.float64, chunk_size=37)
    m64 = torch.nn.Sequential(*[layer for layer in model]).double()
    loss = F.cross_entropy(m64(x.double()), y)
    full = dict(zip([n for n, _ in m64.named_parameters()], torch.autograd.grad(loss, list(m64.parameters()))))
    expected = ParamSpace(model, masks).to_vector(full)
    model.float()
    assert torch.allclose(g, expected, rtol=1e-10, atol=1e-12)


def test_linear_operator_and_float32(problem):
    model, masks, data, H = problem
    op = HessianOperator(model, F.cross_entropy, data, masks, dtype=torch.float32)
    assert op.dtype == torch.float32
    lin = op.as_linear_operator()
    assert isinstance(lin, LinearOperator)
    assert lin.shape == (op.size, op.size)
    v = np.random.default_rng(0).standard_normal(op.size)
    out = lin @ v
    assert out.dtype == np.float32
    expected = (H @ torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-5)


def test_lambda_operator_and_dense_matrix():
    A = torch.randn(6, 6, dtype=torch.float64)
    A = A + A.T
    op = LambdaOperator.from_matrix(A)
    assert torch.allclose(dense_matrix(op), A)
    assert op.matvecs == 6
    with pytest.raises(ValueError):
        op.matvec(torch.zeros(5))


def test_set_point_and_caller_model_untouched(problem):
    model, masks, data, _ = problem
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, F.cross_entropy, data, masks, dtype=torch.float64)
    v = torch.randn(op.size, dtype=torch.float64)
    hv0 = op.matvec(v)
    assert model.training
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]) and t.dtype == before[k].dtype
    shifted = {k: t * 1.5 for k, t in before.items()}
    op.set_point(shifted)
    assert op.cache_info == "not built yet"
    hv1 = op.matvec(v)
    assert not torch.allclose(hv0, hv1)
    op.set_point(model)
    assert torch.allclose(op.matvec(v), hv0, rtol=1e-12, atol=1e-14)
    model.eval()


class _NoForwardAD(torch.autograd.Function):
    """tanh whose backward is differentiable but which torch.func cannot transform."""

    @staticmethod
    def forward(ctx, x):
        out = torch.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class _Act(nn.Module):
    def forward(self, x):
        return _NoForwardAD.apply(x)


def test_falls_back_to_double_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), _Act(), nn.Linear(5, 2))
    data = (torch.randn(30, 4), torch.randint(0, 2, (30,)))
    op = HessianOperator(model, F.cross_entropy, data, dtype=torch.float64, cache=False)
    v = torch.randn(op.size, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="double backward"):
        hv = op.matvec(v)
    assert op.method == "double-backward"
    ref = HessianOperator(
        nn.Sequential(model[0], nn.Tanh(), model[2]), F.cross_entropy, data, dtype=torch.float64
    )
    assert torch.allclose(hv, ref.matvec(v), rtol=1e-10, atol=1e-12)


def test_batchnorm_model_uses_running_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    with torch.no_grad():
        model.train()
        model(x)  # non-trivial running stats
    model.train()
    H = exact_hessian(model, F.cross_entropy, (x, y))
    op = HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float64, chunk_size=7)
    v = torch.randn(op.size, dtype=torch.float64)
    # chunking is exact only because eval mode makes the loss a sum over examples
    assert torch.allclose(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert model.training



class _SignBranch(nn.Module):
    """tanh or a cubic depending on the sign of the batch mean: data-dependent control flow."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def branch(self, x) -> bool:
        return bool(x.mean() > 0)

    def forward(self, x):
        h = self.fc1(x)
        h = torch.tanh(h) if self.branch(x) else h**3
        return self.fc2(h)


class _HiddenBranch(_SignBranch):
    """The same branch decided where tracing cannot see it (Python-side state set per chunk)."""

    def __init__(self, signs: list[bool]) -> None:
        super().__init__()
        self.signs, self.calls = signs, 0

    def branch(self, x) -> bool:
        self.calls += 1
        return self.signs[(self.calls - 1) % len(self.signs)]


def _two_sided_data():
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(20, 4, generator=gen) + 2.0, torch.randn(20, 4, generator=gen) - 2.0]).double()
    return x, torch.randint(0, 3, (40,), generator=gen), gen


def test_cache_switches_off_with_a_message_on_data_dependent_branch():
    torch.manual_seed(0)
    model = _SignBranch().double()
    x, y, gen = _two_sided_data()
    H = exact_hessian(model, F.cross_entropy, (x, y), chunk_size=20)
    op = HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float64, chunk_size=20)
    v = torch.randn(op.size, generator=gen, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="HVP cache off"):
        for _ in range(4):  # the cache is built at the second product at a point
            hv = op.matvec(v)
    assert op.cache_info.startswith("off: tracing failed")
    assert torch.allclose(hv, H @ v, rtol=1e-10, atol=1e-12)  # the products stay exact


def test_cache_checks_itself_against_direct_products():
    """A branch tracing cannot see gets baked in for every chunk: the build-time check catches it."""
    torch.manual_seed(0)
    x, y, gen = _two_sided_data()
    # chunk 1 takes tanh, chunk 2 the cubic, on every pass (2 forwards per product: one per chunk)
    model = _HiddenBranch([True, False]).double()
    op = HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float64, chunk_size=20)
    v = torch.randn(op.size, generator=gen, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="disagreed"):
        for _ in range(3):
            op.matvec(v)
    assert op.cache_info.startswith("off: cached products disagreed")
    # with one branch everywhere the cache passes its check and is used; products match the exact Hessian
    same = _HiddenBranch([True]).double()
    same.load_state_dict(model.state_dict())
    H = exact_hessian(same, F.cross_entropy, (x, y), chunk_size=20)
    op1 = HessianOperator(same, F.cross_entropy, (x, y), dtype=torch.float64, chunk_size=20)
    for _ in range(4):
        hv = op1.matvec(v)
    assert op1.cache_info.startswith("on")
    assert torch.allclose(hv, H @ v, rtol=1e-10, atol=1e-12)


def test_cache_is_built_without_a_second_direct_product(problem):
    """The cache is checked on the first product's vector, so only that product is computed directly."""
    model, masks, data, H = problem
    op = HessianOperator(model, F.cross_entropy, data, masks, dtype=torch.float64, chunk_size=64)
    direct = []
    plain = op._direct_product
    op._direct_product = lambda tangent, total: (direct.append(1), plain(tangent, total))[1]
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        v = torch.randn(op.size, generator=gen, dtype=torch.float64)
        assert torch.allclose(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert len(direct) == 1 and op.cache_info.startswith("on")

def _masked_tiny_convnet():
    """A conv-tanh-maxpool-linear net on 8x8 images (157 parameters), weights zeroed off 50% masks."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(27, 4), nn.Tanh(), nn.Linear(4, 3),
    )
    masks = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in model.named_parameters() if p.dim() > 1}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    x = torch.randn(24, 1, 8, 8, generator=gen)
    return model, masks, (x, torch.randint(0, 3, (24,), generator=gen))


def _flat_hessian(model, data) -> torch.Tensor:
    """Hessian of the mean loss w.r.t. all parameters concatenated, by torch.autograd.functional.hessian."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    x, y = data

    def loss(w):
        parts = torch.split(w, [p.numel() for p in params])
        tensors = {n: t.view(p.shape) for n, t, p in zip(names, parts, params)}
        return F.cross_entropy(torch.func.functional_call(model, tensors, (x,)), y)

    return torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))


@pytest.mark.parametrize("build", [masked_mlp, _masked_tiny_convnet])
@pytest.mark.parametrize("cache", [True, False])
def test_active_subspace_hvp_is_the_full_hvp_restricted_to_active_coordinates(build, cache):
    model, masks, (x, y) = build()
    model, data = model.double(), (x.double(), y)
    H = _flat_hessian(model, data)  # an oracle that shares no code with ParamSpace or the operator
    active = torch.cat([
        (masks[n] if n in masks else torch.ones_like(p, dtype=torch.bool)).reshape(-1)
        for n, p in model.named_parameters()
    ]).nonzero().reshape(-1)
    kw = dict(dtype=torch.float64, chunk_size=10, cache=cache)  # chunks of two shapes
    sub = HessianOperator(model, F.cross_entropy, data, masks, **kw)
    full = HessianOperator(model, F.cross_entropy, data, None, **kw)
    assert sub.size == active.numel() < full.size == H.shape[0]
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):  # the cache is built at the second product and used at the third
        v = torch.randn(sub.size, generator=gen, dtype=torch.float64)
        padded = torch.zeros(full.size, dtype=torch.float64).index_copy(0, active, v)
        hv = sub.matvec(v)
        assert torch.allclose(hv, H[active][:, active] @ v, rtol=1e-10, atol=1e-12)
        assert torch.allclose(full.matvec(padded), H @ padded, rtol=1e-10, atol=1e-12)
        assert torch.allclose(hv, full.matvec(padded)[active], rtol=1e-10, atol=1e-12)
    if cache:
        assert sub.cache_info.startswith("on") and full.cache_info.startswith("on")
