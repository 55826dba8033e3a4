"""Tests of analysis.gradflow: curves against a pandas groupby, correlations against scipy by hand, claims, bad inputs."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from helpers import empty_or_unrelated_runs

from analysis import gradflow
from analysis.gradflow import rank_correlation
from analysis.runs import Run


@pytest.fixture(scope="module")
def outputs(smoke_runs, tmp_path_factory):
    """The CLI run once over the smoke runs: (runs dir, output dir, printed text)."""
    out = tmp_path_factory.mktemp("gradflow")
    assert gradflow.main([str(smoke_runs), "--out", str(out), "--quiet"]) == 0
    return smoke_runs, out


def _train_rows(runs) -> pd.DataFrame:
    """Every run's train-phase metrics rows with its method, read directly."""
    frames = []
    for d in sorted(p for p in runs.iterdir() if (p / "config.json").is_file()):
        run = Run(d)
        m = pd.read_csv(d / "metrics.csv")
        m = m[m["phase"] == "train"].copy()
        m["method"], m["run_id"], m["total"] = run.method, run.run_id, run.config["total_steps"]
        frames.append(m)
    return pd.concat(frames, ignore_index=True)


def test_outputs_exist_with_their_columns(outputs):
    _, out = outputs
    for name, cols in (("gradflow_curves.csv", gradflow.CURVE_COLUMNS), ("gradflow_runs.csv", gradflow.RUN_COLUMNS),
                       ("gradflow_correlations.csv", gradflow.CORR_COLUMNS),
                       ("gradflow_claims.csv", gradflow.CLAIM_COLUMNS)):
        assert list(pd.read_csv(out / name).columns) == cols
    assert (out / "gradflow.png").stat().st_size > 0


def test_curves_equal_a_pandas_groupby_by_hand(outputs):
    runs, out = outputs
    rows = _train_rows(runs)
    table = pd.read_csv(out / "gradflow_curves.csv")
    for measure in ("grad_norm", "egf2", "grad_norm_l1"):
        expected = rows.groupby(["method", "step"])[measure].agg(["mean", "std", "count"]).reset_index()
        mine = table[table["measure"] == measure].merge(expected, on=["method", "step"], suffixes=("", "_hand"))
        assert len(mine) == len(expected) == len(table[table["measure"] == measure])
        np.testing.assert_allclose(mine["mean"], mine["mean_hand"], rtol=1e-12)
        np.testing.assert_allclose(mine["std"], mine["std_hand"], rtol=1e-9, equal_nan=True)
        assert (mine["n"] == mine["count"]).all()
    # the pre/post mask-update rows are no training rows
    rigl = table[(table["method"] == "rigl") & (table["measure"] == "grad_norm")]
    assert rigl["n"].max() == 2 and len(rigl) == rows[rows["method"] == "rigl"]["step"].nunique()


def test_per_run_aggregates_by_hand(outputs):
    runs, out = outputs
    per_run = pd.read_csv(out / "gradflow_runs.csv")
    rows = _train_rows(runs)
    for run_id in ("mlp-digits-s0.9-scratch+-seed1", "mlp-digits-s0.9-rigl-seed0"):
        m = rows[rows["run_id"] == run_id].sort_values("step")
        mine = per_run[(per_run["run_id"] == run_id) & (per_run["measure"] == "egf1")].set_index("aggregation")
        early = m[(m["step"] > 0) & (m["step"] <= 0.1 * m["total"])]
        assert len(early) >= 2  # steps 1, 2, 4, 8 of 150
        assert mine.loc["mean", "value"] == pytest.approx(m["egf1"].mean())
        assert mine.loc["init", "value"] == pytest.approx(m[m["step"] == 0]["egf1"].iloc[0])
        assert mine.loc["early", "value"] == pytest.approx(early["egf1"].mean())
        assert mine["final_test_acc"].iloc[0] == pytest.approx(m["test_acc"].iloc[-1])
        assert mine["final_test_loss"].iloc[0] == pytest.approx(m["test_loss"].iloc[-1])
        # 11 evenly spaced points of training, each the nearest logged row
        total = int(m["total"].iloc[0])
        nearest = [m.iloc[(m["step"] - t).abs().argmin()]["egf1"] for t in np.linspace(0, total, 11)]
        assert mine.loc["spaced", "value"] == pytest.approx(np.mean(nearest))
    groups = per_run.groupby("group")["run_id"].nunique()
    assert groups["dense"] == 2 and groups["sparse"] == 10 and groups["prune"] == 2  # prune runs apart


