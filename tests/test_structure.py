"""Tests of the project's structure: one definition per concept, dependency direction, version floors."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.plotting import METHOD_ORDER, order_methods
from sparse_training.config import METHOD_NAMES
from sparse_training.metrics import metric_indices

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sparse_training", "landscape", "analysis", "figures")


def _sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text()) for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def _defined(name: str) -> list[str]:
    """Modules that define ``name`` at top level (a function, class or assignment)."""
    out = []
    for path, tree in _sources().items():
        for node in tree.body:
            targets = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                       [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])
            if name in targets:
                out.append(str(path.relative_to(ROOT)))
    return out


def _imports(path: Path, tree: ast.Module) -> list[tuple[str, str]]:
    """(module, name) pairs imported by a module (relative imports resolved against its package)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = f"{path.parent.name}.{mod}" if mod else path.parent.name
            out += [(mod, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
    return out


def test_method_order_is_defined_once_and_covers_every_method():
    assert _defined("METHOD_ORDER") == ["analysis/plotting.py"]
    assert sorted(METHOD_ORDER) == sorted(METHOD_NAMES)
    assert order_methods(["dense", "custom", "lottery", "prune", "dense"]) == ["prune", "lottery", "dense", "custom"]


def test_one_evaluate_function():
    assert _defined("evaluate") == ["landscape/evaluate.py"]


def test_dependency_direction():
    for path, tree in _sources().items():
        pkg = path.parent.name
        roots = {mod.split(".")[0] for mod, _ in _imports(path, tree)}
        if pkg == "landscape":
            assert not roots & {"sparse_training", "analysis", "figures"}, path
        if pkg == "sparse_training":
            assert not roots & {"analysis", "figures"}, path


def test_analysis_uses_no_trainer_internals():
    for path, tree in _sources().items():
        if path.parent.name != "analysis":
            continue
        from_trainer = {name for mod, name in _imports(path, tree) if mod == "sparse_training.trainer"}
        assert from_trainer <= {"select_device"}, (path, from_trainer)


@pytest.mark.parametrize("n,size", [(100, 10), (4000, 1000), (7, 20)])
def test_metric_indices_is_the_trainers_metrics_batch(n, size):
    idx = metric_indices(n, size)
    assert len(idx) == min(n, size) and len(set(idx.tolist())) == len(idx)
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(20220222))[:size]
    assert torch.equal(idx, expected)


# --- version floors -------------------------------------------------------------------------------
def _floors() -> dict[str, tuple[int, ...]]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", dep)
        if m:
            out[m.group(1).lower()] = tuple(int(v) for v in m.group(2).split("."))
    return out


def _uses(pattern: str) -> bool:
    """Whether any source file of the packages or tests matches ``pattern``."""
    files = [p for pkg in (*PACKAGES, "tests") for p in (ROOT / pkg).glob("*.py") if p.name != "test_structure.py"]
    return any(re.search(pattern, p.read_text()) for p in files)


def test_version_floors_cover_the_features_used():
    floors = _floors()
    # features -> the first release that has them
    if _uses(r"ClassicalMDS|metric_mds\s*=|init\s*=\s*\"classical_mds\""):
        assert floors["scikit-learn"] >= (1, 8)
    if _uses(r"np\.trapezoid"):
        assert floors["numpy"] >= (2, 0)
    assert hasattr(np, "trapezoid")
