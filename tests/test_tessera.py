"""Tessera et al.'s study: SReLU, tensor augmentation, AdamW, evenly spaced gradient flow, the same-capacity
pairs of the presets, and figures.tessera end to end on the scsdc preset (statistics checked against scipy)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from sparse_training.augment import augment_batch, check_augment, random_flip, random_shift
from sparse_training.config import TrainConfig
from sparse_training.errors import UserError
from sparse_training.masks import maskable_names
from sparse_training.methods import prepare_start
from sparse_training.models import SReLU, build_model
from sparse_training.presets import REGULARIZATIONS, TESSERA_FMNIST, preset_runs


# --- SReLU ------------------------------------------------------------------------------
def srelu_reference(x: np.ndarray, tl, al, tr, ar) -> np.ndarray:
    """Jin et al.'s definition, element by element."""
    out = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        j = idx[1]
        if v >= tr[j]:
            out[idx] = tr[j] + ar[j] * (v - tr[j])
        elif v <= tl[j]:
            out[idx] = tl[j] + al[j] * (v - tl[j])
        else:
            out[idx] = v
    return out


def test_srelu_matches_its_piecewise_definition_and_has_exact_gradients():
    g = torch.Generator().manual_seed(0)
    act = SReLU(5).double()
    with torch.no_grad():
        act.t_left.copy_(-torch.rand(5, generator=g, dtype=torch.float64))
        act.a_left.copy_(torch.rand(5, generator=g, dtype=torch.float64))
        act.t_right.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.1)
        act.a_right.copy_(2 * torch.rand(5, generator=g, dtype=torch.float64))
    x = 2 * torch.randn(64, 5, generator=g, dtype=torch.float64)
    params = [p.detach().numpy() for p in (act.t_left, act.a_left, act.t_right, act.a_right)]
    assert np.allclose(act(x).detach().numpy(), srelu_reference(x.numpy(), *params))
    names = ("t_left", "a_left", "t_right", "a_right")

    def f(inp, *values):
        return torch.func.functional_call(act, dict(zip(names, values)), (inp,))

    # finite differences with respect to the input and all four parameters
    inputs = (x.clone().requires_grad_(True), *(getattr(act, n).detach().clone().requires_grad_(True) for n in names))
    assert torch.autograd.gradcheck(f, inputs)
    # per channel on images: dim 1
    img = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    assert np.allclose(act(img).detach().numpy().transpose(0, 2, 3, 1).reshape(-1, 5),
                       srelu_reference(img.numpy().transpose(0, 2, 3, 1).reshape(-1, 5), *params))


def test_srelu_in_mlp_has_parameters_per_unit_and_none_is_masked():
    model = build_model("mlp", input_shape=(6,), depth=2, hidden=8, activation="srelu")
    assert model.acts[0].t_left.shape == (8,)
    assert all("acts" not in n for n in maskable_names(model))


# --- augmentation ----------------------------------------------------------------------
def shift_oracle(x: np.ndarray, oy: int, ox: int, s: int) -> np.ndarray:
    """out[i, j] = x[clip(i + oy - s), clip(j + ox - s)]: a crop of the edge-padded image."""
    h, w = x.shape[-2:]
    rows = np.clip(np.arange(h) + oy - s, 0, h - 1)
    cols = np.clip(np.arange(w) + ox - s, 0, w - 1)
    return x[..., rows[:, None], cols[None, :]]


def test_random_shift_is_a_crop_of_the_edge_padded_image():
    x = torch.randn(16, 2, 7, 9, generator=torch.Generator().manual_seed(1))
    s = 2
    out = random_shift(x, s, torch.Generator().manual_seed(5))
    offsets = torch.randint(0, 2 * s + 1, (2, 16), generator=torch.Generator().manual_seed(5))
    for i in range(16):
        expected = shift_oracle(x[i].numpy(), int(offsets[0, i]), int(offsets[1, i]), s)
        assert np.array_equal(out[i].numpy(), expected)
    assert len({tuple(o) for o in offsets.T.tolist()}) > 1  # the offsets differ between images
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


