"""Tests of analysis.hessian: CLI eigenvalues against numpy.linalg.eigh of the exact Hessian, checkpoint selection, bad inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch.nn.functional as F
from helpers import empty_or_unrelated_runs

from analysis import hessian
from analysis.hessian import count_negative, parse_which, summarize_updates, targets_of, update_table
from analysis.runs import Run
from landscape.exact import exact_hessian
from landscape.params import ParamSpace
from sparse_training.errors import UserError
from sparse_training.metrics import metric_indices

RIGL = "mlp-digits-s0.9-rigl-seed0"


def test_cli_eigenvalues_equal_eigh_of_the_exact_hessian(smoke_runs, tmp_path, capsys):
    out = tmp_path / "out"
    examples, k = 200, 4
    assert hessian.main([str(smoke_runs), "--run", f"^{RIGL}$", "--which", "40:pre,40:post", "--k", str(k),
                         "--examples", str(examples), "--slq", "--slq-probes", "2", "--slq-steps", "20",
                         "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "rigl: 1 updates over 1 runs" in printed
    eigen = pd.read_csv(out / "hessian.csv")
    assert list(eigen.columns) == hessian.EIGEN_COLUMNS
    assert (out / "hessian.png").stat().st_size > 0
    run = Run(smoke_runs / RIGL)
    data = run.dataset()
    idx = metric_indices(len(data.x_train), examples)  # the trainer's metrics batch, cut to 200
    x, y = data.x_train[idx], data.y_train[idx]
    for phase in ("pre", "post"):
        model = run.model(40, phase)
        masks = model.masks.as_dict()
        # the active coordinates: weights on the mask and every bias
        n_bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
        assert ParamSpace(model, masks).size == sum(int(m.sum()) for m in masks.values()) + n_bias
        exact = np.linalg.eigh(exact_hessian(model, F.cross_entropy, (x, y), masks).numpy())[0]
        mine = eigen[eigen["phase"] == phase]
        top = mine[mine["kind"] == "top"].sort_values("index")["eigenvalue"].to_numpy()
        bottom = mine[mine["kind"] == "bottom"].sort_values("index")["eigenvalue"].to_numpy()
        scale = exact[-1]  # float32 products: errors relative to the largest eigenvalue
        np.testing.assert_allclose(top, exact[::-1][:k], rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(bottom, exact[:k], rtol=0, atol=1e-5 * scale)
        assert mine["converged"].all() and (mine["step"] == 40).all()
    updates = pd.read_csv(out / "hessian_updates.csv")
    assert len(updates) == 1 and updates["step"].iloc[0] == 40
    assert updates["min_post"].iloc[0] == pytest.approx(
        eigen[(eigen["phase"] == "post") & (eigen["kind"] == "bottom") & (eigen["index"] == 0)]["eigenvalue"].iloc[0])
    assert 0.0 <= updates["neg_mass_pre"].iloc[0] <= 1.0 and 0.0 <= updates["neg_mass_post"].iloc[0] <= 1.0
    density = pd.read_csv(out / "hessian_density.csv")
    for _, g in density.groupby("phase"):
        assert np.trapezoid(g["density"], g["eigenvalue"]) == pytest.approx(1.0, abs=0.02)


def test_default_checkpoints_are_update_pairs_for_rigl_else_start_and_end(smoke_runs):
    rigl = Run(smoke_runs / RIGL)
    steps = rigl.update_steps()
    assert steps == [20, 40, 60, 80, 100]
    targets = targets_of(rigl, None)
    assert [(t.step, t.label) for t in targets] == [(s, p) for s in steps for p in ("pre", "post")]
    scratch = Run(smoke_runs / "mlp-digits-s0.9-scratch-seed0")
    assert [(t.step, t.label) for t in targets_of(scratch, None)] == [(0, "start"), (150, "end")]
    assert [t.label for t in targets_of(rigl, parse_which("start,end"))] == ["start", "end"]
    assert [(t.step, t.label) for t in targets_of(rigl, parse_which("100"))] == [(100, "periodic")]
    for bad in ("", "middle", "40:mid", "start,x"):
        with pytest.raises(UserError):
            parse_which(bad)


def test_update_table_counts_negative_eigenvalues():
    rows = []
    for phase, top, bottom in (("pre", 2.0, [-0.5, -1e-6, 0.1]), ("post", 3.0, [-0.9, -0.2, -0.01])):
        rows.append({"run_id": "r", "method": "rigl", "seed": 0, "step": 20, "phase": phase, "kind": "top",
                     "index": 0, "eigenvalue": top, "residual": 0.0, "converged": True})
        for i, v in enumerate(bottom):
            rows.append({"run_id": "r", "method": "rigl", "seed": 0, "step": 20, "phase": phase, "kind": "bottom",
                         "index": i, "eigenvalue": v, "residual": 0.0, "converged": True})
    table = update_table(pd.DataFrame(rows), neg_tol=1e-4)
    row = table.iloc[0]
    # -1e-6 is above -1e-4 * 2: rounding noise, not a negative eigenvalue
    assert (row["n_negative_pre"], row["n_negative_post"]) == (1, 3)
    assert (row["min_pre"], row["min_post"], row["top_pre"], row["top_post"]) == (-0.5, -0.9, 2.0, 3.0)
    text = summarize_updates(table, k=3)
    assert "increased in 1" in text and "grew in magnitude in 1" in text
    assert count_negative(np.array([-1.0, -0.5]), top=-1.0) == 2


def test_more_negative_needs_a_decrease_below_the_tolerance():
    updates = pd.DataFrame({"min_pre": [-0.5, -0.5, 1e-5, -0.2], "min_post": [-0.9, -0.4, -1e-5, -0.3],
                            "top_post": [3.0, 3.0, 3.0, -1.0]})
    # deeper; shallower; decreased but within -1e-4 * 3 of zero (noise); deeper with lambda_max < 0 (tolerance 0)
    assert hessian.more_negative(updates, 1e-4).tolist() == [True, False, False, True]


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        hessian.main(["--help"])
    assert exc.value.code == 0 and "--slq" in capsys.readouterr().out


BAD_ARGS = {
    "empty": [],
    "unrelated": [],
    "no-match": ["--method", "nonexistent"],
    "k": ["--k", "0"],
    "which": ["--which", "middle"],
    "no-checkpoint": ["--which", "999"],
    "examples": ["--examples", "0"],
    "corrupt": ["--run", f"^{RIGL}$", "--which", "end"],
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_input_exits_2_and_leaves_results(case, smoke_runs, tmp_path, request, capsys):
    # only the case that changes the runs directory needs a private copy
    runs = request.getfixturevalue("smoke_copy") if case == "corrupt" else smoke_runs
    if case in ("empty", "unrelated"):
        runs = empty_or_unrelated_runs(case, tmp_path)
    if case == "corrupt":
        end = runs / RIGL / "checkpoints" / "end.pt"
        end.write_bytes(end.read_bytes()[:100])
    out = tmp_path / "results"
    out.mkdir()
    (out / "hessian.csv").write_text("old\n")
    with pytest.raises(SystemExit) as exc:
        hessian.main([str(runs), "--out", str(out), "--quiet", *BAD_ARGS[case]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and err.endswith(".")
    assert [p.name for p in out.iterdir()] == ["hessian.csv"] and (out / "hessian.csv").read_text() == "old\n"
    if runs != smoke_runs:
        assert not (runs / "_analysis").exists()
