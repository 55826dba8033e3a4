"""Tests of analysis.mds: recovery of a planar configuration, stress, the CLI's outputs and its bad inputs."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from helpers import check_bad_input_exits_2
from scipy.spatial import procrustes
from scipy.spatial.distance import pdist, squareform

from analysis import mds
from analysis.mds import embed, stress

PLANAR = np.array([[0.0, 0.0], [3.0, 0.5], [1.0, 2.0], [-2.0, 1.5], [0.5, -2.5], [4.0, 3.0]])


def test_classical_mds_recovers_a_planar_configuration():
    emb = embed(squareform(pdist(PLANAR)), classical=True)
    _, _, disparity = procrustes(PLANAR, emb.xy)
    assert disparity < 1e-6
    assert emb.normalized_stress < 1e-6 and emb.method == "classical"


def test_metric_mds_recovers_a_planar_configuration():
    rotated = PLANAR @ np.array([[0.6, -0.8], [0.8, 0.6]]) + 5.0  # rotation + translation change nothing
    emb = embed(squareform(pdist(rotated)), random_state=3)
    _, _, disparity = procrustes(PLANAR, emb.xy)
    assert disparity < 1e-4
    assert emb.normalized_stress < 1e-2 and emb.method == "metric"


def test_stress_by_hand():
    dist = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])  # pair distances 1, 3, 2 against 1, 2, 1
    raw, normalized = stress(dist, xy)
    assert raw == pytest.approx(0 + 1 + 1)
    assert normalized == pytest.approx(np.sqrt(2 / (1 + 4 + 1)))


@pytest.mark.parametrize("classical", [False, True])
def test_cli_writes_map_and_plot(smoke_runs, tmp_path, classical, capsys):
    out = tmp_path / "out"
    argv = [str(smoke_runs), "--out", str(out), "--quiet"] + (["--classical"] if classical else [])
    assert mds.main(argv) == 0
    frame = pd.read_csv(out / "mds.csv")
    assert list(frame.columns) == mds.MDS_COLUMNS
    assert len(frame) == 26  # 13 runs of the sparse architecture, start and end
    assert {"lottery-start", "lottery-end", "scratch-start", "scratch-end", "prune-end"} <= set(frame["point"])
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    assert (out / "mds.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "normalized stress" in printed and str(out / "mds.csv") in printed


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        mds.main(["--help"])
    assert exc.value.code == 0 and "--classical" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "unrelated", "no-match", "architectures"])
def test_bad_input_exits_2_and_leaves_results(case, smoke_copy, tmp_path, capsys):
    check_bad_input_exits_2(mds.main, case, smoke_copy, tmp_path, capsys, "mds.csv", "mlp-digits-s0.9-scratch-seed1")