def test_random_flip_mirrors_about_half_and_is_reproducible():
    x = torch.randn(400, 1, 5, 6)
    out = random_flip(x, torch.Generator().manual_seed(3))
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(400)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(400)])
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250
    again = augment_batch(x, "flip", 2, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    assert torch.equal(augment_batch(x, "none", 2, torch.Generator()), x)


def test_augmentation_needs_images():
    check_augment("shift+flip", (1, 28, 28))
    with pytest.raises(UserError, match="needs image data"):
        check_augment("shift", (64,))
    with pytest.raises(UserError, match="unknown augmentation"):
        check_augment("rotate", (1, 28, 28))


def test_training_with_augmentation_is_reproducible_and_changes_the_batches(tmp_path):
    from sparse_training.rundir import RunDir
    from sparse_training.train import main

    def end(run_id: str, *extra: str) -> dict:
        argv = ["--model", "mlp", "--dataset", "mnist", "--hidden", "8", "--depth", "1", "--steps", "6",
                "--out", str(tmp_path), "--run-id", run_id, "--quiet", *extra]
        assert main(argv) == 0
        return RunDir(tmp_path / run_id).load("end")["model"]

    a, b = end("a", "--augment", "shift+flip"), end("b", "--augment", "shift+flip")
    plain = end("c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.weight"], plain["layers.0.weight"])


# --- AdamW -----------------------------------------------------------------------------
def test_adamw_first_step_decays_weights_decoupled():
    from sparse_training.trainer import make_optimizer

    lr, wd = 0.01, 0.1
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    grad = torch.randn(2, 3)
    opt = make_optimizer(TrainConfig(optimizer="adamw", lr=lr, weight_decay=wd), model)
    model.weight.grad = grad.clone()
    model.bias.grad = torch.zeros(2)
    opt.step()
    # step 1: bias-corrected m = g, v = g^2, so the Adam step is lr * g / (|g| + eps); decay is lr * wd * w
    expected = w0 * (1 - lr * wd) - lr * grad / (grad.abs() + 1e-8)
    assert torch.allclose(model.weight.detach(), expected, atol=1e-7)
    adam = make_optimizer(TrainConfig(optimizer="adam", lr=lr, weight_decay=wd), model2 := torch.nn.Linear(3, 2))
    with torch.no_grad():
        model2.weight.copy_(w0)
    model2.weight.grad, model2.bias.grad = grad.clone(), torch.zeros(2)
    adam.step()
    assert not torch.allclose(model2.weight.detach(), expected, atol=1e-4)  # Adam's L2 is not decoupled


