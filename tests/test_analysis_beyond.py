"""Tests of the geometry beyond the paper: analysis.plane, analysis.curve, analysis.stability, analysis.hessian --per-layer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import add_other_architecture_run, empty_or_unrelated_runs

from analysis import curve, hessian, plane, stability
from analysis.runs import Run
from landscape import exact_hessian
from landscape.curves import barrier_max_minus_mean
from landscape.evaluate import evaluate as landscape_evaluate

RUN = "mlp-digits-s0.9-{}-seed{}"
PRUNE, LOTTERY, SCRATCH = RUN.format("prune", 0), RUN.format("lottery", 0), RUN.format("scratch", 0)


def evaluate(model, x, y):
    """(loss, accuracy) of ``model`` in eval mode on ``(x, y)``: the one evaluator, landscape.evaluate."""
    result = landscape_evaluate(model, (x, y))
    return result.loss, result.accuracy


def _flat(state: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([state[n].double().reshape(-1) for n in names])


def _exits_2(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and err.endswith(".")
    return err


# --- plane -----------------------------------------------------------------------------------------
def test_plane_grid_point_equals_direct_evaluation(smoke_runs, tmp_path):
    out = tmp_path / "out"
    assert plane.main([str(smoke_runs), "--grid", "5", "--out", str(out), "--quiet"]) == 0
    grid = pd.read_csv(out / "plane.csv")
    points = pd.read_csv(out / "plane_points.csv")
    assert list(grid.columns) == plane.GRID_COLUMNS and len(grid) == 25
    assert (out / "plane.png").stat().st_size > 0
    anchors = points[points["kind"] == "anchor"].set_index("role")
    assert list(anchors["point"]) == [f"{LOTTERY}:end", f"{SCRATCH}:end", f"{PRUNE}:end"]
    assert anchors.loc["a", ["alpha", "beta"]].tolist() == pytest.approx([0, 0], abs=1e-9)
    assert anchors.loc["b", ["alpha", "beta"]].tolist() == pytest.approx([1, 0], abs=1e-9)
    assert (points["off_plane"] >= 0).all() and anchors["off_plane"].max() < 1e-9
    # the trajectories hold every checkpoint each run kept, start and end included
    lot = points[(points["kind"] == "trajectory") & (points["run_id"] == LOTTERY)]
    assert len(lot) == len(list((smoke_runs / LOTTERY / "checkpoints").glob("*.pt")))
    # independent geometry: all coordinates (off the masks' union every point is zero, so the plane is the same)
    runs = {r: Run(smoke_runs / r) for r in (LOTTERY, SCRATCH, PRUNE)}
    states = [runs[r].checkpoint("end")["model"] for r in (LOTTERY, SCRATCH, PRUNE)]
    names = [n for n, _ in runs[LOTTERY].build().named_parameters()]
    a, b, c = (_flat(s, names) for s in states)
    u, w = b - a, c - a
    v = w - (w @ u) / (u @ u) * u
    row = grid.iloc[17]
    theta = a + row["alpha"] * u + row["beta"] * u.norm() * v / v.norm()
    model = runs[LOTTERY].build()
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(theta[offset: offset + p.numel()].view(p.shape))
            offset += p.numel()
    data = runs[LOTTERY].dataset()
    loss, acc = evaluate(model, data.x_train, data.y_train)
    assert row["loss"] == pytest.approx(loss, rel=1e-5)
    assert row["accuracy"] == pytest.approx(acc)


@pytest.mark.parametrize("case", ["unknown-run", "two-points", "architectures", "empty"])
def test_plane_bad_input_exits_2_and_keeps_outputs(case, smoke_copy, tmp_path, capsys):
    runs = empty_or_unrelated_runs("empty", tmp_path) if case == "empty" else smoke_copy
    existing = runs / "_analysis" / "plane.csv"
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("old\n")
    argv = [str(runs), "--quiet", "--grid", "3"]
    if case == "unknown-run":
        argv += ["--points", f"{LOTTERY}:end", "--points", "nope-seed0:end", "--points", f"{PRUNE}:end"]
    elif case == "two-points":
        argv += ["--points", f"{LOTTERY}:end", "--points", f"{PRUNE}:end"]
    elif case == "architectures":
        add_other_architecture_run(runs, SCRATCH)
        argv += ["--points", f"{LOTTERY}:end", "--points", RUN.format("scratch", 9) + ":end",
                 "--points", f"{PRUNE}:end"]
    _exits_2(plane.main, argv, capsys)
    assert existing.read_text() == "old\n"
    assert sorted(p.name for p in existing.parent.iterdir()) == ["plane.csv"]


# --- curve -----------------------------------------------------------------------------------------
def test_curve_endpoints_and_line_equal_direct_evaluation(smoke_runs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(smoke_runs), "--from", f"{SCRATCH}:end", "--to", f"{PRUNE}:end", "--steps", "40", "--points", "5",
            "--out", str(out), "--quiet"]
    assert curve.main(argv) == 0
    assert "barriers" in capsys.readouterr().out
    rows = pd.read_csv(out / "curve.csv")
    summary = pd.read_csv(out / "curve_summary.csv")
    assert list(summary.columns) == curve.SUMMARY_COLUMNS and len(summary) == 1
    assert (out / "curve.png").stat().st_size > 0
    runs = {r: Run(smoke_runs / r) for r in (SCRATCH, PRUNE)}
    data = runs[SCRATCH].dataset()
    for t, run in ((0.0, SCRATCH), (1.0, PRUNE)):
        loss, _ = evaluate(runs[run].model("end"), data.x_train, data.y_train)
        for kind in ("line", "curve"):
            got = rows[(rows["kind"] == kind) & np.isclose(rows["t"], t)]["loss"].item()
            assert got == pytest.approx(loss, rel=1e-5), (kind, t)
    # the line's midpoint is the average of the two checkpoints
    mid = runs[SCRATCH].model("end")
    other = runs[PRUNE].checkpoint("end")["model"]
    mid.load_state_dict({k: 0.5 * (v + other[k]) for k, v in mid.state_dict().items()})
    loss, _ = evaluate(mid, data.x_train, data.y_train)
    line = rows[rows["kind"] == "line"]
    assert line[np.isclose(line["t"], 0.5)]["loss"].item() == pytest.approx(loss, rel=1e-5)
    s = summary.iloc[0]
    bent = rows[rows["kind"] == "curve"]
    assert s["curve_barrier_frankle"] == pytest.approx(barrier_max_minus_mean(bent["t"], bent["loss"]))
    assert s["curve_max_loss"] == pytest.approx(bent["loss"].max())


def test_curve_bad_input_exits_2(smoke_copy, capsys):
    existing = smoke_copy / "_analysis" / "curve.csv"
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("old\n")
    _exits_2(curve.main, [str(smoke_copy), "--from", "nope:end", "--to", f"{PRUNE}:end", "--quiet"], capsys)
    _exits_2(curve.main, [str(smoke_copy), "--from", f"{SCRATCH}:end", "--quiet"], capsys)
    _exits_2(curve.main, [str(smoke_copy), "--from", f"{SCRATCH}:middle", "--to", f"{PRUNE}:end", "--quiet"], capsys)
    _exits_2(curve.main, [str(smoke_copy), "--steps", "0", "--quiet"], capsys)
    add_other_architecture_run(smoke_copy, SCRATCH)
    _exits_2(curve.main, [str(smoke_copy), "--from", RUN.format("scratch", 9) + ":end", "--to", f"{PRUNE}:end",
                          "--quiet"], capsys)
    assert existing.read_text() == "old\n"


# --- stability -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stability_runs(tmp_path_factory):
    """The stability graph at smoke scale: MLP on digits, 60 steps, rewinds 0 and 20, two copies each."""
    from sparse_training.presets import _SMOKE, stability_graph
    from sparse_training.suite import run_suite

    out = tmp_path_factory.mktemp("stability") / "runs"
    specs = stability_graph({**_SMOKE, "steps": 60, "log_every": 30, "checkpoint_every": 30}, 2, (0, 20))
    results = run_suite(specs, out, jobs=2, quiet=True)
    assert (results["state"] == "complete").all(), results
    return out


def test_stability_barriers_and_accuracy_against_direct_evaluation(stability_runs, tmp_path):
    out = tmp_path / "out"
    assert stability.main([str(stability_runs), "--points", "5", "--out", str(out), "--quiet"]) == 0
    rows = pd.read_csv(out / "stability.csv")
    summary = pd.read_csv(out / "stability_summary.csv")
    assert (out / "stability.png").stat().st_size > 0
    assert sorted(zip(summary["family"], summary["rewind"])) == [("dense", 0), ("dense", 20),
                                                                 ("lottery ticket", 0), ("lottery ticket", 20)]
    for _, s in summary.iterrows():
        a, b = Run(stability_runs / s["run_a"]), Run(stability_runs / s["run_b"])
        assert (a.seed, b.seed) == (1, 2) and a.config["rewind"] == b.config["rewind"] == s["rewind"]
        # the copies start from the parent's checkpoint at the rewind step
        parent = Run(stability_runs / s["parent"])
        start = a.checkpoint("start")["model"]
        source = parent.checkpoint("start" if s["rewind"] == 0 else int(s["rewind"]))["model"]
        masks = a.checkpoint("start")["masks"]
        for k, v in source.items():
            expected = v * masks[k] if k in masks else v
            assert torch.equal(start[k], expected), k
        # dense copies keep every weight; lottery copies the prune run's mask
        sparsity = a.metrics["sparsity"].iloc[-1]
        assert (sparsity == 0.0) if s["family"] == "dense" else (sparsity > 0.5)
        # endpoint accuracies are the copies' final test accuracies (metrics.csv, another code path)
        assert s["acc_a"] == pytest.approx(a.final_test_acc)
        assert s["acc_b"] == pytest.approx(b.final_test_acc)
        pair = rows[(rows["run_a"] == s["run_a"]) & (rows["run_b"] == s["run_b"])]
        assert s["error_barrier"] == pytest.approx(barrier_max_minus_mean(pair["alpha"], pair["error"]))
        mid = a.model("end")
        other = b.checkpoint("end")["model"]
        mid.load_state_dict({k: 0.5 * (v + other[k]) for k, v in mid.state_dict().items()})
        data = a.dataset()
        _, acc = evaluate(mid, data.x_test, data.y_test)
        assert pair[np.isclose(pair["alpha"], 0.5)]["accuracy"].item() == pytest.approx(acc)
    assert stability.stable_from(summary, 1.0) == {"dense": 0, "lottery ticket": 0}


def test_stability_bad_input_exits_2(stability_runs, tmp_path, capsys):
    _exits_2(stability.main, [str(stability_runs), "--method", "dense", "--quiet", "--out", str(tmp_path)], capsys)
    _exits_2(stability.main, [str(empty_or_unrelated_runs("unrelated", tmp_path)), "--quiet"], capsys)
    _exits_2(stability.main, [str(stability_runs), "--stable", "2", "--quiet", "--out", str(tmp_path)], capsys)
    assert not list(tmp_path.glob("stability*"))


# --- per-layer Hessian ----------------------------------------------------------------------------------
def test_per_layer_blocks_equal_exact_hessian_blocks(smoke_runs, tmp_path):
    rigl = RUN.format("rigl", 0)
    step = Run(smoke_runs / rigl).update_steps()[0]
    out = tmp_path / "out"
    assert hessian.main([str(smoke_runs), "--run", f"^{rigl}$", "--which", f"{step}:pre,{step}:post", "--per-layer",
                         "--k", "2", "--examples", "100", "--dtype", "float64", "--tol", "1e-8",
                         "--out", str(out), "--quiet"]) == 0
    layers = pd.read_csv(out / "hessian_layers.csv")
    assert list(layers.columns) == hessian.LAYER_COLUMNS
    assert not (out / "hessian.csv").exists()  # the full-Hessian outputs are another mode's
    ups = pd.read_csv(out / "hessian_layers_updates.csv")
    assert len(ups) == layers["layer"].nunique() and (ups["step"] == step).all()
    run = Run(smoke_runs / rigl)
    data = hessian.hessian_data(run.dataset(), 100)
    for phase in ("post",):
        model = run.model(step, phase).double()
        masks = model.masks.as_dict()
        full = exact_hessian(model, F.cross_entropy, (data[0].double(), data[1]), masks)
        offset = 0
        for name, p in model.named_parameters():
            n = int(masks[name].sum()) if name in masks else p.numel()
            layer = name.rpartition(".")[0]
            if name.endswith("weight"):
                start = offset
            offset += n
            if not name.endswith("bias"):
                continue
            block = full[start:offset, start:offset]
            vals = torch.linalg.eigvalsh(block).numpy()
            got = layers[(layers["phase"] == phase) & (layers["layer"] == layer) & (layers["index"] == 0)]
            assert got["size"].iloc[0] == offset - start
            top = got[got["kind"] == "top"]["eigenvalue"].item()
            assert top == pytest.approx(vals[-1], rel=1e-6, abs=1e-10), (phase, layer)
            bottom = got[got["kind"] == "bottom"]
            if bottom["converged"].item():
                assert bottom["eigenvalue"].item() == pytest.approx(vals[0], rel=1e-5, abs=1e-8), (phase, layer)
