"""Shared fixtures: a smoke-preset runs directory built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny models: one torch thread avoids contention on small CPUs (and is what suite workers use)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """A complete smoke-preset runs directory (2 seeds; tiny MLP on digits). Treat it as read-only:
    tests that write analyses should pass ``--out`` to a tmp dir or copy it first (see ``smoke_copy``)."""
    from sparse_training.presets import preset_runs
    from sparse_training.suite import run_suite

    out = tmp_path_factory.mktemp("smoke") / "runs"
    results = run_suite(preset_runs("smoke", 2), out, jobs=2, quiet=True)
    assert (results["state"] == "complete").all(), results
    return out


@pytest.fixture()
def smoke_copy(smoke_runs, tmp_path) -> Path:
    """A private copy of the smoke runs directory that a test may write into."""
    import shutil

    dst = tmp_path / "runs"
    shutil.copytree(smoke_runs, dst, ignore=shutil.ignore_patterns("_analysis", "_figures"))
    return dst
