"""figures.paper on a smoke-preset runs directory: every output exists, every claim has a verdict with its
statistics, several runs directories make a claims x settings matrix."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.runs import select_runs
from figures.claims import VERDICT_COLUMNS
from figures.paper import CLAIMS, PAPER_SOURCE, PAPER_TABLE1, TABLE1_COLUMNS, main

FIGURES = ["fig3_signal", "fig4_gradient_norm", "fig6_mds", "fig7_interpolation", "fig_hessian_rigl"]
TABLES = ["table1_ensemble.md", "table1_ensemble.csv", "table1_vs_paper.md", "table1_vs_paper.csv",
          "table_egf_correlation.md", "table_egf_correlation.csv", "claims.csv", "claims_matrix.csv", "REPORT.md"]


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


def test_every_claim_has_a_verdict_with_its_statistics(figures_dir):
    claims = pd.read_csv(figures_dir / "claims.csv")
    assert list(claims["claim"].astype(str)) == [c.id for c in CLAIMS]
    assert list(claims.columns) == VERDICT_COLUMNS + ["verdict_without_untrained", "key_without_untrained",
                                                      "untrained_runs"]
    assert set(claims["verdict"]) <= {"held", "not held", "inconclusive"}
    assert (claims["n"] > 0).sum() >= 15  # the smoke preset has every method the claims compare
    measured = claims[claims["ci_low"].notna()]
    assert len(measured) >= 5
    for _, row in claims.iterrows():
        if row["n"] > 0 and pd.isna(row["ci_low"]):  # e.g. 2 seeds for a paired test: no verdict either way
            assert row["verdict"] == "inconclusive" and ("too few" in row["key"] or "undefined" in row["key"])
    for _, row in measured.iterrows():
        assert row["test"] and len(re.findall(r"[-+]?\d+\.?\d*", row["key"])) >= 3, row["key"]
        if "bootstrap" not in row["test"]:  # rank and exact intervals contain their estimate (percentile ones need not)
            assert row["ci_low"] <= row["effect"] <= row["ci_high"], row
        if row["verdict"] == "held":  # held means p < 0.05 and the interval on the claimed side
            assert row["p_value"] < 0.05
            side = row["ci_low"] > row["threshold"] if row["direction"] == "greater" else row["ci_high"] < row["threshold"]
            assert side, row
    report = (figures_dir / "REPORT.md").read_text()
    assert "## Claims across settings" in report and "## How each claim is tested" in report
    matrix = pd.read_csv(figures_dir / "claims_matrix.csv")
    setting = matrix.columns[-1]
    for _, row in claims.iterrows():  # the matrix cell says the verdict of claims.csv
        cell = matrix.loc[matrix["claim"].astype(str) == str(row["claim"]), setting].iloc[0]
        assert cell.startswith(f"**{row['verdict']}**") or cell.startswith(row["verdict"])
        assert cell in report
    for stem in FIGURES:
        assert f"{stem}.png" in report


def test_several_runs_directories_make_a_matrix(figures_dir, tmp_path):
    import shutil

    runs = figures_dir.parent
    other = tmp_path / "second"
    shutil.copytree(runs, other)
    out = tmp_path / "out"
    assert main([str(runs), str(other), "--out", str(out), "--quiet"]) == 0
    matrix = pd.read_csv(out / "claims_matrix.csv")
    first = "mlp-digits-s0.9"  # 'runs' is a generic name: the column is named by model, dataset, sparsity
    assert list(matrix.columns) == ["claim", "statement", first, "second"]
    # the same runs give the same verdicts in both columns
    assert (matrix[first] == matrix["second"]).all()
    claims = pd.read_csv(out / "claims.csv")
    assert sorted(set(claims["setting"])) == [first, "second"] and len(claims) == 2 * len(CLAIMS)
    for name in (first, "second"):
        assert (out / name / "fig3_signal.png").is_file()
    assert f"]({first}/fig3_signal.png)" in (out / "REPORT.md").read_text()


def test_setting_names(tmp_path):
    from figures.paper import setting_label, unique_names

    class R:
        def __init__(self, config):
            self.config, self.sparsity = config, config.get("sparsity", 0.9)

    assert setting_label(Path("/x/paper-mlp"), [R({"model": "mlp"})]) == "paper-mlp"
    assert setting_label(Path("/x/runs"), [R({"model": "lenet5", "dataset": "mnist", "sparsity": 0.95})]) == \
        "lenet5-mnist-s0.95"
    assert setting_label(Path("/x/runs"), [R({"preset": "evci-lenet5"})]) == "evci-lenet5"
    assert unique_names(["a", "b", "a"]) == ["a", "b", "a-2"]
    (tmp_path / "runs").mkdir()
    (tmp_path / "paper-lenet5").symlink_to(tmp_path / "runs")  # a link names a generic runs directory
    assert setting_label(tmp_path / "paper-lenet5", [R({"model": "lenet5"})]) == "paper-lenet5"


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


def test_analysis_dir_with_several_runs_directories_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--analysis-dir", str(tmp_path / "x")])
    assert exc.value.code == 2 and "one runs directory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_analyses_in_worker_processes_match_the_sequential_ones_and_name_failures(figures_dir, tmp_path, capsys):
    from analysis.runs import select_runs
    from figures.paper import STEPS, Step, build_parser, run_missing_analyses
    from sparse_training.errors import UserError

    runs = figures_dir.parent
    args = build_parser().parse_args([str(runs)])
    args.model = select_runs(runs, warn=False)[0].config.get("model", "lenet5")
    steps = tuple(s for s in STEPS if s.name in ("gradflow", "distances", "mds"))
    out = tmp_path / "parallel"
    out.mkdir()
    assert sorted(run_missing_analyses(runs, out, args, steps, jobs=2)) == ["distances", "gradflow", "mds"]
    assert "3 analyses, 2 at a time" in capsys.readouterr().out
    for step in steps:  # the same numbers as the sequential run of the fixture
        for name in step.outputs:
            pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(runs / "_analysis" / name),
                                          check_exact=False, rtol=1e-9)
    # one analysis fails (a runs directory that does not exist): it is named, the others still finish
    bad = Step("distances", ("never.csv",), lambda r, o, a: [str(r / "missing"), "--out", str(o), "--quiet"])
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(UserError, match=r"analysis\.distances \(never\.csv\) failed \(exit code 2\)"):
        run_missing_analyses(runs, again, args, steps + (bad,), jobs=2)
    assert all((again / name).is_file() for step in steps for name in step.outputs)
    with pytest.raises(SystemExit) as exc:
        main([str(runs), "--jobs", "0"])
    assert exc.value.code == 2 and "--jobs must be at least 1" in capsys.readouterr().err
