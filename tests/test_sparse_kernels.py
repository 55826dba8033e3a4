"""Tests of the convolutions over active weights only (models.sparse_kernels, kernels.sparse_conv2d_*):
values and gradients against F.conv2d with masked weights and finite differences, where the block applies,
LeNet-5 gradients and Hessian products, and the trainer's --sparse-kernels (RigL's growth stays dense)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_training.config import TrainConfig
from sparse_training.masks import Masks
from sparse_training.metrics import masked_gradient
from sparse_training.models import _SparseConv2d, build_model, conv2d, sparse_kernels
from sparse_training.trainer import setup_run


def _conv_and_mask(cin: int, cout: int, k: int, density: float, dtype, seed: int = 0):
    """A conv whose masked-out weights hold large values (so reading one would show) and its mask."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=dtype))
        conv.bias.copy_(torch.randn(cout, generator=g, dtype=dtype))
    mask = torch.rand(conv.weight.shape, generator=g) < density
    with torch.no_grad():
        conv.weight[~mask] = 1e3
    return conv, mask


SHAPES = [  # (N, C, H, W, O, kernel)
    (3, 1, 12, 9, 4, 5),
    (5, 3, 10, 10, 6, 3),
    (4, 6, 12, 12, 16, 5),
    (2, 2, 7, 11, 3, 1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
def test_values_and_gradients_equal_conv2d_with_masked_weights(dtype, shape, density):
    n, c, h, w, o, k = shape
    conv, mask = _conv_and_mask(c, o, k, density, dtype)
    x = torch.randn(n, c, h, w, dtype=dtype, generator=torch.Generator().manual_seed(1))
    grad_out = torch.randn(n, o, h - k + 1, w - k + 1, dtype=dtype, generator=torch.Generator().manual_seed(2))
    xs = x.clone().requires_grad_()
    with sparse_kernels(conv, {"weight": mask}, max_density=1.0):
        out = conv2d(conv, xs)
    assert out.grad_fn is not None and "SparseConv2d" in type(out.grad_fn).__name__
    gx, gw, gb = torch.autograd.grad(out, (xs, conv.weight, conv.bias), grad_out)

    xr = x.clone().requires_grad_()
    wr = (conv.weight.detach() * mask).requires_grad_()
    br = conv.bias.detach().clone().requires_grad_()
    ref = F.conv2d(xr, wr, br)
    rx, rw, rb = torch.autograd.grad(ref, (xr, wr, br), grad_out)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)  # float32: sums of up to 400 terms
    assert out.shape == ref.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(gx, rx, **tol)
    torch.testing.assert_close(gw, rw * mask, **tol)  # the masked gradient: zero where the mask is False
    assert torch.equal(gw[~mask], torch.zeros_like(gw[~mask]))
    torch.testing.assert_close(gb, rb, **tol)


def test_gradients_and_second_derivatives_match_finite_differences():
    conv, mask = _conv_and_mask(2, 3, 3, 0.3, torch.float64, seed=3)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = conv.weight.detach().clone().requires_grad_()
    bias = conv.bias.detach().clone().requires_grad_()

    def f(x, weight, bias):
        return _SparseConv2d.apply(x, weight, bias, mask)

    # the function never reads dropped weights, so their finite-difference gradient is 0, as is ours
    assert torch.autograd.gradcheck(f, (x, weight, bias))
    assert torch.autograd.gradgradcheck(f, (x, weight, bias))


def test_an_active_weight_at_zero_still_gets_its_gradient():
    """RigL grows connections at weight 0: the mask, not the weight's value, decides what is active."""
    conv, mask = _conv_and_mask(1, 2, 3, 0.5, torch.float64, seed=4)
    with torch.no_grad():
        conv.weight.mul_(mask)
    grown = mask.nonzero()[0].tolist()
    with torch.no_grad():
        conv.weight[tuple(grown)] = 0.0
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with sparse_kernels(conv, {"weight": mask}, max_density=1.0):
        (gw,) = torch.autograd.grad(conv2d(conv, x).square().sum(), conv.weight)
    (ref,) = torch.autograd.grad(conv(x).square().sum(), conv.weight)
    assert gw[tuple(grown)] != 0
    torch.testing.assert_close(gw[tuple(grown)], ref[tuple(grown)])


def test_the_block_applies_only_where_it_should():
    conv, mask = _conv_and_mask(2, 3, 3, 0.05, torch.float32, seed=5)
    mask.view(-1)[0] = True  # at least one active weight
    x = torch.randn(2, 2, 6, 6)
    sparse_value = F.conv2d(x, conv.weight * mask, conv.bias)
    dense_value = conv(x)  # reads the large dropped weights
    assert not torch.allclose(sparse_value, dense_value)

    def under(block_masks, max_density=0.1, inp=x, module=conv):
        with sparse_kernels(module, block_masks, max_density=max_density):
            return conv2d(module, inp)

    assert torch.equal(conv2d(conv, x), dense_value)  # outside the block
    torch.testing.assert_close(under({"weight": mask}), sparse_value)
    with torch.inference_mode():  # evaluation: the forward kernel alone
        torch.testing.assert_close(under({"weight": mask}), sparse_value)
    assert torch.equal(under(None), dense_value)  # no masks: a no-op
    assert torch.equal(under({"weight": mask}, max_density=0.01), dense_value)  # too dense for the kernels
    padded = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        padded.weight.copy_(conv.weight)
        padded.bias.copy_(conv.bias)
    assert torch.equal(under({"weight": mask}, module=padded), padded(x))  # padding: not ours, plain conv
    # under a torch.func transform the usual convolution runs (the dropped weights count again)
    params = {k: v.detach() for k, v in conv.named_parameters()}

    def loss(p):
        with sparse_kernels(conv, {"weight": mask}, max_density=1.0):
            return torch.func.functional_call(conv, p, (x,)).sum()

    grads = torch.func.grad(loss)(params)
    assert (grads["weight"][~mask] != 0).any()


def test_lenet5_in_the_block_same_gradients_and_hessian_products():
    torch.manual_seed(0)
    model = build_model("lenet5").double()
    masks = Masks.random(model, 0.95, "uniform", seed=1)
    masks.apply(model)
    x = torch.randn(6, 1, 28, 28, dtype=torch.double)
    y = torch.randint(0, 10, (6,))
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    conv_w = [n in ("conv1.weight", "conv2.weight") for n in names]
    # in the block the gradient is m * grad f(m * w), whose Jacobian is m H m: compare on masked directions
    v = [torch.randn_like(p) * (masks[n] if c else 1) for n, p, c in zip(names, params, conv_w)]

    def grads_and_hvp(block: bool):
        with sparse_kernels(model, masks if block else None):
            logits = model(x)
        nodes = sum("SparseConv2d" in type(n).__name__ for n in _graph_nodes(logits))
        assert nodes == (2 if block else 0)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params, create_graph=True)
        hvp = torch.autograd.grad(sum((g * t).sum() for g, t in zip(grads, v)), params)
        return [g.detach() for g in grads], hvp, logits.detach()

    (g0, h0, l0), (g1, h1, l1) = grads_and_hvp(False), grads_and_hvp(True)
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    for name, c, a, b, ha, hb in zip(names, conv_w, g0, g1, h0, h1):
        m = masks[name] if c else 1
        torch.testing.assert_close(b, a * m, rtol=1e-10, atol=1e-14, msg=name)
        torch.testing.assert_close(hb, ha * m, rtol=1e-9, atol=1e-12, msg=name)
    assert any(not torch.equal(h, torch.zeros_like(h)) for h in h1)


