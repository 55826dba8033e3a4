"""The inspection notebook executes on a smoke-preset runs directory and shows its tables and plots."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inspect_runs.ipynb"


def test_notebook_executes_on_smoke_runs(smoke_runs, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("RUNS_DIR", str(smoke_runs))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parents[1])}})
    client.execute(env={**os.environ})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "mlp-digits-s0.9-lottery-seed0" in html  # the run table is shown
    assert "scratch+" in html  # the accuracy-by-method table
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots
