"""The notebooks execute on a smoke-preset runs directory and show their tables and plots."""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

from figures.paper import CLAIMS

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inspect_runs.ipynb"


def execute(path: Path, runs: Path, monkeypatch) -> tuple:
    """Run a notebook from the repository root on ``runs`` (``RUNS_DIR``), headless and on one torch thread in
    its kernel (another process: conftest's setting does not reach it; tiny Hessian-vector products slow down
    several-fold when two threads contend for a busy small CPU). Returns the notebook and every code output;
    fails on an error output."""
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("RUNS_DIR", str(runs))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parents[1])}})
    client.execute(env={**os.environ})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return nb, outputs


def test_notebook_executes_on_smoke_runs(smoke_runs, monkeypatch):
    _, outputs = execute(NOTEBOOK, smoke_runs, monkeypatch)
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "mlp-digits-s0.9-lottery-seed0" in html  # the run table is shown
    assert "scratch+" in html  # the accuracy-by-method table
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots


TOUR = NOTEBOOK.parent / "tour.ipynb"
ANALYSIS_TABLES = ("distance_to_pruning.csv", "interpolation_summary.csv", "hessian_updates.csv", "ensemble.csv",
                   "ensemble_runs.csv", "ensemble_bootstrap.csv")


def _cell_outputs(nb, marker: str) -> list[dict]:
    """The outputs of the one code cell whose source contains ``marker``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"{len(cells)} code cells contain {marker!r}"
    return cells[0].get("outputs", [])


def _html(outputs: list[dict]) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in outputs)


def _stdout(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")


def test_tour_executes_on_smoke_runs(smoke_runs, monkeypatch):
    nb, outputs = execute(TOUR, smoke_runs, monkeypatch)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # MDS, interpolation, Hessian, plane

    assert "mlp-digits-s0.9-lottery-seed0" in _html(_cell_outputs(nb, "load_runs(RUNS)"))  # 1. the run table
    distances = _html(_cell_outputs(nb, "summary_table(to_pruning)"))  # 2. distance to the pruning solution
    assert "lottery" in distances and "scratch" in distances
    assert re.search(r"metric MDS of \d+ checkpoints \(Stress-1 \d\.\d{3}\)", _stdout(_cell_outputs(nb, "embed(dist")))
    assert "end-&gt;pruning solution" in _html(_cell_outputs(nb, "barrier_table(summary)"))  # 3. barriers
    assert "relative_residual" in _html(_cell_outputs(nb, "extremes(rigl[0]"))  # 4. one Lanczos result
    assert "more_negative" in _html(_cell_outputs(nb, "update_table(eigen)"))  # 4. pre/post of every update
    ens = _html(_cell_outputs(nb, "ensemble.compute("))  # 5. Table 1
    assert "pruning solutions" in ens and "disagreement_pruned_mean" in ens and "ensemble_acc" in ens
    assert "off_plane" in _html(_cell_outputs(nb, "project_to_plane("))  # 6. the plane's points

    claims = _cell_outputs(nb, "verdict_frame(")  # 7. every claim judged, on the tables the tour wrote
    written = _stdout(claims)
    assert all(f"{name}\n" in written for name in ANALYSIS_TABLES)
    table = _html(claims)
    assert len(re.findall(r"<td>(?:held|not held|inconclusive)</td>", table)) == len(CLAIMS)
    assert "no data (signal.csv is missing)" in table  # an analysis the tour does not run
    assert not [name for name in ANALYSIS_TABLES if f"no data ({name} is missing)" in table]