# --- evenly spaced points and the pairs --------------------------------------------------
def test_log_points_logs_exactly_eleven_evenly_spaced_steps(tmp_path):
    from sparse_training.rundir import RunDir
    from sparse_training.train import main

    assert main(["--model", "mlp", "--dataset", "digits", "--hidden", "8", "--depth", "1", "--steps", "23",
                 "--log-points", "10", "--out", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    m = RunDir(tmp_path / "r").read_metrics()
    assert m["step"].tolist() == [round(k * 23 / 10) for k in range(11)]


@pytest.mark.parametrize("preset", ["tessera-fmnist", "scsdc"])
def test_pairs_have_equal_nonzero_counts_per_layer_and_the_dense_init_distribution(preset):
    specs = preset_runs(preset, 1)
    shape = (1, 28, 28) if preset == "tessera-fmnist" else (64,)
    seen = set()
    for dense, sparse in zip(specs[::2], specs[1::2]):
        assert dense.config.method == "dense" and sparse.config.match_width == dense.config.width
        c = dense.config
        arch = (c.depth, c.width, c.batchnorm, c.skip)
        if arch in seen:  # optimizer, activation, L2 and augmentation do not change the counts
            continue
        seen.add(arch)
        dm, _, _ = prepare_start(dense.config, shape, 10)
        sm, smasks, _ = prepare_start(sparse.config, shape, 10)
        dparams, sparams = dict(dm.named_parameters()), dict(sm.named_parameters())
        names = maskable_names(dm)
        assert names == maskable_names(sm)
        for name in names:
            dense_nonzero = int((dparams[name] != 0).sum())
            assert dense_nonzero == dparams[name].numel()
            assert int((sparams[name] != 0).sum()) == dense_nonzero == smasks.active_counts()[name]
        # Tessera's rule: the sparse-wide active weights come from the dense-narrow weights' distribution
        first = names[0]
        active = sparams[first][smasks[first]].detach().numpy()
        assert stats.ks_2samp(active, dparams[first].detach().reshape(-1).numpy()).pvalue > 1e-3
    assert len(seen) >= 4


def test_tessera_preset_covers_the_three_tables():
    cells = TESSERA_FMNIST.cells()
    b = TESSERA_FMNIST.base_cell
    grid = {(c["optimizer"], c["regularization"]) for c in cells if c["activation"] == b["activation"]
            and c["depth"] == b["depth"] and c["fraction"] == b["fraction"]}
    assert grid == {(o, r) for o in TESSERA_FMNIST.optimizers for r in REGULARIZATIONS}
    acts = {(c["activation"], c["optimizer"]) for c in cells if c["regularization"] == "none"
            and c["depth"] == b["depth"] and c["fraction"] == b["fraction"]}
    assert acts == {(a, o) for a in TESSERA_FMNIST.activations for o in TESSERA_FMNIST.optimizers}
    sweep = {(c["depth"], c["fraction"]) for c in cells if c["optimizer"] == b["optimizer"]
             and c["activation"] == b["activation"] and c["regularization"] == "none"}
    assert sweep == {(d, f) for d in TESSERA_FMNIST.depths for f in TESSERA_FMNIST.fractions}
    assert len(cells) == len({tuple(sorted(c.items())) for c in cells})  # no cell twice
    assert len(preset_runs("tessera-fmnist")) == 2 * 5 * len(cells)


def test_tessera_preset_without_data_exits_2_pointing_to_make_data(tmp_path, capsys, monkeypatch):
    from sparse_training.suite import main

    monkeypatch.delenv("SPARSE_DATA", raising=False)
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "tessera-fmnist", "--out", str(out), "--seeds", "1", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "`make data`" in err and err.count("\n") == 0
    assert not out.exists()


# --- figures.tessera on the quick preset ----------------------------------------------------
@pytest.fixture(scope="module")
def scsdc_runs(tmp_path_factory) -> Path:
    """The scsdc preset (digits), 1 seed, a few steps per run: every cell, both networks."""
    from sparse_training.suite import main

    out = tmp_path_factory.mktemp("scsdc") / "runs"
    assert main(["--preset", "scsdc", "--seeds", "1", "--set", "steps=6", "--out", str(out), "--quiet"]) == 0
    return out


def test_figures_tessera_on_scsdc(scsdc_runs, tmp_path):
    from figures import tessera

    out = tmp_path / "fig"
    assert tessera.main([str(scsdc_runs), "--out", str(out), "--quiet", "--n-boot", "200"]) == 0
    pairs = pd.read_csv(out / "tessera_pairs.csv")
    runs = pd.read_csv(out / "tessera_runs.csv")
    assert len(pairs) == len(preset_runs("scsdc", 1)) // 2 and (runs["n_off_grid"] == 0).all()
    # each measure is the mean of the run's 11 rows at steps round(k T / 10), recomputed from metrics.csv
    from sparse_training.rundir import RunDir

    for r in runs.head(3).itertuples():
        m = RunDir(scsdc_runs / r.run_id).read_metrics().set_index("step")
        at = m.loc[[round(k * 6 / 10) for k in range(11)]]
        assert math.isclose(r.egf2, at["egf2"].mean(), rel_tol=1e-12)
        assert math.isclose(r.grad_norm_l1, at["grad_norm_l1"].mean(), rel_tol=1e-12)
    assert np.allclose(pairs["acc_diff"], pairs["test_acc_sparse"] - pairs["test_acc_dense"])
    # the correlation table's tau is scipy's
    corr = pd.read_csv(out / "tessera_correlations.csv")
    for r in corr.itertuples():
        sub = runs[runs["network"] == r.network]
        assert math.isclose(r.kendall_tau, stats.kendalltau(sub[r.measure], sub[r.target]).statistic,
                            abs_tol=1e-12)
    # claim T2a: an exact one-sided Wilcoxon of the BatchNorm cells with non-EWMA optimizers, as scipy computes it
    claims = pd.read_csv(out / "claims.csv").set_index("claim")
    bn = pairs[pairs["regularization"].str.startswith("bn") & ~pairs["optimizer"].isin(("adam", "rmsprop"))]
    d = bn["test_acc_sparse"] - bn["test_acc_dense"]
    if (d != 0).all() and len(set(d.abs())) == len(d):
        expected = stats.wilcoxon(bn["test_acc_sparse"], bn["test_acc_dense"], alternative="greater",
                                  method="exact").pvalue
        assert math.isclose(claims.loc["T2a", "p_value"], expected, rel_tol=1e-9)
    assert set(claims["verdict"]) <= {"held", "not held", "inconclusive"}
    assert list(claims.index) == ["T1", "T2a", "T2b", "T3", "T4a", "T4b"]
    report = (out / "REPORT.md").read_text()
    assert "| optimizer | none | l2 | bn | bn+l2 |" in report
    for png in ("fig_tessera_activation.png", "fig_tessera_egf.png", "fig_tessera_sweep.png"):
        assert (out / png).stat().st_size > 1000


def test_cell_p_values_are_scipys_exact_wilcoxon():
    from figures.tessera import cell_tests

    rng = np.random.default_rng(0)
    rows = []
    for opt in ("sgd", "adam"):
        dense = rng.uniform(0.7, 0.8, 6)
        sparse = dense + rng.normal(0.01 if opt == "sgd" else -0.01, 0.01, 6)
        for s in range(6):
            rows.append({"optimizer": opt, "regularization": "bn", "seed": s, "test_acc_dense": dense[s],
                         "test_acc_sparse": sparse[s], "acc_diff": sparse[s] - dense[s]})
    table = cell_tests(pd.DataFrame(rows), ["optimizer", "regularization"]).set_index("optimizer")
    for opt, g in pd.DataFrame(rows).groupby("optimizer"):
        p = stats.wilcoxon(g["test_acc_sparse"], g["test_acc_dense"], alternative="greater", method="exact").pvalue
        assert math.isclose(table.loc[opt, "p_sparse_greater"], p, rel_tol=1e-9)


@pytest.mark.parametrize("case", ["empty", "no-pairs"])
def test_figures_tessera_bad_input_exit_2(case, tmp_path, capsys, scsdc_runs):
    import shutil

    from figures import tessera

    root = tmp_path / "runs"
    root.mkdir()
    if case == "no-pairs":  # dense-narrow runs without their sparse-wide partners
        for run in sorted(scsdc_runs.glob("*-dense-narrow-seed0*"))[:2]:
            shutil.copytree(run, root / run.name)
    out = tmp_path / "fig"
    with pytest.raises(SystemExit) as exc:
        tessera.main([str(root), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and err.startswith("error: ")
    assert ("partner" in err) == (case == "no-pairs")
    assert not out.exists()


# --- the length study ------------------------------------------------------------------------
def test_tessera_length_preset_layout():
    from sparse_training.presets import TESSERA_LENGTH

    specs = preset_runs("tessera-length")
    cfgs = [s.config for s in specs]
    assert len(specs) == len(TESSERA_LENGTH.cells()) * 2 * 8 and len({s.run_id for s in specs}) == len(specs)
    core = {(c.optimizer, c.batchnorm, c.epochs) for c in cfgs if c.activation == "relu" and c.lr is None}
    assert core == {(o, bn, e) for o in ("sgd", "momentum", "adam", "rmsprop") for bn in (False, True)
                    for e in (2, 8, 32)}
    extra = {(c.optimizer, c.activation, c.epochs) for c in cfgs if c.activation != "relu"}
    assert extra == {(o, a, 32) for o in ("momentum", "adam") for a in ("swish", "prelu")}
    assert {(c.optimizer, c.lr, c.epochs) for c in cfgs if c.lr is not None} == {("adam", 0.1, 32), ("rmsprop", 0.1, 32)}
    for dense, sparse in zip(specs[::2], specs[1::2]):  # pairs: same settings and seed, one dense, one sparse
        assert dense.config.method == "dense" and sparse.config.match_width == dense.config.width == 0.25
        assert (dense.config.seed, dense.config.epochs, dense.config.lr) == \
            (sparse.config.seed, sparse.config.epochs, sparse.config.lr)
        assert dense.config.log_points == sparse.config.log_points == 10


def test_cell_tests_mark_fragile_cells_by_leaving_one_seed_out():
    """All-positive differences: p = 2^-n exactly. With 5 seeds p = 1/32 < 0.05, but any 4 give 1/16 > 0.05:
    fragile; with 8 seeds p = 1/256 and any 7 give 1/128: robust."""
    from figures.tessera import cell_tests

    rows = []
    for opt, n in (("sgd", 5), ("adam", 8)):
        for s in range(n):
            d = 0.7 + 0.01 * s
            rows.append({"optimizer": opt, "regularization": "bn", "seed": s, "test_acc_dense": d,
                         "test_acc_sparse": d + 0.01 * (s + 1), "acc_diff": 0.01 * (s + 1)})
    t = cell_tests(pd.DataFrame(rows), ["optimizer", "regularization"]).set_index("optimizer")
    assert math.isclose(t.loc["sgd", "p_sparse_greater"], 1 / 32) and math.isclose(t.loc["adam", "p_sparse_greater"], 1 / 256)
    assert bool(t.loc["sgd", "fragile"]) and (t.loc["sgd", "loo_same"], t.loc["sgd", "loo_total"]) == (0, 5)
    assert not bool(t.loc["adam", "fragile"]) and (t.loc["adam", "loo_same"], t.loc["adam", "loo_total"]) == (8, 8)


@pytest.fixture(scope="module")
def length_runs(tmp_path_factory) -> Path:
    """The scsdc-length preset (digits, 2 and 6 epochs), 2 seeds, batch 128 to keep it to seconds."""
    from sparse_training.suite import main

    out = tmp_path_factory.mktemp("scsdc-length") / "runs"
    assert main(["--preset", "scsdc-length", "--seeds", "2", "--set", "batch_size=128", "--out", str(out),
                 "--quiet"]) == 0
    return out


def test_figures_tessera_length_axis(length_runs, tmp_path, monkeypatch):
    from figures import tessera
    from sparse_training.presets import SCSDC_LENGTH
    from sparse_training.rundir import RunDir

    monkeypatch.chdir(length_runs.parent)
    out = tmp_path / "fig"
    assert tessera.main(["runs", "--out", str(out), "--quiet", "--n-boot", "200"]) == 0
    for d in ("epochs-2", "epochs-6"):  # a full study per length
        assert (out / d / "REPORT.md").is_file() and (out / d / "claims.csv").is_file()
    claims = pd.read_csv(out / "claims_by_length.csv")
    assert sorted(claims["epochs"].unique()) == [2.0, 6.0] and len(claims) == 2 * len(tessera.CLAIMS)
    for e, g in claims.groupby("epochs"):  # the matrix repeats each length's own claims.csv
        own = pd.read_csv(out / f"epochs-{e:g}" / "claims.csv")
        assert g["verdict"].tolist() == own["verdict"].tolist()
        assert (g["setting"] == "runs").all()  # the runs directory as given, not an absolute path
    # the length table against the pairs computed here from the runs' own metrics
    pairs = pd.read_csv(out / "tessera_pairs.csv")
    assert set(pairs["epochs"]) == {2.0, 6.0} and len(pairs) == len(SCSDC_LENGTH.cells()) * 2
    for r in pairs.itertuples():
        for rid, acc in ((r.run_id_dense, r.test_acc_dense), (r.run_id_sparse, r.test_acc_sparse)):
            assert math.isclose(RunDir(length_runs / rid).read_metrics()["test_acc"].iloc[-1], acc)
    table = pd.read_csv(out / "tessera_length.csv")
    base = pairs[pairs["lr_default"] & (pairs["activation"] == "relu")]
    assert len(table) == 2 * 2 * 2  # momentum/adam x none/bn x 2 lengths
    for r in table.itertuples():
        g = base[(base["optimizer"] == r.optimizer) & (base["regularization"] == r.regularization)
                 & (base["epochs"] == r.epochs)]
        assert math.isclose(r.mean_diff, (g["test_acc_sparse"] - g["test_acc_dense"]).mean(), abs_tol=1e-12)
    other = pd.read_csv(out / "tessera_other_lr.csv")
    assert set(other["lr"]) == {0.001, 0.1} and set(other["optimizer"]) == {"adam"}
    tau = pd.read_csv(out / "tessera_length_tau.csv")
    assert set(tau["p"]) == {1, 2} and len(tau) == 4
    report = (out / "REPORT.md").read_text()
    assert "## Claims × lengths" in report and "| T3 |" in report and "[epochs-6](epochs-6/REPORT.md)" in report
    assert "/tmp/" not in report and "Generated by `python -m figures.tessera runs`" in report
    for png in ("fig_tessera_length.png", "fig_tessera_length_tau.png"):
        assert (out / png).stat().st_size > 1000


# --- the paper's grid (tessera-paper): built and checked here, not trained --------------------
def test_tessera_paper_grid_and_pairing():
    from sparse_training.presets import TESSERA_PAPER

    specs = preset_runs("tessera-paper", 1)
    cells = TESSERA_PAPER.cells()
    assert len(specs) == 2 * len(cells) == 2 * 2 * 3 * 9 * (5 * 8 + 6 * 5 - 5)
    cfgs = [s.config for s in specs]
    assert {c.epochs for c in cfgs} == {500} and {c.hidden for c in cfgs} == {3076}
    assert {c.lr for c in cfgs} == {0.001, 0.1} and {c.depth for c in cfgs} == {1, 2, 4}
    widths = sorted({round(3076 * c.width) for c in cfgs if c.method == "dense"})
    assert widths[0] == 308 and widths[-1] == 2768 and len(widths) == 9
    # the pairing on a few cells: equal active weights per layer, built for real (not on the meta device)
    picks = [0, len(specs) // 2 + 40, len(specs) - 2]
    for i in picks:
        dense, sparse = specs[i], specs[i + 1]
        assert dense.run_id.replace("dense-narrow", "sparse-wide") == sparse.run_id
        assert sparse.config.match_width == dense.config.width and dense.config.seed == sparse.config.seed
        _, dmasks, _ = prepare_start(dense.config, (1, 28, 28), 10)
        _, smasks, _ = prepare_start(sparse.config, (1, 28, 28), 10)
        assert smasks.active_counts() == {n: int(dmasks[n].numel()) for n in dmasks}


def test_compute_estimate_sums_steps_times_the_timed_step():
    """The estimate with a stand-in timer: one timing per architecture, steps from epochs and batch size."""
    import torch

    from sparse_training.estimate import arch_key, estimate

    specs = preset_runs("tessera-length", 2)
    timed = []

    def timer(cfg, device):
        timed.append(arch_key(cfg))
        return 0.001 * (1 + cfg.depth) * (2 if cfg.is_sparse() else 1)

    table = estimate([s.config for s in specs], torch.device("cpu"), timer=timer, progress=False)
    assert len(timed) == len(set(timed)) == len(table)
    expected = sum(c.epochs * 469 * 0.001 * (1 + c.depth) * (2 if c.is_sparse() else 1)
                   for c in (s.config for s in specs))
    assert math.isclose(table["device_seconds"].sum(), expected, rel_tol=1e-12)
    assert int(table["runs"].sum()) == len(specs)


def test_tessera_paper_dry_run_prints_size_and_estimate(capsys, tmp_path, monkeypatch):
    """The dry run's estimate on a smaller copy of the grid (width 64), timed for real on the CPU."""
    import sparse_training.presets as presets
    from sparse_training.suite import main

    small = dataclasses.replace(presets.TESSERA_PAPER, base=dict(presets.TESSERA_PAPER.base, hidden=64),
                                depths=(1,), fractions=(0.5,), lrs=(0.1,))
    build = lambda n: presets.pair_specs(small.prefix, small.base, small.input_shape, small.cells(), n)  # noqa: E731
    monkeypatch.setitem(presets.PRESETS, "tessera-paper", ("test copy", build, 1))
    assert main(["--preset", "tessera-paper", "--dry-run", "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out = capsys.readouterr().out
    n = len(build(1))
    assert f"tessera-paper: {n:,} runs" in out
    line = next(x for x in out.splitlines() if x.startswith("compute estimate on cpu"))
    assert f"{n:,} runs, {n * 500 * 469:,} training steps" in line and "device-hours" in line
    assert not (tmp_path / "runs").exists()


def test_figures_tessera_lr_picks_the_studied_rate(length_runs, tmp_path, capsys):
    """--lr 0.1 judges the claims on the pairs at 0.1 (scsdc-length: Adam at 6 epochs only); a rate no pair has
    is one sentence and exit 2, nothing written."""
    from figures import tessera

    out = tmp_path / "fig"
    assert tessera.main([str(length_runs), "--out", str(out), "--quiet", "--n-boot", "200", "--lr", "0.1"]) == 0
    pairs = pd.read_csv(out / "tessera_pairs.csv")
    other = pd.read_csv(out / "tessera_other_lr.csv")  # the default-rate pairs of the same cells
    assert set(pairs["lr"]) == {0.1} and set(pairs["optimizer"]) == {"adam"} and set(other["lr"]) == {0.001, 0.1}
    assert pd.read_csv(out / "claims.csv")["n"].max() <= 2 * 2  # two cells (none, bn) x 2 seeds at most
    bad = tmp_path / "bad"
    with pytest.raises(SystemExit) as exc:
        tessera.main([str(length_runs), "--out", str(bad), "--quiet", "--lr", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "learning rate 0.5" in err and "--lr" in err
    assert not bad.exists()
