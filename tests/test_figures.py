"""figures.paper on a smoke-preset runs directory: every output exists, is non-empty, and every claim has numbers."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from analysis.runs import select_runs
from figures.paper import PAPER_SOURCE, PAPER_TABLE1, TABLE1_COLUMNS, main

FIGURES = ["fig3_signal", "fig4_gradient_norm", "fig6_mds", "fig7_interpolation", "fig_hessian_rigl"]
TABLES = ["table1_ensemble.md", "table1_ensemble.csv", "table1_vs_paper.md", "table1_vs_paper.csv",
          "table_egf_correlation.md", "table_egf_correlation.csv", "claims.csv", "REPORT.md"]


@pytest.fixture(scope="module")
def figures_dir(smoke_runs, tmp_path_factory):
    import shutil

    runs = tmp_path_factory.mktemp("fig") / "runs"
    shutil.copytree(smoke_runs, runs, ignore=shutil.ignore_patterns("_analysis", "_figures"))
    assert main([str(runs), "--hessian-updates", "2", "--hessian-examples", "200"]) == 0
    return runs / "_figures"


def test_every_output_exists_and_is_non_empty(figures_dir):
    for stem in FIGURES:
        for ext in ("png", "pdf"):
            path = figures_dir / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    for name in TABLES:
        assert (figures_dir / name).stat().st_size > 50, name


def test_every_claim_row_carries_numbers(figures_dir):
    claims = pd.read_csv(figures_dir / "claims.csv")
    assert list(claims["claim"]) == [1, 2, 3, 4, 5, 6, 7]
    for text in claims["measured"]:
        numbers = re.findall(r"[-+]?\d+\.\d+", text)
        assert len(numbers) >= 2, text
        assert "nan" not in text.lower(), text
    report = (figures_dir / "REPORT.md").read_text()
    assert report.count("| **yes** |") + report.count("| **no** |") == 7
    for stem in FIGURES:
        assert f"{stem}.png" in report


def test_table1_matches_ensemble_analysis(figures_dir):
    table = pd.read_csv(figures_dir / "table1_ensemble.csv")
    analysis = pd.read_csv(figures_dir.parent / "_analysis" / "ensemble.csv")
    merged = table.merge(analysis, on="group", suffixes=("", "_a"))
    assert len(merged) == len(analysis)
    assert (merged["ensemble_acc"] - merged["ensemble_acc_a"]).abs().max() < 1e-12


def test_table1_vs_paper_pairs_the_papers_rows_with_ours(figures_dir):
    table = pd.read_csv(figures_dir / "table1_vs_paper.csv")
    analysis = pd.read_csv(figures_dir.parent / "_analysis" / "ensemble.csv").set_index("group")
    paper = table[table["source"] == PAPER_SOURCE].set_index("group")
    ours = table[table["source"] != PAPER_SOURCE].set_index("group")
    assert list(paper.index) == list(PAPER_TABLE1) and set(ours.index) == set(PAPER_TABLE1)
    for group, numbers in PAPER_TABLE1.items():  # the paper's rows are its numbers, unchanged
        assert paper.loc[group, TABLE1_COLUMNS].tolist() == pytest.approx(list(numbers), nan_ok=True)
    for group in ("lottery", "scratch", "pruning solutions"):  # ours are the ensemble analysis's
        assert ours.loc[group, TABLE1_COLUMNS].tolist() == pytest.approx(
            analysis.loc[group, TABLE1_COLUMNS].tolist(), nan_ok=True)
        assert ours.loc[group, "ensemble_gain"] == pytest.approx(
            analysis.loc[group, "ensemble_acc"] - analysis.loc[group, "test_acc_mean"])
    solution = analysis.loc["lottery", "pruning_run"]
    [run] = select_runs(figures_dir.parent, run=solution, warn=False)
    assert ours.loc["pruning solution", "test_acc_mean"] == pytest.approx(run.final_test_acc)
    assert paper.loc["lottery", "ensemble_gain"] == pytest.approx(0.7627 - 0.7573)
    report = (figures_dir / "REPORT.md").read_text()
    assert "Table 1 beside the paper" in report and "75.73 ± 0.08" in report


def test_second_call_reuses_analyses(figures_dir, capsys):
    runs = figures_dir.parent
    stamps = {p: p.stat().st_mtime_ns for p in (runs / "_analysis").glob("*.csv")}
    assert main([str(runs)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (runs / "_analysis").glob("*.csv")} == stamps
    assert "running analysis" not in capsys.readouterr().out


def test_empty_directory_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2 and "holds no runs" in capsys.readouterr().err
