"""Decisive verdicts: the 10-seed evci design, runs that did not train, claim 6 over many updates with its
check at 4x the examples, non-superiority rows, and the report's robustness columns."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.runs import Run, load_runs, select_runs
from figures.claims import ClaimData, evaluate_claim, paired_test
from figures.evci_claims import EVCI_CLAIMS, NOT_LARGER_MARGIN
from figures.paper import TrainedClaimData, hessian_check, hessian_plan
from sparse_training.presets import preset_runs

BY_ID = {c.id: c for c in EVCI_CLAIMS}


# --- the design ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["evci-lenet5", "evci-mlp"])
def test_evci_presets_default_to_ten_seeds_with_dense_runs_per_seed(preset):
    specs = preset_runs(preset)
    by_method: dict[str, set[int]] = {}
    for s in specs:
        by_method.setdefault(s.config.method, set()).add(s.config.seed)
    assert set(by_method) == {"prune", "lottery", "scratch", "scratch+", "rigl", "rigl+", "dense", "small-dense"}
    for method, seeds in by_method.items():
        assert seeds == set(range(10)), method  # dense and small-dense too: n = 20 dense runs for claim 7
    assert len(specs) == 80
    kernels = {s.config.sparse_kernels for s in specs}
    assert kernels == ({True} if preset == "evci-lenet5" else {False})


def test_other_family_presets_keep_one_dense_run():
    specs = preset_runs("paper-lenet5")
    assert [s.config.seed for s in specs if s.config.method in ("dense", "small-dense")] == [0, 0]
    assert len(specs) == 32 and not any(s.config.sparse_kernels for s in specs)


# --- runs that did not train -------------------------------------------------------------------
def _fake_run(root: Path, run_id: str, train_acc: float, method: str = "scratch", seed: int = 0) -> Path:
    d = root / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"method": method, "seed": seed, "sparsity": 0.9, "model": "mlp",
                                               "dataset": "digits", "num_classes": 10}))
    (d / "status.json").write_text(json.dumps({"state": "complete", "step": 10}))
    rows = [{"step": 0, "phase": "train", "train_acc": 0.5, "test_acc": 0.5},
            {"step": 10, "phase": "train", "train_acc": train_acc, "test_acc": train_acc},
            {"step": 10, "phase": "pre_update", "train_acc": 0.99, "test_acc": float("nan")}]
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    return d


@pytest.mark.parametrize("acc,flag", [(0.1135, True), (0.149, True), (0.151, False), (0.97, False)])
def test_did_not_train_is_within_five_points_of_chance(tmp_path, acc, flag):
    run = Run(_fake_run(tmp_path, "r", acc))
    assert run.final_train_acc == pytest.approx(acc)  # the last *train* row, not the update row after it
    assert run.did_not_train is flag


def test_runs_table_carries_the_flag(tmp_path):
    _fake_run(tmp_path, "stuck", 0.11, seed=3)
    _fake_run(tmp_path, "fine", 0.95, seed=1)
    table = load_runs(tmp_path).set_index("run_id")
    assert bool(table.loc["stuck", "did_not_train"]) and not bool(table.loc["fine", "did_not_train"])
    assert table.loc["stuck", "train_acc"] == pytest.approx(0.11)


def test_claims_without_untrained_runs_drop_them_and_their_partners(tmp_path):
    analysis = tmp_path / "_analysis"
    analysis.mkdir()
    rows = []
    for seed in range(6):
        for method, value in (("lottery", 1.0 + 0.1 * seed), ("scratch", 2.0 + 0.1 * seed)):
            rows.append({"run_id": f"{method}-s{seed}", "method": method, "seed": seed, "measure": "grad_norm",
                         "aggregation": "early", "value": value})
    pd.DataFrame(rows).to_csv(analysis / "gradflow_runs.csv", index=False)
    full = evaluate_claim(BY_ID["2c"], ClaimData(tmp_path, analysis))
    cut = evaluate_claim(BY_ID["2c"], TrainedClaimData(tmp_path, analysis, {"scratch-s3"}))
    assert (full.n, cut.n) == (6, 5)  # seed 3's lottery run left with its partner


# --- claim 2c/2d: non-superiority ------------------------------------------------------------------
def test_not_larger_is_a_margin_test_that_equal_norms_can_pass(tmp_path):
    """Equal norms (log ratio ~ 0, spread far inside the 25% margin) are held; a lottery norm 50% larger is not
    held; under the old "smaller" test equal norms could never be held."""
    analysis = tmp_path / "_analysis"
    analysis.mkdir()
    rng = np.random.default_rng(0)

    def write(ratio: float) -> None:
        rows = []
        for seed in range(10):
            base = 1.0 + 0.2 * rng.random()
            for method, value in (("lottery", base * ratio * (1 + 0.01 * rng.standard_normal())),
                                  ("scratch", base)):
                rows.append({"run_id": f"{method}-s{seed}", "method": method, "seed": seed,
                             "measure": "grad_norm", "aggregation": "mean", "value": value})
        pd.DataFrame(rows).to_csv(analysis / "gradflow_runs.csv", index=False)

    claim = BY_ID["2d"]
    assert claim.direction == "less" and claim.threshold == pytest.approx(math.log(1.25)) == NOT_LARGER_MARGIN
    assert "tested as" not in claim.statement and claim.margin_why
    write(1.0)
    assert evaluate_claim(claim, ClaimData(tmp_path, analysis)).verdict == "held"
    d = np.log(pd.read_csv(analysis / "gradflow_runs.csv").pivot(index="seed", columns="method", values="value"))
    assert paired_test(d["lottery"], d["scratch"], "less", 0.0).verdict != "held"  # "smaller" cannot hold it
    write(1.5)
    assert evaluate_claim(claim, ClaimData(tmp_path, analysis)).verdict == "not held"


def test_no_claim_row_says_it_is_tested_as_something_else():
    for c in EVCI_CLAIMS:
        assert "tested as" not in c.statement.lower(), c.id


# --- claim 6 --------------------------------------------------------------------------------------------
def test_hessian_plan_spreads_at_least_the_asked_updates_over_every_seed(smoke_runs):
    chosen, steps = hessian_plan(smoke_runs, 7)
    rigl = select_runs(smoke_runs, method=["rigl", "rigl+"], warn=False)
    assert {r.run_id for r in chosen} == {r.run_id for r in rigl}  # every seed's RigL and RigL+ runs
    assert len(chosen) * len(steps) >= 7 and len(steps) == math.ceil(7 / len(chosen))
    assert steps[0] == min(rigl[0].update_steps()) and set(steps) <= set(rigl[0].update_steps())


def test_hessian_check_compares_the_same_updates(tmp_path):
    base = pd.DataFrame({"run_id": ["a", "a", "b", "c"], "method": ["rigl", "rigl", "rigl+", "rigl"],
                         "seed": [0, 0, 0, 1], "step": [10, 20, 10, 10],
                         "top_pre": 10.0, "top_post": 10.0, "min_pre": [-1.0, -1.0, -1.0, -1.0],
                         "min_post": [-2.0, -2.0, -0.5, -2.0],
                         "min_residual_pre": [1e-4, 2e-4, 1e-4, 1e-4], "min_residual_post": [1e-3, 1e-4, 1e-4, 1e-4]})
    base.to_csv(tmp_path / "hessian_updates.csv", index=False)
    (tmp_path / "hessian_check").mkdir()
    big = base[base["step"] == 10].copy()
    big["min_post"] = [-2.0, -2.0, -2.0]  # run b's update flips: more negative at 4x, not at the base
    big.to_csv(tmp_path / "hessian_check" / "hessian_updates.csv", index=False)
    info = hessian_check(tmp_path)
    assert info["n"] == 4 and info["check_n"] == 3 and info["agree"] == 2
    assert info["residual_max"] == pytest.approx(1e-4)  # 1e-3 / |10|
    assert info["verdict_base"].statistic == 2 and info["verdict_4x"].statistic == 3


def test_claim_6_counts_updates_and_leaves_out_seeds(tmp_path):
    analysis = tmp_path / "_analysis"
    analysis.mkdir()
    n = 40
    pd.DataFrame({"run_id": [f"r{i % 20}" for i in range(n)], "method": ["rigl", "rigl+"] * (n // 2),
                  "seed": [i % 10 for i in range(n)], "step": [100 * (i // 20 + 1) for i in range(n)],
                  "top_pre": 5.0, "top_post": 5.0, "min_pre": -0.1, "min_post": -0.3}).to_csv(
        analysis / "hessian_updates.csv", index=False)
    v = evaluate_claim(BY_ID["6"], ClaimData(tmp_path, analysis))
    assert v.n == 40 and v.verdict == "held"
    assert (v.loo_same, v.loo_total) == (10, 10) and not v.fragile  # one subset per seed, 36 updates each


# --- the report ----------------------------------------------------------------------------------------
def test_report_shows_margins_robustness_and_untrained_runs(smoke_runs, tmp_path):
    from figures.paper import main

    runs = tmp_path / "runs"
    shutil.copytree(smoke_runs, runs, ignore=shutil.ignore_patterns("_analysis", "_figures"))
    assert main([str(runs), "--hessian-updates", "4", "--hessian-examples", "200", "--quiet"]) == 0
    report = (runs / "_figures" / "REPORT.md").read_text()
    for text in ("margin or threshold: why", "non-superiority", "robustness", "### Runs that did not train",
                 "without did-not-train runs", "Lanczos residual", "4× the examples"):
        assert text in report, text
    claims = pd.read_csv(runs / "_figures" / "claims.csv")
    for col in ("loo_same", "loo_total", "fragile", "seeds_needed", "margin_why", "verdict_without_untrained"):
        assert col in claims, col
    check = pd.read_csv(runs / "_analysis" / "hessian_check" / "hessian_updates.csv")
    base = pd.read_csv(runs / "_analysis" / "hessian_updates.csv")
    assert len(base) >= 4 and set(zip(check["run_id"], check["step"])) <= set(zip(base["run_id"], base["step"]))
