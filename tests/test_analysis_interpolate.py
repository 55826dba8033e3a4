"""Tests of analysis.interpolate: barrier math, endpoints against direct evaluation and metrics.csv, custom paths, bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import add_other_architecture_run, empty_or_unrelated_runs

from analysis import interpolate
from analysis.interpolate import alpha_grid, barrier, parse_point
from analysis.runs import Run
from sparse_training.errors import UserError

RUN = "mlp-digits-s0.9-{}-seed{}"
PRUNE = RUN.format("prune", 0)


# --- pure math ---------------------------------------------------------------------------------
def test_barrier_of_lines_and_convex_curves_is_zero():
    a = alpha_grid()
    assert barrier(a, np.full_like(a, 0.7)) == 0.0
    assert barrier(a, 2.0 - 1.5 * a) == pytest.approx(0.0, abs=1e-12)
    assert barrier(a, (a - 0.5) ** 2) == 0.0  # convex: below its chord everywhere on [0, 1]


def test_barrier_of_a_bump_is_its_height():
    a = alpha_grid()
    assert barrier(a, 1.0 + 0.3 * np.sin(np.pi * a)) == pytest.approx(0.3)
    # on a tilted chord, and bumps outside [0, 1] do not count
    tilted = 2.0 - 1.5 * a + 0.25 * 4 * a * (1 - a) + 5.0 * (a > 1.05)
    assert barrier(a, tilted) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        barrier([0.2, 0.5, 1.0], [1.0, 2.0, 3.0])  # no alpha = 0


def test_alpha_grid_holds_zero_and_one_exactly():
    a = alpha_grid()
    assert len(a) == 29 and a[0] == -0.2 and a[-1] == 1.2
    assert 0.0 in a and 1.0 in a
    small = alpha_grid(4)  # -0.2, 0.267, 0.733, 1.2 plus 0 and 1
    assert len(small) == 6 and 0.0 in small and 1.0 in small
    with pytest.raises(UserError):
        alpha_grid(1)


def test_parse_point():
    assert parse_point("a-b.c+d:start").label == "a-b.c+d:start"
    p = parse_point("run:40:pre")
    assert (p.run_id, p.which, p.phase) == ("run", 40, "pre")
    assert parse_point("run:120").which == 120
    for bad in ("run", "run:middle", "run:start:pre", ":end", "run:40:mid", "a:b:c:d"):
        with pytest.raises(UserError):
            parse_point(bad)


# --- the CLI against direct evaluation ---------------------------------------------------------
def _direct(runs: Path, point: str, split: str = "train") -> tuple[float, float]:
    """Loss and accuracy of a checkpoint computed directly (one forward pass, torch's cross-entropy)."""
    p = parse_point(point)
    run = Run(runs / p.run_id)
    data = run.dataset()
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    with torch.no_grad():
        logits = run.model(p.which, p.phase)(x).double()
    return float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).double().mean())