def _graph_nodes(t: torch.Tensor):
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        todo.extend(n for n, _ in node.next_functions)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="lenet5", dataset="mnist", sparsity=0.95, distribution="uniform", steps=24, batch_size=16,
                metrics_batch=50, log_every=12, update_every=8, init="glorot", init_dist="uniform")
    base.update(kw)
    return TrainConfig(**base)


def _end_state(cfg: TrainConfig, out, run_id: str) -> tuple[dict, object]:
    trainer = setup_run(cfg, out, run_id=run_id, device="cpu", quiet=True)
    trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, trainer


def test_trainer_sparse_kernels_reproducible_close_to_dense_path_and_masked(tmp_path):
    cfg = _cfg(method="scratch")
    plain, _ = _end_state(cfg, tmp_path, "plain")
    sparse_cfg = dataclasses.replace(cfg, sparse_kernels=True)
    a, trainer = _end_state(sparse_cfg, tmp_path, "sparse-a")
    b, _ = _end_state(sparse_cfg, tmp_path, "sparse-b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same bits run to run
    assert any(not torch.equal(a[k], plain[k]) for k in a)  # another summation order: not the dense path's bits
    for k in a:
        torch.testing.assert_close(a[k], plain[k], rtol=1e-4, atol=1e-5)
    for name in trainer.masks:
        assert torch.equal(a[name][~trainer.masks[name]], torch.zeros_like(a[name][~trainer.masks[name]]))
    assert sparse_cfg.default_run_id() != cfg.default_run_id()  # the setting is part of the run's identity
    rows_plain = (tmp_path / "plain" / "metrics.csv").read_text().splitlines()
    rows_sparse = (tmp_path / "sparse-a" / "metrics.csv").read_text().splitlines()
    assert len(rows_plain) == len(rows_sparse) > 2


def test_rigl_growth_gradient_stays_dense_under_sparse_kernels(tmp_path):
    """RigL grows by the dense gradient: a sparse block around it would zero every candidate's score."""
    _, trainer = _end_state(_cfg(method="rigl", sparse_kernels=True, grow_batch="fixed"), tmp_path, "rigl")
    grads = trainer.dense_grow_grads()
    ref, _, _ = masked_gradient(trainer.model, None, trainer.grow_x, trainer.grow_y)
    for name in ("conv1.weight", "conv2.weight"):
        inactive = ~trainer.masks[name]
        assert (grads[name][inactive] != 0).any()
        assert torch.equal(grads[name], ref[name])
    with trainer.sparse_block():  # and the block itself does zero them: the check above can fail
        inside, _, _ = masked_gradient(trainer.model, None, trainer.grow_x, trainer.grow_y)
    assert torch.equal(inside["conv1.weight"][~trainer.masks["conv1.weight"]],
                       torch.zeros_like(inside["conv1.weight"][~trainer.masks["conv1.weight"]]))


def test_sparse_kernels_on_another_model_is_refused(tmp_path, capsys):
    from sparse_training.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--model", "lenet300", "--method", "scratch", "--sparse-kernels", "--steps", "2", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--sparse-kernels applies to lenet5" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
