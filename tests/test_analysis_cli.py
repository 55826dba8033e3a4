"""Tests of the shape every analysis command shares (analysis.cli), and of the project's import graph."""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import analysis.runs
import sparse_training.io
from analysis import distances
from analysis.cli import Command, analysis_parser, check_at_least, write_outputs
from sparse_training.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sparse_training", "landscape", "analysis", "figures")

FACTORY = '''
from torch import nn


def build():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
'''


@pytest.fixture
def manifest_dir(tmp_path) -> tuple[Path, str]:
    """Checkpoints of other code with a manifest.csv: a prune run (seed 0) and a lottery ticket of it (seed 1)."""
    (tmp_path / "tiny.py").write_text(FACTORY)
    ck = tmp_path / "ckpts"
    ck.mkdir()
    rows = []
    for method, seed, parent in (("prune", 0, ""), ("lottery", 1, "prune-seed0")):
        for point in ("start", "end"):
            torch.manual_seed(10 * seed + (point == "end"))
            net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
            torch.save(net.state_dict(), ck / f"{method}_{point}.pt")
            rows.append({"file": f"{method}_{point}.pt", "method": method, "seed": seed, "point": point,
                         "parent": parent})
    pd.DataFrame(rows).to_csv(ck / "manifest.csv", index=False)
    return ck, f"{tmp_path / 'tiny.py'}:build"


def _counting(monkeypatch, owner, name: str) -> list[int]:
    """Wrap ``owner.name`` so that each call is counted in the returned list."""
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


