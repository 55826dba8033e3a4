"""Tests of analysis.ensemble: ensemble statistics on a hand-computed case, the CLI's table and its bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import check_bad_input_exits_2

from analysis import ensemble
from analysis.ensemble import ensemble_stats

LABELS = np.array([0, 1, 2, 1])
PROBS = {  # arg-max predictions: a = [0, 1, 2, 0], b = [0, 1, 1, 1], c = [1, 1, 0, 1]
    "a": np.array([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8], [.6, .3, .1]]),
    "b": np.array([[.7, .2, .1], [.2, .7, .1], [.1, .5, .4], [.1, .8, .1]]),
    "c": np.array([[.4, .5, .1], [.1, .8, .1], [.5, .2, .3], [.3, .6, .1]]),
}
REFERENCE = np.eye(3)[[0, 1, 2, 1]]  # predicts the labels


def test_ensemble_stats_by_hand():
    s = ensemble_stats(PROBS, LABELS, reference=REFERENCE)
    assert s["n_runs"] == 3
    # accuracies 3/4, 3/4, 2/4; sample std of (1/12, 1/12, -1/6) deviations = sqrt(1/48)
    assert s["acc_mean"] == pytest.approx(2 / 3)
    assert s["acc_std"] == pytest.approx(math.sqrt(1 / 48))
    # mean probabilities: [1.9, .8, .3], [.4, 2.3, .3], [.7, .8, 1.5], [1.0, 1.7, .3] (/3) -> 0, 1, 2, 1: all right
    assert s["ensemble_acc"] == pytest.approx(1.0)
    # pairs: a-b differ at 2 of 4, a-c at 3, b-c at 2
    assert s["disagreement_mean"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert s["disagreement_std"] == pytest.approx(math.sqrt(1 / 48))
    # against the reference: a 1/4, b 1/4, c 2/4
    assert s["disagreement_ref_mean"] == pytest.approx(1 / 3)
    assert s["disagreement_ref_std"] == pytest.approx(math.sqrt(1 / 48))


def test_ensemble_stats_leaves_the_reference_out_of_its_own_disagreement():
    s = ensemble_stats({k: torch.tensor(v) for k, v in PROBS.items()}, torch.tensor(LABELS),
                       reference=PROBS["c"], reference_id="c")
    # a vs c: 3/4, b vs c: 2/4; c itself is not counted
    assert s["disagreement_ref_mean"] == pytest.approx(0.625)
    assert s["disagreement_ref_std"] == pytest.approx(np.std([0.75, 0.5], ddof=1))


def test_ensemble_gain_by_hand():
    stack = np.stack(list(PROBS.values()))
    s = ensemble_stats(PROBS, LABELS)
    assert ensemble.ensemble_gain(stack, LABELS, [0, 1, 2]) == pytest.approx(s["ensemble_acc"] - s["acc_mean"])
    assert ensemble.ensemble_gain(stack, LABELS, [2, 2, 2]) == pytest.approx(0.0)  # one run repeated gains nothing
    # a and a and c: mean probabilities -> [0, 1, 2, 0] (acc 3/4); members 3/4, 3/4, 2/4
    assert ensemble.ensemble_gain(stack, LABELS, [0, 0, 2]) == pytest.approx(0.75 - 2 / 3)
    gains = ensemble.bootstrap_gains(stack, LABELS, replicates=50)
    assert len(gains) == 50 and (gains == ensemble.bootstrap_gains(stack, LABELS, replicates=50)).all()
    assert ensemble.bootstrap_gains(stack[:1], LABELS, replicates=5).tolist() == [0.0] * 5


def test_ensemble_stats_of_one_run():
    s = ensemble_stats({"a": PROBS["a"]}, LABELS)
    assert s["acc_mean"] == s["ensemble_acc"] == pytest.approx(0.75)
    assert s["acc_std"] == 0.0
    assert math.isnan(s["disagreement_mean"]) and math.isnan(s["disagreement_ref_mean"])


def test_cli_writes_table_one(smoke_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert ensemble.main([str(smoke_runs), "--out", str(out), "--quiet"]) == 0
    frame = pd.read_csv(out / "ensemble.csv")
    assert list(frame.columns) == ensemble.ENSEMBLE_COLUMNS
    assert list(frame["group"]) == ["lottery", "scratch", "scratch+", "rigl", "rigl+", "pruning solutions"]
    # the per-run table averages to the group table
    per_run = pd.read_csv(out / "ensemble_runs.csv")
    means = per_run.groupby("group")[["test_acc", "disagreement_pruned"]].mean()
    for _, row in frame.iterrows():
        assert means.loc[row["group"], "test_acc"] == pytest.approx(row["test_acc_mean"])
        if not math.isnan(row["disagreement_pruned_mean"]):
            assert means.loc[row["group"], "disagreement_pruned"] == pytest.approx(row["disagreement_pruned_mean"])
    boot = pd.read_csv(out / "ensemble_bootstrap.csv")
    assert (boot.groupby("group")["replicate"].count() == ensemble.BOOT_REPLICATES).all()
    assert (frame["n_runs"] == 2).all()
    assert (frame["pruning_run"] == "mlp-digits-s0.9-prune-seed0").all()
    for col in ("test_acc_mean", "ensemble_acc", "disagreement_mean", "disagreement_pruned_mean"):
        assert frame[col].between(0, 1).all()
    # the evaluated accuracy is the one the runs logged at the end of training
    logged = [pd.read_csv(smoke_runs / f"mlp-digits-s0.9-lottery-seed{s}" / "metrics.csv")["test_acc"].iloc[-1]
              for s in (0, 1)]
    assert frame.loc[0, "test_acc_mean"] == pytest.approx(np.mean(logged), abs=1e-6)
    table = (out / "ensemble.md").read_text()
    assert table.splitlines()[0].startswith("| Initialization | Test accuracy")
    assert "| pruning solutions |" in table and "±" in table
    assert str(out / "ensemble.csv") in capsys.readouterr().out


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        ensemble.main(["--help"])
    assert exc.value.code == 0 and "--method" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "unrelated", "no-match", "architectures"])
def test_bad_input_exits_2_and_leaves_results(case, smoke_copy, tmp_path, capsys):
    check_bad_input_exits_2(ensemble.main, case, smoke_copy, tmp_path, capsys, "ensemble.csv", "mlp-digits-s0.9-rigl-seed1")