def test_correlations_equal_scipy_on_the_per_run_table(outputs):
    _, out = outputs
    per_run = pd.read_csv(out / "gradflow_runs.csv")
    corr = pd.read_csv(out / "gradflow_correlations.csv")
    assert len(corr) == 2 * len(gradflow.MEASURES) * len(gradflow.AGGREGATIONS) * len(gradflow.TARGETS)
    checked = 0
    for measure in ("grad_norm", "egf1", "egf2_per_weight"):
        for agg in ("mean", "early"):
            s = per_run[(per_run["group"] == "sparse") & (per_run["measure"] == measure)
                        & (per_run["aggregation"] == agg)]
            for target in ("test_acc", "test_loss"):
                kt = stats.kendalltau(s["value"], s[f"final_{target}"])
                sr = stats.spearmanr(s["value"], s[f"final_{target}"])
                row = corr[(corr["group"] == "sparse") & (corr["measure"] == measure)
                           & (corr["aggregation"] == agg) & (corr["target"] == target)].iloc[0]
                assert row["n_runs"] == 10
                assert row["kendall_tau"] == pytest.approx(kt.statistic)
                assert row["kendall_p"] == pytest.approx(kt.pvalue)
                assert row["spearman_rho"] == pytest.approx(sr.statistic)
                assert row["spearman_p"] == pytest.approx(sr.pvalue)
                checked += 1
    assert checked == 12
    dense = corr[corr["group"] == "dense"]
    assert (dense["n_runs"] == 2).all() and dense[["kendall_tau", "spearman_rho", "spearman_p"]].isna().all().all()


def test_rank_correlation_needs_three_finite_pairs():
    assert all(math.isnan(v) for v in rank_correlation([1, 2], [3, 4])[:4])
    assert rank_correlation([1, 2, np.nan, 4], [1, 2, 3, np.nan])[4] == 2
    tau, _, rho, _, n = rank_correlation([1, 2, 3, 4], [10, 20, 30, 40])
    assert (tau, rho, n) == (pytest.approx(1.0), pytest.approx(1.0), 4)


def test_claims_are_means_over_seeds_of_the_windows(outputs):
    runs, out = outputs
    claims = pd.read_csv(out / "gradflow_claims.csv").set_index("claim")
    rows = _train_rows(runs)
    early = rows[(rows["step"] > 0) & (rows["step"] <= 0.1 * rows["total"])]

    def mean_of(frame, method):  # mean over seeds of each run's own mean
        return frame[frame["method"] == method].groupby("run_id")["grad_norm"].mean().mean()

    row = claims.loc["scratch+ > scratch (early)"]
    assert row["mean_a"] == pytest.approx(mean_of(early, "scratch+"))
    assert row["mean_b"] == pytest.approx(mean_of(early, "scratch"))
    assert bool(row["holds"]) == (row["mean_a"] > row["mean_b"])
    row = claims.loc["rigl > scratch (training)"]
    assert row["mean_a"] == pytest.approx(mean_of(rows, "rigl"))
    assert row["n_pairs"] == 2
    row = claims.loc["lottery <= scratch (early)"]
    assert bool(row["holds"]) == (mean_of(early, "lottery") <= mean_of(early, "scratch"))


def test_cli_says_when_a_group_is_too_small(smoke_runs, tmp_path, capsys):
    assert gradflow.main([str(smoke_runs), "--method", "scratch", "--method", "dense", "--x", "epoch",
                          "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "sparse runs: 2 (< 3)" in printed and "dense runs: 1 (< 3)" in printed
    claims = pd.read_csv(tmp_path / "gradflow_claims.csv")
    assert claims["holds"].isna().all()  # scratch+, rigl and lottery were not selected


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        gradflow.main(["--help"])
    assert exc.value.code == 0 and "--x" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "unrelated", "no-match", "no-rows"])
def test_bad_input_exits_2_and_leaves_results(case, smoke_runs, tmp_path, capsys):
    runs = empty_or_unrelated_runs(case, tmp_path) if case in ("empty", "unrelated") else tmp_path / "runs"
    args = []
    if case == "no-match":
        runs = smoke_runs
        args = ["--method", "nonexistent"]
    if case == "no-rows":  # a complete run whose metrics.csv holds no rows
        shutil.copytree(smoke_runs / "mlp-digits-dense-seed0", runs / "mlp-digits-dense-seed0")
        metrics = runs / "mlp-digits-dense-seed0" / "metrics.csv"
        metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    out = tmp_path / "results"
    out.mkdir()
    (out / "gradflow_curves.csv").write_text("old\n")
    with pytest.raises(SystemExit) as exc:
        gradflow.main([str(runs), "--out", str(out), "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and err.endswith(".")
    assert [p.name for p in out.iterdir()] == ["gradflow_curves.csv"]
    assert (out / "gradflow_curves.csv").read_text() == "old\n"
    if runs != smoke_runs:
        assert not (runs / "_analysis").exists()