# --- the command: arguments parsed once, runs opened once --------------------------------------------
def test_a_command_parses_once_and_opens_the_manifest_once(manifest_dir, tmp_path, monkeypatch, capsys):
    ck, factory = manifest_dir
    parses = _counting(monkeypatch, argparse.ArgumentParser, "parse_args")
    opens = _counting(monkeypatch, analysis.runs, "open_manifest")
    reads = _counting(monkeypatch, analysis.runs, "open_runs")
    out = tmp_path / "out"
    # distances needs both the selected runs and the pool (the lottery ticket's pruning solution)
    assert distances.main([str(ck), "--model-factory", factory, "--out", str(out), "--quiet"]) == 0
    assert (len(parses), len(opens), len(reads)) == (1, 1, 1)
    frame = pd.read_csv(out / "distance_to_pruning.csv")
    assert set(frame["pruning_run"]) == {"prune-seed0"} and "lottery" in set(frame["method"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:] == [f"wrote {out / name}" for name in
                            ("distances.csv", "distance_to_pruning.csv", "distance_to_pruning.png")]


def test_the_selection_and_the_pool_come_from_one_opening(manifest_dir, monkeypatch):
    ck, factory = manifest_dir
    opens = _counting(monkeypatch, analysis.runs, "open_manifest")
    cmd = Command.parse(analysis_parser("test", "a test command"), [str(ck), "--model-factory", factory,
                                                                   "--method", "lottery"])
    assert [r.run_id for r in cmd.selected()] == ["lottery-seed1"]
    assert [r.run_id for r in cmd.selected(method="prune")] == ["lottery-seed1"]  # given selectors win
    assert sorted(r.run_id for r in cmd.pool()) == ["lottery-seed1", "prune-seed0"]
    assert len(opens) == 1
    assert cmd.device == torch.device("cpu")


def test_a_command_without_runs_writes_to_its_out(tmp_path, capsys):
    args = argparse.Namespace(out=str(tmp_path / "signal-out"), device="cpu")
    cmd = Command(args)
    assert cmd.source is None
    cmd.write({"t.csv": pd.DataFrame({"a": [1]})})
    assert (tmp_path / "signal-out" / "t.csv").read_text() == "a\n1\n"
    assert capsys.readouterr().out == f"wrote {tmp_path / 'signal-out' / 't.csv'}\n"


# --- the writer ----------------------------------------------------------------------------------------
def test_the_writer_writes_tables_text_and_figures_in_order_then_says_where(tmp_path, capsys):
    frame = pd.DataFrame({"method": ["lottery", "scratch"], "distance": [1.5, 2.25]})

    def draw(path: Path) -> list[Path]:
        path.with_suffix(".png").write_bytes(b"png")
        return [path.with_suffix(".png")]

    written = write_outputs(tmp_path, {"a.csv": frame, "a.md": "| table |\n"}, {"a.png": draw}, report="summary\n")
    assert written == [tmp_path / "a.csv", tmp_path / "a.md", tmp_path / "a.png"]
    assert (tmp_path / "a.csv").read_text() == frame.to_csv(index=False)
    assert (tmp_path / "a.md").read_text() == "| table |\n"
    assert capsys.readouterr().out == "summary\n" + "".join(f"wrote {p}\n" for p in written)


def test_the_writer_is_atomic(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("old results\n")

    def killed(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(sparse_training.io.os, "replace", killed)
    with pytest.raises(OSError):
        write_outputs(tmp_path, {"a.csv": pd.DataFrame({"x": [1, 2]})})
    assert (tmp_path / "a.csv").read_text() == "old results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]  # no temp file left behind


# --- bad input: one sentence, exit code 2, nothing touched --------------------------------------------
def test_check_at_least_says_which_flag_in_one_sentence():
    check_at_least("--points", 2, 2)
    with pytest.raises(UserError, match=r"^--points must be at least 2, got 1\.$"):
        check_at_least("--points", 1, 2)


@pytest.mark.parametrize("case", ["empty", "block"])
def test_bad_input_exits_2_with_one_sentence_and_keeps_results(case, manifest_dir, tmp_path, capsys):
    ck, factory = manifest_dir
    runs = tmp_path / "empty" if case == "empty" else ck
    runs.mkdir(exist_ok=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "distances.csv").write_text("old results\n")
    argv = [str(runs), "--out", str(out), "--quiet"]
    argv += ["--model-factory", factory, "--block", "0"] if case == "block" else []
    with pytest.raises(SystemExit) as exc:
        distances.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and err[0].endswith(".")
    assert ("holds no runs" in err[0]) if case == "empty" else ("--block must be at least 1, got 0." in err[0])
    assert (out / "distances.csv").read_text() == "old results\n"
    assert sorted(p.name for p in out.iterdir()) == ["distances.csv"]


# --- the import graph -----------------------------------------------------------------------------------
def module_names(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its __init__)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file: at the top, in functions, under ``if``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .data import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def mutual_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> set[tuple[str, str]]:
    """Pairs of modules that import each other (each pair once, in sorted order)."""
    known = module_names(root, packages)
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    return {(a, b) for a, targets in graph.items() for b in targets if a < b and a in graph[b]}


def test_no_module_imports_a_module_that_imports_it_back():
    assert mutual_imports(ROOT) == set()


def test_the_import_scan_finds_a_pair_at_any_level(tmp_path):
    pkg = tmp_path / "sparse_training"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text('if __name__ == "__main__":\n    from sparse_training.fetch import main\n')
    (pkg / "fetch.py").write_text("from .data import IDX_FILES\n")
    (pkg / "io.py").write_text("def f():\n    from . import errors\n")
    (pkg / "errors.py").write_text("import sparse_training.io\n")
    (pkg / "models.py").write_text("from sparse_training import io\n")
    assert mutual_imports(tmp_path, ("sparse_training",)) == {
        ("sparse_training.data", "sparse_training.fetch"), ("sparse_training.errors", "sparse_training.io")}


def test_data_fetch_still_runs_as_a_module(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "sparse_training.data", "fetch", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--data-dir" in done.stdout


def test_written_files_are_readable_by_the_group_as_with_open(tmp_path):
    """Atomic writes go through a private temp file; the result gets the permissions plain open() would give."""
    import os

    from sparse_training.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
        with open(tmp_path / "b.csv", "w") as fh:
            fh.write("x\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o644
