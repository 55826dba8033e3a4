"""Tests of analysis.distances: streamed distances against direct torch, the CLI's outputs and its bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import check_bad_input_exits_2

from analysis import distances
from analysis.distances import Point, distance_matrix
from sparse_training.errors import UserError

RUN = "mlp-digits-s0.9-{}-seed{}"


def _save(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "masks": {}, "step": 0, "epoch": 0}, path)
    return path


def _random_state(gen: torch.Generator, hidden: int = 5) -> dict:
    return {"fc.weight": torch.randn(hidden, 4, generator=gen), "fc.bias": torch.randn(hidden, generator=gen),
            "bn.weight": torch.randn(hidden, generator=gen), "bn.bias": torch.randn(hidden, generator=gen),
            # BatchNorm buffers are no coordinates: huge values here must not change any distance
            "bn.running_mean": 1e6 * torch.randn(hidden, generator=gen), "bn.running_var": torch.rand(hidden),
            "bn.num_batches_tracked": torch.tensor(7), "head.weight": torch.randn(3, hidden, generator=gen)}


def _params_vector(path: Path) -> torch.Tensor:
    """A checkpoint's parameters flattened by hand, in state-dict order, without buffers."""
    state = torch.load(path, weights_only=True)["model"]
    return torch.cat([t.reshape(-1).double() for k, t in state.items()
                      if t.is_floating_point() and not k.endswith(("running_mean", "running_var"))])


@pytest.fixture()
def checkpoints(tmp_path) -> list[Path]:
    gen = torch.Generator().manual_seed(0)
    return [_save(tmp_path / f"c{i}.pt", _random_state(gen)) for i in range(7)]


def test_streamed_blocks_equal_all_at_once_and_direct_torch(checkpoints):
    labels, streamed = distance_matrix(checkpoints, block=3)  # 3 blocks: 3 + 3 + 1
    _, whole = distance_matrix(checkpoints, block=len(checkpoints))
    direct = torch.cdist(torch.stack([_params_vector(p) for p in checkpoints]),
                         torch.stack([_params_vector(p) for p in checkpoints]),
                         compute_mode="donot_use_mm_for_euclid_dist").numpy()
    assert labels == [str(p) for p in checkpoints]
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(streamed, direct, rtol=1e-12, atol=1e-12)
    assert np.all(np.diag(streamed) == 0) and np.array_equal(streamed, streamed.T)
    for block in (1, 2, 100):
        np.testing.assert_allclose(distance_matrix(checkpoints, block=block)[1], direct, rtol=1e-12, atol=1e-12)


def test_checkpoints_of_other_shapes_are_a_user_error(tmp_path, checkpoints):
    other = _save(tmp_path / "other.pt", _random_state(torch.Generator().manual_seed(1), hidden=6))
    with pytest.raises(UserError, match="different architectures"):
        distance_matrix([*checkpoints[:2], other], block=2)


def test_points_are_labelled_for_legends(tmp_path):
    p = Point(tmp_path / "end.pt", "r:end", "r", "prune", 0, "end")
    assert p.name == "prune-end"


# --- the CLI on the smoke runs -----------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_out(smoke_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distances")
    assert distances.main([str(smoke_runs), "--out", str(out), "--quiet", "--block", "5"]) == 0
    return out


def test_cli_writes_tidy_tables_and_plot(smoke_runs, smoke_out):
    pairs = pd.read_csv(smoke_out / "distances.csv")
    to_pruning = pd.read_csv(smoke_out / "distance_to_pruning.csv")
    assert list(pairs.columns) == distances.DISTANCE_COLUMNS
    assert list(to_pruning.columns) == distances.TO_PRUNING_COLUMNS
    # 2 prune + 5 x 2 family runs + dense (small-dense has another width) = 13 runs, start and end each
    n = 26
    assert len(pairs) == n * (n - 1) // 2
    assert set(pairs["kind_a"]) | set(pairs["kind_b"]) == {"start", "end"}
    assert "small-dense" not in set(pairs["method_a"]) | set(pairs["method_b"])
    # 10 family runs x 2 points vs their parent; prune seed 0 vs itself; prune seed 1 vs itself and vs seed 0
    assert len(to_pruning) == 20 + 2 + 4
    assert set(to_pruning["point"]) >= {"lottery-start", "lottery-end", "scratch-start", "prune-end"}
    assert (to_pruning["pruning_run"] == RUN.format("prune", 0)).sum() == 24
    assert (smoke_out / "distance_to_pruning.png").stat().st_size > 1000


def test_cli_distances_equal_direct_torch(smoke_runs, smoke_out):
    pairs = pd.read_csv(smoke_out / "distances.csv")
    to_pruning = pd.read_csv(smoke_out / "distance_to_pruning.csv")
    a, b = RUN.format("scratch", 1), RUN.format("prune", 0)
    va = _params_vector(smoke_runs / a / "checkpoints" / "start.pt")
    vb = _params_vector(smoke_runs / b / "checkpoints" / "end.pt")
    expected = float(torch.norm(va - vb))
    row = pairs[((pairs["point_a"] == f"{a}:start") & (pairs["point_b"] == f"{b}:end"))
                | ((pairs["point_b"] == f"{a}:start") & (pairs["point_a"] == f"{b}:end"))]
    assert len(row) == 1 and row["distance"].iloc[0] == pytest.approx(expected, rel=1e-12)
    mine = to_pruning[(to_pruning["run_id"] == a) & (to_pruning["kind"] == "start")]
    assert mine["distance"].iloc[0] == pytest.approx(expected, rel=1e-12)


def test_cli_selection_adds_the_pruning_solution(smoke_runs, tmp_path):
    out = tmp_path / "out"
    assert distances.main([str(smoke_runs), "--method", "lottery", "--points", "end", "--out", str(out),
                           "--quiet"]) == 0
    pairs = pd.read_csv(out / "distances.csv")
    points = set(pairs["point_a"]) | set(pairs["point_b"])
    assert points == {f"{RUN.format('lottery', s)}:end" for s in (0, 1)} | {f"{RUN.format('prune', 0)}:end"}
    assert len(pd.read_csv(out / "distance_to_pruning.csv")) == 2


def test_cli_skips_failed_runs_with_a_warning(smoke_copy, tmp_path, capsys):
    failed = smoke_copy / RUN.format("scratch", 1)
    (failed / "status.json").write_text(json.dumps({"state": "failed", "reason": "diverged", "step": 3}))
    out = tmp_path / "out"
    assert distances.main([str(smoke_copy), "--method", "scratch", "--out", str(out), "--quiet"]) == 0
    assert f"skipping {failed.name}" in capsys.readouterr().err
    pairs = pd.read_csv(out / "distances.csv")
    assert failed.name not in set(pairs["run_a"]) | set(pairs["run_b"])
    assert len(pairs) == 3  # scratch seed 0 start and end, and the pruning solution's end


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        distances.main(["--help"])
    assert exc.value.code == 0 and "--block" in capsys.readouterr().out


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["empty", "unrelated", "no-match", "architectures"])
def test_bad_input_exits_2_and_leaves_results(case, smoke_copy, tmp_path, capsys):
    check_bad_input_exits_2(distances.main, case, smoke_copy, tmp_path, capsys, "distances.csv", RUN.format("lottery", 1))
