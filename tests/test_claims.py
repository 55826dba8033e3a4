"""The claim engine: every test type gives held, not held and inconclusive on synthetic inputs built for each,
with its statistic, p-value and interval checked against scipy (computed independently here)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from figures import claims as C

ALPHA = C.ALPHA


# --- paired: Wilcoxon and sign ----------------------------------------------------------------
PAIRED = {
    "held": (np.array([3.1, 2.4, 5.0, 4.2, 3.3, 6.1, 2.9]), np.array([2.0, 1.9, 3.1, 3.0, 2.2, 4.0, 2.1])),
    "not held": (np.array([1.0, 1.5, 2.2, 0.9, 1.7, 1.1, 2.0]), np.array([2.05, 2.33, 3.17, 1.71, 2.96, 2.02, 2.58])),
    "inconclusive": (np.array([1.0, 2.5, 2.2, 0.9, 3.1, 1.1, 2.0]), np.array([1.43, 2.01, 2.93, 0.55, 2.84, 1.37, 1.79])),
}


@pytest.mark.parametrize("expected", list(PAIRED))
def test_wilcoxon_verdicts_and_statistic_match_scipy(expected):
    a, b = PAIRED[expected]
    v = C.paired_test(a, b, "greater", test="wilcoxon")
    assert v.verdict == expected
    ref = stats.wilcoxon(a - b, alternative="greater", method="exact")
    assert v.statistic == pytest.approx(ref.statistic)
    assert v.p_value == pytest.approx(ref.pvalue)
    assert v.n == len(a)
    # the Hodges-Lehmann estimate is the median of the Walsh averages
    d = a - b
    walsh = [(d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d))]
    assert v.effect == pytest.approx(np.median(walsh))
    # the interval inverts the one-sided tests: just inside a bound scipy rejects at alpha, just outside it does not
    eps = 1e-9
    assert stats.wilcoxon(d - (v.ci_low - eps), alternative="greater", method="exact").pvalue <= ALPHA
    assert stats.wilcoxon(d - (v.ci_low + eps), alternative="greater", method="exact").pvalue > ALPHA
    assert stats.wilcoxon(d - (v.ci_high + eps), alternative="less", method="exact").pvalue <= ALPHA
    assert stats.wilcoxon(d - (v.ci_high - eps), alternative="less", method="exact").pvalue > ALPHA


def test_wilcoxon_direction_less_and_threshold():
    a, b = PAIRED["not held"]
    assert C.paired_test(a, b, "less").verdict == "held"
    a, b = PAIRED["held"]
    # a - b is about +1.1: above 0.5 is held, above 3 is not
    assert C.paired_test(a, b, "greater", threshold=0.5).verdict == "held"
    assert C.paired_test(a, b, "greater", threshold=3.0).verdict == "not held"
    ref = stats.wilcoxon(a - b - 0.5, alternative="greater", method="exact")
    assert C.paired_test(a, b, "greater", threshold=0.5).p_value == pytest.approx(ref.pvalue)


def test_five_seeds_all_one_way_is_held_four_of_five_is_not():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert C.paired_test(a + 0.5, a).verdict == "held"  # p = 1/32
    b = a.copy()
    b[0] += 1.0  # one seed goes the other way
    assert C.paired_test(a + 0.5, b).verdict == "inconclusive"


@pytest.mark.parametrize("expected", list(PAIRED))
def test_sign_test_verdicts_match_scipy(expected):
    a, b = PAIRED[expected]
    v = C.paired_test(a, b, "greater", test="sign")
    d = a - b
    k, m = int(np.sum(d > 0)), int(np.sum(d != 0))
    assert v.statistic == k
    assert v.p_value == pytest.approx(stats.binomtest(k, m, 0.5, alternative="greater").pvalue)
    assert v.effect == pytest.approx(np.median(d))
    assert v.verdict == expected


def test_too_few_pairs_is_inconclusive():
    v = C.paired_test([1.0, 2.0], [0.0, 0.0])
    assert v.verdict == "inconclusive" and v.n == 2


# --- unpaired ---------------------------------------------------------------------------------
UNPAIRED = {
    "held": (np.array([0.91, 0.83, 0.95, 0.88, 0.99]), np.array([0.41, 0.52, 0.47, 0.39])),
    "not held": (np.array([0.11, 0.23, 0.15, 0.18, 0.09]), np.array([0.41, 0.52, 0.47, 0.39])),
    "inconclusive": (np.array([0.42, 0.53, 0.36, 0.49, 0.45]), np.array([0.41, 0.52, 0.47, 0.39])),
}


@pytest.mark.parametrize("expected", list(UNPAIRED))
def test_mann_whitney_verdicts_match_scipy(expected):
    a, b = UNPAIRED[expected]
    v = C.unpaired_test(a, b, "greater")
    ref = stats.mannwhitneyu(a, b, alternative="greater", method="exact")
    assert v.statistic == pytest.approx(ref.statistic)
    assert v.p_value == pytest.approx(ref.pvalue)
    assert v.effect == pytest.approx(np.median(np.subtract.outer(a, b)))
    assert v.verdict == expected


def test_mann_whitney_interval_inverts_the_test():
    a, b = UNPAIRED["inconclusive"]
    v = C.unpaired_test(a, b, "greater")
    eps = 1e-9
    assert stats.mannwhitneyu(a - (v.ci_low - eps), b, alternative="greater", method="exact").pvalue <= ALPHA
    assert stats.mannwhitneyu(a - (v.ci_low + eps), b, alternative="greater", method="exact").pvalue > ALPHA


# --- correlations -----------------------------------------------------------------------------
def _corr_data(kind: str, n: int = 30):
    rng = np.random.default_rng(7)
    x = rng.normal(size=n)
    if kind == "held":
        return x, x + 0.3 * rng.normal(size=n)
    if kind == "not held":
        return x, -x + 0.3 * rng.normal(size=n)
    return x[:12], rng.normal(size=12)


@pytest.mark.parametrize("expected", ["held", "not held", "inconclusive"])
def test_correlation_verdicts_tau_and_bootstrap_interval(expected):
    x, y = _corr_data(expected)
    v = C.correlation_test(x, y, "greater")
    assert v.verdict == expected
    assert v.statistic == pytest.approx(stats.kendalltau(x, y).statistic)
    ref = stats.bootstrap((x, y), lambda a, b: stats.kendalltau(a, b).statistic, paired=True, vectorized=False,
                          n_resamples=2000, confidence_level=1 - 2 * ALPHA, method="percentile",
                          rng=np.random.default_rng(1))
    # two bootstraps with different resamples: equal up to Monte Carlo error
    assert v.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.06)
    assert v.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.06)


def _diff_data(kind: str, n: int = 40):
    rng = np.random.default_rng(3)
    y = rng.normal(size=n)
    strong, weak = y + 0.3 * rng.normal(size=n), y + 3.0 * rng.normal(size=n)
    if kind == "held":
        return strong, weak, y
    if kind == "not held":
        return weak, strong, y
    return weak, y + 3.0 * rng.normal(size=n), y


@pytest.mark.parametrize("expected", ["held", "not held", "inconclusive"])
def test_correlation_difference_verdicts(expected):
    x1, x2, y = _diff_data(expected)
    v = C.correlation_difference_test(x1, x2, y, "greater")
    assert v.verdict == expected
    assert v.statistic == pytest.approx(stats.kendalltau(x1, y).statistic - stats.kendalltau(x2, y).statistic)
    assert v.ci_low <= v.statistic <= v.ci_high


def test_bootstrap_is_reproducible():
    x1, x2, y = _diff_data("inconclusive")
    assert C.correlation_difference_test(x1, x2, y) == C.correlation_difference_test(x1, x2, y)


@pytest.mark.parametrize(("centre", "expected"), [(0.5, "held"), (-0.5, "not held"), (0.05, "inconclusive")])
def test_bootstrap_test_on_given_replicates(centre, expected):
    reps = np.random.default_rng(0).normal(centre, 0.2, size=2000)
    v = C.bootstrap_test(centre, reps, "greater", n=5)
    assert v.verdict == expected
    assert (v.ci_low, v.ci_high) == pytest.approx(tuple(np.quantile(reps, [ALPHA, 1 - ALPHA])))
    assert v.p_value == pytest.approx((np.sum(reps <= 0) + 1) / (len(reps) + 1))


# --- counts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "n", "expected"), [(18, 20, "held"), (3, 20, "not held"), (12, 20, "inconclusive"),
                                                  (7, 8, "held")])
def test_binomial_sign_test_matches_scipy(k, n, expected):
    v = C.count_test(k, n, "greater", 0.5)
    ref = stats.binomtest(k, n, 0.5, alternative="greater")
    assert v.p_value == pytest.approx(ref.pvalue)
    ci = stats.binomtest(k, n, 0.5).proportion_ci(confidence_level=1 - 2 * ALPHA, method="exact")
    assert (v.ci_low, v.ci_high) == pytest.approx((ci.low, ci.high))
    assert v.statistic == k and v.effect == pytest.approx(k / n)
    assert v.verdict == expected


def test_binomial_extra_effect_has_a_t_interval():
    changes = np.array([-0.4, -0.2, -0.5, 0.1, -0.3])
    v = C.count_test(4, 5, extra=("mean Δλ_min", changes))
    half = stats.t.ppf(1 - ALPHA, 4) * changes.std(ddof=1) / np.sqrt(5)
    assert f"{changes.mean() - half:+.3g}" in v.detail and f"{changes.mean() + half:+.3g}" in v.detail


# --- the decision rule and the claim rows -----------------------------------------------------
def test_decision_rule():
    assert C.decide(0.01, 0.2, 0.9, 0.0, "greater") == "held"
    assert C.decide(0.01, -0.1, 0.9, 0.0, "greater") == "inconclusive"  # interval covers the threshold
    assert C.decide(0.2, 0.1, 0.9, 0.0, "greater") == "inconclusive"  # p too large
    assert C.decide(0.9, -0.9, -0.1, 0.0, "greater") == "not held"
    assert C.decide(0.01, -0.9, -0.2, 0.0, "less") == "held"
    assert C.decide(float("nan"), 0.2, 0.9, 0.0, "greater") == "inconclusive"


def test_claim_row_evaluates_and_missing_data_is_inconclusive(tmp_path):
    a, b = PAIRED["held"]
    row = C.Claim(id="X1", paper="p", statement="a beats b", measure="m", source="x.csv", comparison="a - b",
                  test="wilcoxon", direction="greater", threshold=0.0, figure="f.png",
                  samples=lambda data: {"a": a, "b": b})
    data = C.ClaimData(tmp_path)
    v = C.evaluate_claim(row, data)
    assert v.claim == "X1" and v.verdict == "held"
    missing = C.Claim(**{**row.__dict__, "id": "X2", "samples": lambda data: {"x": data.csv("nope.csv")}})
    w = C.evaluate_claim(missing, data)
    assert w.verdict == "inconclusive" and w.n == 0 and "nope.csv" in w.key
    frame = C.verdict_frame([row, missing], [v, w], "s")
    assert list(frame["verdict"]) == ["held", "inconclusive"] and list(frame.columns) == C.VERDICT_COLUMNS
    with pytest.raises(ValueError):
        C.Claim(**{**row.__dict__, "test": "t-test"})


# --- claim 7 on the paper-lenet5 numbers -------------------------------------------------------
def _ranks_with_tau(n: int, tau: float, rng: np.random.Generator) -> np.ndarray:
    """A permutation of 0..n-1 whose Kendall tau with 0..n-1 is the nearest reachable to ``tau``."""
    target = round((1 - tau) * n * (n - 1) / 4)  # discordant pairs
    perm = rng.permutation(n)
    inv = int(sum(perm[i] > perm[j] for i in range(n) for j in range(i + 1, n)))
    while inv != target:  # an adjacent swap changes the number of inversions by exactly one
        i = int(rng.integers(0, n - 1))
        if (perm[i] < perm[i + 1]) == (inv < target):
            perm[i], perm[i + 1] = perm[i + 1], perm[i]
            inv += 1 if inv < target else -1
    return perm


def test_claim_7_on_the_paper_lenet5_numbers_is_not_held(tmp_path):
    """REPORT.md once called claim 7 held on tau(EGF1) = +0.117 against tau(|g|_1) = +0.107 (EGF2 -0.014 against
    |g|_2 -0.028) over 30 sparse runs. Like with like and with a bootstrap interval, that is not held."""
    import pandas as pd

    from figures.evci_claims import EVCI_CLAIMS

    n, rng = 30, np.random.default_rng(11)
    acc = np.linspace(0.90, 0.97, n)
    measures = {"egf1": 0.117, "grad_norm_l1": 0.107, "egf2": -0.014, "grad_norm": -0.028}
    ranks = {m: _ranks_with_tau(n, t, rng) for m, t in measures.items()}
    for m, t in measures.items():
        assert stats.kendalltau(ranks[m], acc).statistic == pytest.approx(t, abs=0.003)
    rows = [{"run_id": f"r{i}", "method": "scratch", "seed": i, "group": "sparse", "measure": m,
             "aggregation": "spaced", "value": float(ranks[m][i]), "final_test_acc": acc[i],
             "final_test_loss": 1 - acc[i]} for m in measures for i in range(n)]
    (tmp_path / "_analysis").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "_analysis" / "gradflow_runs.csv", index=False)
    data = C.ClaimData(tmp_path)
    by_id = {c.id: c for c in EVCI_CLAIMS}
    for cid in ("7a", "7b", "7c", "7d"):
        v = C.evaluate_claim(by_id[cid], data)
        assert v.n == n and v.verdict != "held", v
        assert v.ci_low <= 0 <= v.ci_high  # the interval of the difference covers 0
    # the old rule (best |tau| of EGF >= |tau| of ||g||_2) would have said held
    assert max(abs(measures["egf1"]), abs(measures["egf2"])) >= abs(measures["grad_norm"])


# --- robustness: leave-one-out, fragility, seeds needed ----------------------------------------
def _row(test: str, samples: dict, direction: str = "greater", threshold: float = 0.0, cid: str = "R1") -> C.Claim:
    return C.Claim(id=cid, paper="p", statement="s", measure="m", source="x.csv", comparison="c", test=test,
                   direction=direction, threshold=threshold, figure="f.png", samples=lambda data: samples)


def test_kendall_resampled_is_kendall_many_bit_for_bit():
    rng = np.random.default_rng(2)
    x, y = np.round(rng.normal(size=15), 1), np.round(rng.normal(size=15), 1)
    x[:3] = x[0]  # ties in x
    idx = rng.integers(0, 15, size=(500, 15))
    (tau,) = C.kendall_resampled([x], y, idx)
    assert np.array_equal(tau, C.kendall_many(x[idx], y[idx]), equal_nan=True)
    const = np.ones(15)  # a constant y: every tau undefined
    assert np.isnan(C.kendall_resampled([x], const, idx)[0]).all()


def test_five_positive_pairs_held_but_every_leave_one_out_is_inconclusive(tmp_path):
    # n = 5, all differences positive and distinct: W+ = 15, exact p = P(W+ >= 15) = 1/32 < 0.05; the interval
    # is [min d, max d] (c = 0 since P(W+ <= 0) = 1/32 <= 0.05 < P(W+ <= 1) = 2/32), above 0: held.
    # Leaving out any pair gives n = 4, whose smallest possible p is 1/16 > 0.05 (and c = -1: infinite
    # interval): inconclusive. So LOO = 0/5, fragile.
    d = np.array([0.5, 1.1, 1.7, 2.3, 2.9])
    samples = {"a": d, "b": np.zeros(5)}
    assert C.paired_test(**samples).p_value == pytest.approx(1 / 32)
    assert C.leave_one_out("wilcoxon", samples, "greater", 0.0) == (0, 5)
    v = C.evaluate_claim(_row("wilcoxon", samples), C.ClaimData(tmp_path))
    assert (v.verdict, v.loo_same, v.loo_total, v.fragile, v.seeds_needed) == ("held", 0, 5, True, -1)
    assert C.robustness_text(v) == "LOO 0/5 (fragile)"


def test_ten_positive_pairs_every_leave_one_out_still_held(tmp_path):
    # n = 10 all positive: p = 1/1024; each subset of 9 all positive: p = 1/512 < 0.05, lower bound = the
    # smallest Walsh average > 0: held. LOO = 10/10, not fragile.
    d = np.linspace(0.3, 3.0, 10)
    samples = {"a": d, "b": np.zeros(10)}
    v = C.evaluate_claim(_row("wilcoxon", samples), C.ClaimData(tmp_path))
    assert (v.verdict, v.loo_same, v.loo_total, v.fragile) == ("held", 10, 10, False)
    assert C.robustness_text(v) == "LOO 10/10"
    assert C.paired_test(d[1:], np.zeros(9)).p_value == pytest.approx(1 / 512)


def test_inconclusive_verdict_is_never_fragile(tmp_path):
    # d = [1, 2, 3, 4, 5, -2.5]: ranks of |d| 1, 2, 4, 5, 6 positive (2.5 has rank 3): W+ = 18, p = P(W+ <= 3)
    # = 5/64 > 0.05: inconclusive. Leaving out -2.5 gives 5 positive pairs: held (p = 1/32); leaving out a
    # positive one leaves 4 of 5 positive, p >= 2/32: inconclusive. LOO 5/6, not fragile (not decided).
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0, -2.5])
    samples = {"a": d, "b": np.zeros(6)}
    assert C.paired_test(**samples).p_value == pytest.approx(5 / 64)
    v = C.evaluate_claim(_row("wilcoxon", samples), C.ClaimData(tmp_path))
    assert (v.verdict, v.loo_same, v.loo_total, v.fragile) == ("inconclusive", 5, 6, False)


def test_binomial_leave_one_out_by_hand(monkeypatch):
    # k = 7 of n = 8 against 1/2: p = P(X >= 7) = 9/256, lower bound beta.ppf(0.05, 7, 2) = 0.529 > 0.5: held.
    # A success left out (7 subsets): 6 of 7, p = P(X >= 6 | 7) = 8/128 = 0.0625 > 0.05: inconclusive.
    # The failure left out (1 subset): 7 of 7, p = 1/128, lower bound 0.05^(1/7) = 0.652: held. LOO 1/8, fragile.
    assert stats.binom.sf(5, 7, 0.5) == pytest.approx(0.0625) and stats.binom.sf(6, 7, 0.5) < ALPHA
    assert stats.beta.ppf(ALPHA, 7, 1) > 0.5
    assert C.count_test(7, 8).verdict == "held"
    assert C.leave_one_out("binomial", {"k": 7, "n": 8}, "greater", 0.5) == (1, 8)
    outcomes = np.array([1, 1, 0, 1, 1, 1, 1, 1], dtype=bool)
    assert C.leave_one_out("binomial", {"outcomes": outcomes}, "greater", 0.5) == (1, 8)
    # k = 9 of 10: a success left out gives 8 of 9 (p = P(X >= 8 | 9) = 10/512, lower bound 0.571), the failure
    # left out 9 of 9 (p = 1/512): both held. LOO 10/10.
    assert stats.binom.sf(7, 9, 0.5) == pytest.approx(10 / 512) and stats.beta.ppf(ALPHA, 8, 2) > 0.5
    assert C.leave_one_out("binomial", {"k": 9, "n": 10}, "greater", 0.5) == (10, 10)
    # the two distinct cases only, not n calls
    calls = []

    def counting(**kw):
        calls.append(kw)
        return C.count_test(**kw)
    monkeypatch.setitem(C.TESTS, "binomial", counting)
    assert C.leave_one_out("binomial", {"k": 90, "n": 100}, "greater", 0.5) == (100, 100)
    assert len(calls) <= 3  # the two cases (+ the full verdict)


def test_count_test_takes_outcomes():
    o = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    assert C.count_test(outcomes=o) == C.count_test(8, 10)
    assert C.count_test(outcomes=o.astype(bool), extra=("Δ", np.arange(10.0))).detail \
        == C.count_test(8, 10, extra=("Δ", np.arange(10.0))).detail
    assert C.TESTS["binomial"](outcomes=o, direction="greater", threshold=0.5).n == 10
    with pytest.raises(ValueError):
        C.count_test(8, 10, outcomes=o)
    with pytest.raises(ValueError):
        C.count_test(outcomes=[0, 1, 2])
    with pytest.raises(ValueError):
        C.count_test(outcomes=o, extra=("Δ", [1.0, 2.0]))  # not aligned


def test_leave_one_seed_out_drops_all_its_units(tmp_path):
    # 3 seeds of 3 updates: outcomes 111 | 111 | 110 -> 8 of 9: p = 10/512, lower bound 0.571: held.
    # Seed 0 or 1 left out: 5 of 6, p = P(X >= 5 | 6) = 7/64 = 0.109: inconclusive. Seed 2 left out: 6 of 6,
    # p = 1/64, lower bound 0.05^(1/6) = 0.607: held. LOO 1/3 (3 subsets, not 9), fragile.
    assert stats.binom.sf(4, 6, 0.5) == pytest.approx(7 / 64) and stats.beta.ppf(ALPHA, 6, 1) > 0.5
    samples = {"outcomes": [1, 1, 1, 1, 1, 1, 1, 1, 0], "seeds": [0, 0, 0, 1, 1, 1, 2, 2, 2]}
    assert C.leave_one_out("binomial", samples, "greater", 0.5) == (1, 3)
    v = C.evaluate_claim(_row("binomial", samples, threshold=0.5), C.ClaimData(tmp_path))  # seeds popped
    assert (v.verdict, v.n, v.loo_same, v.loo_total, v.fragile) == ("held", 9, 1, 3, True)
    # correlation runs grouped by seed: leaving out a seed leaves out its 3 runs
    rng = np.random.default_rng(4)
    x = rng.normal(size=12)
    y = x + 0.8 * rng.normal(size=12)
    seeds = np.repeat(["s0", "s1", "s2", "s3"], 3)
    full = C.correlation_test(x, y).verdict
    expected = sum(C.correlation_test(x[seeds != s], y[seeds != s]).verdict == full for s in ("s0", "s1", "s2", "s3"))
    assert C.leave_one_out("correlation", {"x": x, "y": y, "seeds": seeds}, "greater", 0.0) == (expected, 4)
    assert C.leave_one_out("correlation", {"x": x, "y": y}, "greater", 0.0)[1] == 12
    with pytest.raises(ValueError):
        C.leave_one_out("correlation", {"x": x, "y": y, "seeds": seeds[:5]}, "greater", 0.0)


def test_mann_whitney_leave_one_out_has_m_plus_n_subsets():
    a, b = UNPAIRED["held"]
    full = C.unpaired_test(a, b).verdict
    expected = sum(C.unpaired_test(np.delete(a, i), b).verdict == full for i in range(len(a))) \
        + sum(C.unpaired_test(a, np.delete(b, j)).verdict == full for j in range(len(b)))
    assert C.leave_one_out("mannwhitney", {"a": a, "b": b}, "greater", 0.0) == (expected, len(a) + len(b))
    with pytest.raises(ValueError):
        C.leave_one_out("mannwhitney", {"a": a, "b": b, "seeds": range(9)}, "greater", 0.0)


def test_bootstrap_and_no_data_have_no_robustness(tmp_path):
    reps = np.random.default_rng(0).normal(0.05, 0.2, size=2000)
    samples = {"observed": 0.05, "replicates": reps, "n": 5}
    assert C.leave_one_out("bootstrap", samples, "greater", 0.0) is None
    assert C.seeds_needed("bootstrap", samples, "greater", 0.0) is None
    v = C.evaluate_claim(_row("bootstrap", samples), C.ClaimData(tmp_path))
    assert v.verdict == "inconclusive"
    assert (v.loo_same, v.loo_total, v.fragile, v.seeds_needed) == (-1, -1, False, -1)
    assert C.robustness_text(v) == "—"
    nan3 = {"a": [np.nan] * 3, "b": [0.0] * 3}  # n = 0 after dropping NaN pairs
    assert C.leave_one_out("wilcoxon", nan3, "greater", 0.0) is None
    assert C.seeds_needed("wilcoxon", nan3, "greater", 0.0) is None


def test_seeds_needed_obvious_case(tmp_path):
    # differences all +1 at n = 4: the interval is infinite (P(W+ <= 0) = 1/16 > 0.05, c = -1): inconclusive.
    # Every resample of 5 pairs is all +1: W+ = 15 (tied ranks, normal approximation: z = 7 / sqrt(11.25),
    # p = 0.018), c = 0 so the interval is [1, 1] > 0: held. Share decided at 5 is 1, so 5 seeds.
    samples = {"a": np.ones(4), "b": np.zeros(4)}
    assert C.paired_test(**samples).verdict == "inconclusive"
    assert C.paired_test(np.ones(5), np.zeros(5)).verdict == "held"
    assert C.seeds_needed("wilcoxon", samples, "greater", 0.0) == 5
    v = C.evaluate_claim(_row("wilcoxon", samples), C.ClaimData(tmp_path))
    assert v.seeds_needed == 5 and C.robustness_text(v) == "LOO 4/4; needs ~5 seeds"
    # the same for a binomial: 4 of 4 successes (p = 1/16) is inconclusive, 5 of 5 (p = 1/32, lower bound
    # 0.05^(1/5) = 0.549) held
    assert C.seeds_needed("binomial", {"outcomes": [1, 1, 1, 1]}, "greater", 0.5) == 5


def test_seeds_needed_symmetric_differences_need_more_than_max(tmp_path):
    # differences symmetric around 0: a resample is decided only when its interval misses 0 by chance, far
    # less often than 80% at any size: more than 50 seeds
    samples = {"a": np.array([-1.0, 1.0, -2.0, 2.0]), "b": np.zeros(4)}
    assert C.seeds_needed("wilcoxon", samples, "greater", 0.0) is None
    v = C.evaluate_claim(_row("wilcoxon", samples), C.ClaimData(tmp_path))
    assert v.verdict == "inconclusive" and v.seeds_needed == C.MORE_THAN_MAX == 51
    assert C.robustness_text(v) == "LOO 4/4; needs > 50 seeds"


def test_seeds_needed_is_deterministic_bounded_and_cheap(monkeypatch):
    rng = np.random.default_rng(5)
    samples = {"a": rng.normal(0.5, 1.0, 10), "b": np.zeros(10)}
    assert C.paired_test(**samples).verdict == "inconclusive"
    first = C.seeds_needed("wilcoxon", samples, "greater", 0.0)
    assert first is not None and 11 <= first <= 50
    assert C.seeds_needed("wilcoxon", samples, "greater", 0.0) == first
    # a smaller power never needs more seeds (same resamples at each size)
    assert C.seeds_needed("wilcoxon", samples, "greater", 0.0, power=0.5) <= first
    calls = []
    wilcoxon = C.TESTS["wilcoxon"]
    monkeypatch.setitem(C.TESTS, "wilcoxon", lambda **kw: calls.append(1) or wilcoxon(**kw))
    C.seeds_needed("wilcoxon", samples, "greater", 0.0)
    assert len(calls) <= 7 * 200  # max_seeds first, then at most log2(40) bisection steps


def test_seeds_needed_clusters_by_seed_and_mann_whitney():
    # 2 seeds of 2 updates each, all successes: 4 of 4 is inconclusive (p = 1/16); 3 seeds are 6 updates,
    # all successes (p = 1/64, held): 3 seeds, not 5 updates
    samples = {"outcomes": [1, 1, 1, 1], "seeds": [0, 0, 1, 1]}
    assert C.seeds_needed("binomial", samples, "greater", 0.5) == 3
    # mannwhitney: a always above b; with 2 against 2 the smallest p is 1/6: inconclusive. 3 draws from each
    # group always repeat a value (ties: normal approximation); U = 9 of 9, and the least tied pattern
    # (5, 5, 6 against 1, 2, 2) has p = 0.036, more ties less variance and smaller p; c = 0 (P(U = 0) = 1/20),
    # so the interval is [min, max] of the shifts, within [3, 5]: every resample of 3 per group is held.
    a, b = np.array([5.0, 6.0]), np.array([1.0, 2.0])
    assert C.unpaired_test(a, b).verdict == "inconclusive"
    least_tied = C.unpaired_test([5.0, 5.0, 6.0], [1.0, 2.0, 2.0])
    assert least_tied.verdict == "held" and least_tied.p_value == pytest.approx(0.0361, abs=1e-4)
    assert C.seeds_needed("mannwhitney", {"a": a, "b": b}, "greater", 0.0) == 3


def test_verdict_frame_has_robustness_and_margin_columns(tmp_path):
    a, b = PAIRED["held"]
    row = C.Claim("M1", "p", "about the same", "m", "x.csv", "a - b", "wilcoxon", "less", 0.5, "f.png",
                  lambda data: {"a": a, "b": b}, "accuracy", "half a point is within seed noise")
    assert row.unit == "accuracy" and row.margin_why == "half a point is within seed noise"
    v = C.evaluate_claim(row, C.ClaimData(tmp_path))
    frame = C.verdict_frame([row], [v], "s")
    assert list(frame.columns) == C.VERDICT_COLUMNS
    for col in ("loo_same", "loo_total", "fragile", "seeds_needed", "margin_why"):
        assert col in frame.columns
    assert frame["margin_why"].iloc[0] == "half a point is within seed noise"
    assert frame["loo_total"].iloc[0] == len(a) and frame["seeds_needed"].iloc[0] == v.seeds_needed
    # old positional Verdicts still construct, with the not-computed defaults
    old = C.Verdict("c", "held", 1.0, 1.0, 0.5, 1.5, 5, "t", 0.01, "k")
    assert (old.loo_same, old.loo_total, old.fragile, old.seeds_needed) == (-1, -1, False, -1)
    assert old.with_claim("d").claim == "d"
