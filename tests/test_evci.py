"""The paper-faithful protocol (presets evci-lenet5 / evci-mlp) and the options it needs: glorot init,
weight decay on weights only, the first-N metrics batch, fresh/fixed RigL growth batches, explicit
small-dense sizes, and the refusal to run without the full data."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_training.config import TrainConfig
from sparse_training.data import IDX_FILES
from sparse_training.errors import UserError
from sparse_training.init import initialize
from sparse_training.methods import prepare_start
from sparse_training.metrics import fixed_batches, metric_indices
from sparse_training.models import build_model, count_parameters
from sparse_training.presets import preset_runs
from sparse_training.trainer import make_optimizer, setup_run


def test_glorot_uniform_matches_keras_limits():
    """Keras glorot_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), conv fans include the kernel."""
    model = build_model("lenet5", (1, 28, 28), 10)
    initialize(model, None, "glorot", sampler="uniform", seed=0)
    fans = {"conv1.weight": (25, 150), "conv2.weight": (150, 400), "fc1.weight": (256, 120),
            "fc2.weight": (120, 84), "fc3.weight": (84, 10)}
    for name, p in model.named_parameters():
        if name in fans:
            a = math.sqrt(6.0 / sum(fans[name]))
            w = p.detach().double()
            assert w.abs().max().item() <= a
            assert w.abs().max().item() > 0.9 * a  # the whole interval is used
            assert w.std().item() == pytest.approx(a / math.sqrt(3), rel=0.15 if w.numel() < 1000 else 0.05)
        else:
            assert torch.count_nonzero(p) == 0  # biases start at zero


def test_init_gain_one_is_unit_scaled_fanin():
    """rigl_tf2's unit_scaled 'fanin_normal': variance 1/fan_in_i with fan_in_i the unit's active inputs."""
    model = build_model("lenet300", (1, 28, 28), 10)
    from sparse_training.masks import Masks

    masks = Masks.random(model, 0.9, "uniform", seed=0)
    initialize(model, masks, "sparse", "fanin", "normal", seed=1, gain="one")
    w, m = model.layers[0].weight.detach().double(), masks["layers.0.weight"]
    z = (w * m.sum(1, keepdim=True).sqrt())[m]  # standardized by each unit's own fan-in
    assert z.std().item() == pytest.approx(1.0, rel=0.03)


def test_weight_decay_on_weights_leaves_biases_alone():
    model = build_model("lenet5", (1, 28, 28), 10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.5, weight_decay_on="weights")
    opt = make_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        expected = 1.0 - 0.1 * 0.5 if name.endswith("weight") else 1.0
        assert torch.allclose(p, torch.full_like(p, expected)), name
    cfg_all = dataclasses.replace(cfg, weight_decay_on="all")
    assert len(make_optimizer(cfg_all, model).param_groups) == 1


def test_metric_indices_first_and_random():
    metric, grow = fixed_batches(60_000, 1000, "first")
    assert torch.equal(metric, torch.arange(1000)) and torch.equal(grow, torch.arange(1000, 2000))
    m2, g2 = fixed_batches(60_000, 1000)
    assert len(set(m2.tolist()) & set(g2.tolist())) == 0 and not torch.equal(m2, metric)
    assert torch.equal(m2, metric_indices(60_000, 1000, "random"))  # a fixed draw


def test_small_dense_sizes_give_the_papers_parameter_counts():
    lenet = build_model("lenet5", (1, 28, 28), 10, sizes=(3, 3, 27, 20))
    assert count_parameters(lenet) == 2399  # rigl_tf2 small_dense.gin: "2399 params"
    mlp = build_model("lenet300", (1, 28, 28), 10, sizes=(8, 8))
    assert count_parameters(mlp) == 6442  # mlp_configs/small_dense.gin: 6442
    with pytest.raises(UserError, match="4 sizes"):
        build_model("lenet5", (1, 28, 28), 10, sizes=(3, 3))


def test_evci_presets_settings():
    specs = {s.config.method: s.config for s in preset_runs("evci-lenet5", 1)}
    prune = specs["prune"]
    assert (prune.batch_size, prune.steps, prune.lr, prune.distribution) == (128, 11719, 0.05, "uniform")
    assert not prune.first_layer_dense and prune.full_data
    assert (prune.prune_begin_step, prune.prune_end_step, prune.prune_every) == (3000, 7000, 100)
    assert specs["scratch"].init == "glorot" and specs["scratch+"].init == "sparse"
    assert specs["rigl"].drop_schedule == "lr" and specs["rigl"].update_end == 1.0
    _, masks, extra = prepare_start(specs["small-dense"], (1, 28, 28), 10)
    assert extra["small_dense_params"] == 2399
    _, masks, _ = prepare_start(dataclasses.replace(prune, method="scratch"), (1, 28, 28), 10)
    for name in masks:  # every layer at 95%, first and last included (to within one weight)
        assert abs(masks[name].float().mean().item() - 0.05) <= 1 / masks[name].numel() + 1e-9, name
    mlp = {s.config.method: s.config for s in preset_runs("evci-mlp", 1)}
    assert (mlp["rigl"].lr, mlp["rigl"].sparsity, mlp["rigl"].update_every) == (0.2, 0.98, 500)
    _, _, extra = prepare_start(mlp["small-dense"], (1, 28, 28), 10)
    assert (extra["small_dense_params"], extra["sparse_active_params"]) == (6442, 5734)  # as the gin comment


def test_evci_preset_without_full_data_is_exit_2(tmp_path, monkeypatch, capsys):
    from sparse_training.suite import main

    monkeypatch.delenv("SPARSE_DATA", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "evci-lenet5", "--seeds", "1", "--out", str(tmp_path / "runs"),
              "--data-dir", str(tmp_path / "nodata")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "make data" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def fake_full_mnist(root: Path, n_train: int = 300, n_test: int = 50) -> Path:
    """A tiny dataset in the full-MNIST layout (DIR/mnist/*-ubyte), enough for the protocol's code paths."""
    from sparse_training.fetch import idx_bytes

    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), (np.arange(n_train) % 10).astype(np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), (np.arange(n_test) % 10).astype(np.uint8))
    for name, a in zip(IDX_FILES, arrays):
        (root / "mnist").mkdir(parents=True, exist_ok=True)
        (root / "mnist" / name).write_bytes(idx_bytes(a))
    return root


@pytest.mark.parametrize("grow_batch", ["fresh", "fixed"])
def test_grow_batch_fresh_draws_new_examples_per_update_and_run(tmp_path, grow_batch):
    data = fake_full_mnist(tmp_path / "data")
    cfg = TrainConfig(model="lenet5", method="rigl", sparsity=0.9, steps=20, batch_size=16, metrics_batch=50,
                      grow_batch=grow_batch, full_data=True)
    trainers = [setup_run(dataclasses.replace(cfg, seed=s), tmp_path / "runs", run_id=f"r{s}",
                          data_dir=str(data), quiet=True) for s in (0, 1)]
    t = trainers[0]
    a, b = t.grow_indices(100), t.grow_indices(200)
    if grow_batch == "fixed":
        assert a is None and b is None
        g1, g2 = t.dense_grow_grads(), t.dense_grow_grads()
        assert all(torch.equal(g1[n], g2[n]) for n in g1)
        return
    other = trainers[1].grow_indices(100)
    assert len(a) == 50 and len(set(a.tolist())) == 50
    assert not torch.equal(a, b) and not torch.equal(a, other)  # new per update, own per run
    assert torch.equal(a, t.grow_indices(100))  # reproducible
    t.step = 100
    g1 = t.dense_grow_grads()
    t.step = 200
    g2 = t.dense_grow_grads()
    assert any(not torch.equal(g1[n], g2[n]) for n in g1)  # same weights, other examples


def test_evci_protocol_runs_end_to_end_on_a_tiny_override(tmp_path):
    """The preset's run graph with a few steps on a tiny full-layout dataset: every method completes,
    rows use the first examples, prune masks are uniform per layer."""
    from sparse_training.presets import parse_overrides
    from sparse_training.rundir import RunDir
    from sparse_training.suite import run_suite

    data = fake_full_mnist(tmp_path / "data")
    overrides = parse_overrides(["steps=30", "prune_begin_step=5", "prune_end_step=15", "prune_every=5",
                                 "update_every=10", "log_every=10", "metrics_batch=50"])
    specs = preset_runs("evci-lenet5", 1, overrides)
    out = tmp_path / "runs"
    results = run_suite(specs, out, jobs=1, quiet=True, data_dir=str(data))
    assert (results["state"] == "complete").all(), results
    prune = RunDir(out / specs[0].run_id)
    end = prune.load("end")
    for name, m in end["masks"].items():
        assert abs(m.float().mean().item() - 0.05) <= 1 / m.numel() + 1e-9, name
    metrics = prune.read_metrics()
    assert set(metrics["step"]) >= {0, 10, 20, 30}


def test_reproduce_fetches_missing_full_data_only_when_asked(tmp_path, monkeypatch):
    from figures.reproduce import ensure_data
    from sparse_training import fetch

    specs = preset_runs("evci-lenet5", 1)
    with pytest.raises(UserError, match="make data"):
        ensure_data(specs, str(tmp_path), fetch=False)
    calls = []

    def fake_fetch(name, data_dir, **kwargs):
        calls.append(name)
        fake_full_mnist(Path(data_dir))
        return "fake"

    monkeypatch.setattr(fetch, "fetch_dataset", fake_fetch)
    ensure_data(specs, str(tmp_path), fetch=True)
    assert calls == ["mnist"]
    ensure_data(specs, str(tmp_path), fetch=True)  # present now: nothing fetched again
    assert calls == ["mnist"]
