"""Tests of landscape.evaluate: batched loss/accuracy, logits and labels, tensor pairs and batch iterables."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape.evaluate import EvalResult, evaluate, iterate_batches, predict_labels, predict_logits


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    x, y = torch.randn(103, 5), torch.randint(0, 3, (103,))
    with torch.no_grad():
        model.train()
        model(x)
    return model, x, y


def test_evaluate_matches_one_full_batch_in_eval_mode():
    model, x, y = _setup()
    model.train()
    res = evaluate(model, (x, y), batch_size=10)
    assert isinstance(res, EvalResult) and res.n == 103
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert res.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert res.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    with pytest.raises(AttributeError):
        res.loss = 0.0  # frozen


def test_tensor_pair_and_loader_agree():
    model, x, y = _setup()
    loader = DataLoader(TensorDataset(x, y), batch_size=17)
    a = evaluate(model, (x, y), batch_size=None)
    b = evaluate(model, loader)
    assert a.n == b.n == 103
    assert a.loss == pytest.approx(b.loss, rel=1e-6)
    assert a.accuracy == b.accuracy
    assert sum(bx.shape[0] for bx, _ in iterate_batches(loader)) == 103


def test_predict_logits_and_labels():
    model, x, y = _setup()
    logits = predict_logits(model, x, batch_size=7)
    assert logits.shape == (103, 3)
    assert torch.equal(predict_labels(model, (x, y), batch_size=50), logits.argmax(1))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-6)


def test_non_class_targets_give_nan_accuracy():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    res = evaluate(model, (x, y), F.mse_loss, batch_size=6)
    assert math.isnan(res.accuracy)
    with torch.no_grad():
        expected = float(F.mse_loss(model(x), y))
    assert res.loss == pytest.approx(expected, rel=1e-6)


def test_bad_data_is_refused():
    model, x, _ = _setup()
    with pytest.raises(TypeError):
        evaluate(model, x)
    with pytest.raises(ValueError):
        evaluate(model, [])
