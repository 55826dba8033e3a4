"""Tests of sparse_training.metrics: masked gradients (autograd and finite differences), EGF by hand, evaluation."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from torch import nn

from sparse_training.masks import Masks, maskable_names
from landscape.evaluate import evaluate
from sparse_training.metrics import (
    gradient_flow,
    layer_of,
    masked_gradient,
    param_distance,
    preserved_buffers,
)
from sparse_training.models import build_model


def bn_mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("mlp", input_shape=(6,), num_classes=3, depth=2, hidden=8, batchnorm=True)
    return model.to(dtype)


def data(n: int = 24, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def buffers_of(model):
    return {k: v.clone() for k, v in model.named_buffers()}


# ---------------------------------------------------------------------------
# masked_gradient


def test_masked_gradient_equals_autograd_times_mask():
    model = bn_mlp()
    masks = Masks.random(model, 0.6, seed=0)
    masks.apply(model)
    x, y = data()
    model.eval()  # the measurement must use training-mode BatchNorm anyway
    before = buffers_of(model)
    grads, loss, acc = masked_gradient(model, masks, x, y)

    manual = copy.deepcopy(model).train()
    logits = manual(x)
    manual_loss = nn.functional.cross_entropy(logits, y)
    manual_loss.backward()
    mparams = dict(manual.named_parameters())
    assert set(grads) == set(mparams)
    for name, g in grads.items():
        expected = mparams[name].grad * masks[name] if name in masks else mparams[name].grad
        assert torch.allclose(g, expected, atol=1e-7), name
        if name in masks:
            assert torch.equal(g[~masks[name]], torch.zeros_like(g[~masks[name]]))
    assert loss == pytest.approx(manual_loss.item(), rel=1e-6)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    # no trace: mode, buffers and .grad are as they were
    assert not model.training
    after = buffers_of(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_chunked_masked_gradient_equals_the_whole_batch_gradient_and_keeps_batchnorm_whole():
    torch.manual_seed(0)
    model = build_model("lenet5", input_shape=(1, 16, 16), num_classes=10).double()
    masks = Masks.random(model, 0.8, seed=0)
    masks.apply(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(70, 1, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (70,), generator=g)
    whole, loss, acc = masked_gradient(model, masks, x, y)
    parts, loss_c, acc_c = masked_gradient(model, masks, x, y, chunk=16)  # 16+16+16+16+6: a ragged last chunk
    for name in whole:
        assert torch.allclose(parts[name], whole[name], rtol=1e-12, atol=1e-15), name
        if name in masks:
            assert torch.equal(parts[name][~masks[name]], torch.zeros_like(parts[name][~masks[name]]))
    assert loss_c == pytest.approx(loss, rel=1e-12) and acc_c == acc
    # BatchNorm in training mode: chunks would change the batch statistics, so the batch goes whole
    bn = bn_mlp(dtype=torch.float64)
    xb, yb = data(dtype=torch.float64)
    ref, ref_loss, _ = masked_gradient(bn, None, xb, yb)
    same, same_loss, _ = masked_gradient(bn, None, xb, yb, chunk=5)
    assert all(torch.equal(ref[k], same[k]) for k in ref) and same_loss == ref_loss
    # ... while in eval mode (running statistics) chunking is exact again
    ev, _, _ = masked_gradient(bn, None, xb, yb, train_mode=False)
    ev_c, _, _ = masked_gradient(bn, None, xb, yb, train_mode=False, chunk=5)
    assert all(torch.allclose(ev[k], ev_c[k], rtol=1e-12, atol=1e-15) for k in ev)
    assert not all(torch.allclose(ev[k], ref[k], rtol=1e-6) for k in ev)  # eval mode really differs


def test_masked_gradient_matches_finite_differences():
    model = bn_mlp(1, dtype=torch.float64)
    masks = Masks.random(model, 0.5, seed=1)
    masks.apply(model)
    x, y = data(dtype=torch.float64)
    grads, loss, _ = masked_gradient(model, masks, x, y)
    params = dict(model.named_parameters())

    def loss_at() -> float:
        with preserved_buffers(model):
            model.train()
            return nn.functional.cross_entropy(model(x), y).item()

    assert loss_at() == pytest.approx(loss, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for name in ("layers.0.weight", "layers.1.bias", "head.weight", "norms.0.weight"):
        p = params[name]
        for _ in range(3):
            i = int(torch.randint(p.numel(), (1,), generator=g))
            with torch.no_grad():
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + eps
                up = loss_at()
                p.view(-1)[i] = old - eps
                down = loss_at()
                p.view(-1)[i] = old
            fd = (up - down) / (2 * eps)
            if name in masks and not masks[name].view(-1)[i]:
                fd = 0.0  # a masked weight's gradient is reported as zero
            assert grads[name].view(-1)[i].item() == pytest.approx(fd, abs=1e-7), (name, i)


def test_masked_gradient_without_masks_is_dense():
    model = bn_mlp()
    x, y = data()
    grads, _, _ = masked_gradient(model, None, x, y)
    manual = copy.deepcopy(model).train()
    nn.functional.cross_entropy(manual(x), y).backward()
    for name, p in manual.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-7)
    assert (grads["layers.0.weight"] != 0).float().mean() > 0.9


# ---------------------------------------------------------------------------
# gradient_flow by hand


def hand_case():
    grads = {
        "fc1.weight": torch.tensor([[3.0, 0.0], [0.0, -4.0]]),
        "fc1.bias": torch.tensor([1.0, 2.0]),
        "fc2.weight": torch.tensor([[1.0, -1.0, 2.0]]),
        "fc2.bias": torch.tensor([2.0]),
    }
    masks = Masks({"fc1.weight": torch.tensor([[1, 0], [0, 1]]), "fc2.weight": torch.tensor([[1, 1, 1]])})
    return grads, masks


def test_gradient_flow_hand_values():
    grads, masks = hand_case()
    row = gradient_flow(grads, masks, ["fc1.weight", "fc2.weight"])
    # all entries: 9 + 16 + 1 + 4 + 1 + 1 + 4 + 4 = 40; |.| sum = 3 + 4 + 1 + 2 + 1 + 1 + 2 + 2 = 16
    assert row["grad_norm"] == pytest.approx(math.sqrt(40))
    assert row["grad_norm_l1"] == pytest.approx(16)
    # EGF over the two maskable layers: ||fc1.w|| = (7, 5), ||fc2.w|| = (4, sqrt 6)
    assert row["egf1"] == pytest.approx((7 + 4) / 2)
    assert row["egf2"] == pytest.approx((5 + math.sqrt(6)) / 2)
    # per weight: fc1 has 2 active weights, fc2 has 3
    assert row["egf2_per_weight"] == pytest.approx((5 / 2 + math.sqrt(6) / 3) / 2)
    assert row["grad_norm/fc1"] == pytest.approx(math.sqrt(25 + 5))
    assert row["grad_norm/fc2"] == pytest.approx(math.sqrt(6 + 4))
    assert set(row) == {"grad_norm", "grad_norm_l1", "egf1", "egf2", "egf2_per_weight",
                        "grad_norm/fc1", "grad_norm/fc2"}


def test_gradient_flow_dense_counts_every_weight():
    grads, _ = hand_case()
    row = gradient_flow(grads, None, ["fc1.weight", "fc2.weight"])
    assert row["egf2_per_weight"] == pytest.approx((5 / 4 + math.sqrt(6) / 3) / 2)
    assert row["egf2"] == pytest.approx((5 + math.sqrt(6)) / 2)


def test_gradient_flow_on_real_model_against_numpy():
    model = bn_mlp(3)
    masks = Masks.random(model, 0.7, seed=3)
    masks.apply(model)
    x, y = data(seed=3)
    grads, _, _ = masked_gradient(model, masks, x, y)
    names = maskable_names(model)
    row = gradient_flow(grads, masks, names)
    arrays = {k: v.double().numpy() for k, v in grads.items()}
    assert row["grad_norm"] == pytest.approx(np.sqrt(sum((a**2).sum() for a in arrays.values())), rel=1e-10)
    assert row["egf1"] == pytest.approx(np.mean([np.abs(arrays[n]).sum() for n in names]), rel=1e-10)
    assert row["egf2"] == pytest.approx(np.mean([np.sqrt((arrays[n] ** 2).sum()) for n in names]), rel=1e-10)
    per_weight = [np.sqrt((arrays[n] ** 2).sum()) / masks[n].sum().item() for n in names]
    assert row["egf2_per_weight"] == pytest.approx(np.mean(per_weight), rel=1e-10)
    for layer in ("layers.0", "norms.1", "head"):
        sq = sum((a**2).sum() for k, a in arrays.items() if k.rsplit(".", 1)[0] == layer)
        assert row[f"grad_norm/{layer}"] == pytest.approx(np.sqrt(sq), rel=1e-10)


def test_layer_of():
    assert layer_of("fc1.weight") == "fc1"
    assert layer_of("layers.0.bias") == "layers.0"
    assert layer_of("weight") == "weight"


# ---------------------------------------------------------------------------
# buffers, evaluation, distances


def test_preserved_buffers_restores_batchnorm_stats():
    model = bn_mlp().train()
    before = buffers_of(model)
    with preserved_buffers(model):
        model(torch.randn(16, 6) * 4 + 2)
        changed = buffers_of(model)
    assert not torch.equal(changed["norms.0.running_mean"], before["norms.0.running_mean"])
    assert changed["norms.0.num_batches_tracked"] == before["norms.0.num_batches_tracked"] + 1
    after = buffers_of(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_preserved_buffers_restores_on_error():
    model = bn_mlp().train()
    before = buffers_of(model)
    with pytest.raises(RuntimeError, match="boom"), preserved_buffers(model):
        model(torch.randn(16, 6) + 5)
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in buffers_of(model).items())


@pytest.mark.parametrize("batch_size", [1000, 10, 7])
def test_evaluate_matches_manual_cross_entropy_and_accuracy(batch_size):
    """The trainer's test loss comes from landscape.evaluate (the one evaluate): eval mode, state restored."""
    model = bn_mlp(4)
    model.train()
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        for _ in range(3):
            model(torch.randn(32, 6) * 2 + 1)
    x, y = data(n=37, seed=4)
    before = buffers_of(model)
    res = evaluate(model, (x, y), batch_size=batch_size)
    loss, acc = res.loss, res.accuracy
    assert model.training  # mode restored
    assert all(torch.equal(v, before[k]) for k, v in buffers_of(model).items())
    model.eval()
    with torch.no_grad():
        logits = model(x).double().numpy()
    model.train()
    log_probs = logits - logsumexp(logits, axis=1, keepdims=True)
    manual_loss = -log_probs[np.arange(37), y.numpy()].mean()
    manual_acc = (logits.argmax(1) == y.numpy()).mean()
    assert loss == pytest.approx(manual_loss, rel=1e-5)
    assert acc == pytest.approx(manual_acc)
    assert acc * 37 == pytest.approx(round(acc * 37))


def test_param_distance_direct():
    model = bn_mlp(5)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    assert param_distance(model, reference) == 0.0
    with torch.no_grad():
        model.layers[0].weight[0, 0] += 3.0
        model.head.bias[1] -= 4.0
        model.norms[1].running_mean.add_(100.0)  # buffers are not parameters: ignored
    assert param_distance(model, reference) == pytest.approx(5.0, rel=1e-6)
    other = bn_mlp(6)
    ref2 = other.state_dict()
    direct = math.sqrt(sum(((p.detach().double() - ref2[n].double()) ** 2).sum().item()
                           for n, p in model.named_parameters()))
    assert param_distance(model, ref2) == pytest.approx(direct, rel=1e-12)
    assert direct > 1.0