def test_default_paths_endpoints_equal_direct_evaluation(smoke_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert interpolate.main([str(smoke_runs), "--method", "lottery", "--method", "scratch", "--seed", "0",
                             "--points", "5", "--out", str(out), "--quiet"]) == 0
    assert "barrier" in capsys.readouterr().out
    curves = pd.read_csv(out / "interpolation.csv")
    summary = pd.read_csv(out / "interpolation_summary.csv")
    assert list(curves.columns) == interpolate.CURVE_COLUMNS
    assert list(summary.columns) == interpolate.SUMMARY_COLUMNS
    assert (out / "interpolation.png").stat().st_size > 0
    assert len(summary) == 4 and set(summary["path"]) == {interpolate.START_PATH, interpolate.END_PATH}
    assert set(summary["to"]) == {f"{PRUNE}:end"}
    assert sorted(summary["from"]) == sorted(f"{RUN.format(m, 0)}:{w}" for m in ("lottery", "scratch")
                                             for w in ("start", "end"))
    assert (curves.groupby("path_id").size() == 7).all()  # 5 points plus alpha 0 and 1
    prune_loss, prune_acc = _direct(smoke_runs, f"{PRUNE}:end")
    for _, row in summary.iterrows():
        loss0, acc0 = _direct(smoke_runs, row["from"])
        assert row["loss_at_0"] == pytest.approx(loss0, rel=1e-5)
        assert row["acc_at_0"] == pytest.approx(acc0)
        assert row["loss_at_1"] == pytest.approx(prune_loss, rel=1e-5)
        assert row["acc_at_1"] == pytest.approx(prune_acc)
        path = curves[curves["path_id"] == row["path_id"]]
        assert row["barrier"] == pytest.approx(barrier(path["alpha"], path["loss"]))
        assert row["max_loss"] >= max(row["loss_at_0"], row["loss_at_1"]) - 1e-12


def test_test_split_endpoint_equals_the_runs_final_test_loss(smoke_runs, tmp_path):
    out = tmp_path / "out"
    assert interpolate.main([str(smoke_runs), "--method", "lottery", "--seed", "1", "--split", "test",
                             "--points", "3", "--out", str(out), "--quiet"]) == 0
    summary = pd.read_csv(out / "interpolation_summary.csv").set_index("path")
    assert set(summary["split"]) == {"test"}
    # metrics.csv's last row holds the full test set in eval mode: the same measurement
    prune_last = Run(smoke_runs / PRUNE).metrics.iloc[-1]
    lottery_last = Run(smoke_runs / RUN.format("lottery", 1)).metrics.iloc[-1]
    end = summary.loc[interpolate.END_PATH]
    assert end["loss_at_1"] == pytest.approx(prune_last["test_loss"], rel=1e-5)
    assert end["acc_at_1"] == pytest.approx(prune_last["test_acc"])
    assert end["loss_at_0"] == pytest.approx(lottery_last["test_loss"], rel=1e-5)


def test_custom_paths_between_any_two_checkpoints(smoke_runs, tmp_path):
    out = tmp_path / "out"
    a, b = f"{RUN.format('scratch', 0)}:end", f"{RUN.format('scratch', 1)}:end"
    pre, post = f"{RUN.format('rigl', 0)}:40:pre", f"{RUN.format('rigl', 0)}:40:post"
    assert interpolate.main([str(smoke_runs), "--from", a, "--to", b, "--from", pre, "--to", post,
                             "--points", "3", "--out", str(out), "--quiet"]) == 0
    summary = pd.read_csv(out / "interpolation_summary.csv")
    assert list(summary["from"]) == [a, pre] and list(summary["to"]) == [b, post]
    assert set(summary["path"]) == {interpolate.CUSTOM_PATH}
    first = summary.iloc[0]
    assert first["loss_at_0"] == pytest.approx(_direct(smoke_runs, a)[0], rel=1e-5)
    assert first["loss_at_1"] == pytest.approx(_direct(smoke_runs, b)[0], rel=1e-5)
    second = summary.iloc[1]
    assert second["loss_at_1"] == pytest.approx(_direct(smoke_runs, post)[0], rel=1e-5)


def test_recalibrate_bn_is_a_no_op_without_batchnorm(smoke_runs, tmp_path):
    a, b = f"{RUN.format('scratch', 0)}:start", f"{PRUNE}:end"
    for flag, out in (([], tmp_path / "plain"), (["--recalibrate-bn"], tmp_path / "recal")):
        assert interpolate.main([str(smoke_runs), "--from", a, "--to", b, "--points", "3", "--examples", "200",
                                 "--out", str(out), "--quiet", *flag]) == 0
    plain = pd.read_csv(tmp_path / "plain" / "interpolation.csv")
    recal = pd.read_csv(tmp_path / "recal" / "interpolation.csv")
    np.testing.assert_allclose(plain["loss"], recal["loss"], rtol=1e-12)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        interpolate.main(["--help"])
    assert exc.value.code == 0 and "--recalibrate-bn" in capsys.readouterr().out


# --- bad input ---------------------------------------------------------------------------------
SCRATCH_END = f"{RUN.format('scratch', 0)}:end"
BAD_ARGS = {
    "empty": [],
    "unrelated": [],
    "missing-dir": [],
    "no-match": ["--method", "nonexistent"],
    "no-family": ["--method", "dense"],
    "architectures": [],
    "small-dense": ["--from", "mlp-digits-small-dense-seed0:end", "--to", SCRATCH_END],
    "from-alone": ["--from", SCRATCH_END],
    "bad-point": ["--from", "scratch-end", "--to", SCRATCH_END],
    "unknown-run": ["--from", "no-such-run:end", "--to", SCRATCH_END],
    "missing-checkpoint": ["--from", f"{RUN.format('scratch', 0)}:999", "--to", SCRATCH_END],
    "points": ["--points", "1"],
    "examples": ["--examples", "0"],
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_input_exits_2_and_leaves_results(case, smoke_runs, tmp_path, request, capsys):
    # only the case that changes the runs directory needs a private copy
    runs = request.getfixturevalue("smoke_copy") if case == "architectures" else smoke_runs
    if case in ("empty", "unrelated"):
        runs = empty_or_unrelated_runs(case, tmp_path)
    if case == "architectures":
        add_other_architecture_run(runs, RUN.format("lottery", 1))
    if case == "missing-dir":
        runs = tmp_path / "nowhere"
    out = tmp_path / "results"
    out.mkdir()
    for name in ("interpolation.csv", "interpolation_summary.csv"):
        (out / name).write_text("old\n")
    with pytest.raises(SystemExit) as exc:
        interpolate.main([str(runs), "--out", str(out), "--quiet", *BAD_ARGS[case]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and err.endswith(".")
    assert sorted(p.name for p in out.iterdir()) == ["interpolation.csv", "interpolation_summary.csv"]
    assert all((out / n).read_text() == "old\n" for n in ("interpolation.csv", "interpolation_summary.csv"))
    if runs.exists() and runs != smoke_runs:
        assert not (runs / "_analysis").exists()
