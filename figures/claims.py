"""Claims as data: each claim of the papers is a row, judged by a statistical test with an interval.

The engine has three parts.

**Tests** (pure functions of arrays; each returns a :class:`Verdict`):

- :func:`paired_test` (``test="wilcoxon"`` or ``"sign"``): values of two methods paired by seed,
  one-sided. Wilcoxon: statistic W+ (sum of the ranks of the positive differences ``a - b - threshold``),
  exact p-value, effect = Hodges-Lehmann estimate (median of the Walsh averages) with its exact
  distribution-free interval. Sign: statistic = number of positive differences, binomial p-value,
  effect = median difference with its order-statistic interval.
- :func:`unpaired_test` (``"mannwhitney"``): two independent groups (e.g. lottery tickets against
  other pruning solutions), one-sided Mann-Whitney U, exact p-value for small groups, effect = the
  Hodges-Lehmann shift (median of all differences ``a_i - b_j``) with its exact interval.
- :func:`correlation_test` (``"correlation"``): Kendall's tau of x with y over runs, interval by a
  percentile bootstrap over runs (pairs resampled together), p-value from the bootstrap.
- :func:`correlation_difference_test` (``"correlation_difference"``): tau(x1, y) - tau(x2, y) on the
  same runs (e.g. EGF against the gradient norm), both taus from each bootstrap resample of the runs.
- :func:`bootstrap_test` (``"bootstrap"``): a statistic with bootstrap replicates computed elsewhere
  (claim 5's ensemble gains of resampled runs), percentile interval and bootstrap p-value.
- :func:`count_test` (``"binomial"``): k successes out of n trials (e.g. mask updates), one-sided exact
  binomial test against ``p0``, effect = k/n with its Clopper-Pearson interval; ``extra`` may carry a
  second effect with an interval (claim 6 reports the mean change of the smallest eigenvalue).

**Decision rule**, the same for every test: intervals are two-sided at level ``1 - 2 alpha`` (90% for
alpha = 0.05), so each bound is a one-sided ``1 - alpha`` bound that agrees with the one-sided test.
``held`` needs p < alpha *and* the interval entirely on the claimed side of the threshold;
``not held`` means the interval lies entirely on the other side (or touches the threshold from it);
anything else, including an interval that covers the threshold or too few samples, is
``inconclusive``. The intervals come from the spread between seeds (or runs, or updates), never from a
single run, so a rerun on another machine, whose float noise changes each run slightly, moves a
verdict only when the evidence was borderline to begin with. Bootstraps use a fixed seed.

**Claim rows** (:class:`Claim`, frozen): id, paper, statement, the measure and where it comes from, the
comparison, the test, the direction (``"greater"``/``"less"``: the claimed side of the threshold), the
threshold, the figure, and ``samples``: a function that takes the loaded data (:class:`ClaimData`: a
runs directory and its analysis CSVs) and returns the keyword arguments of the test, e.g.
``{"a": ..., "b": ...}`` for a paired test or ``{"x": ..., "y": ...}`` for a correlation. A measure that
a setting cannot provide raises :class:`NoData` and the claim is ``inconclusive`` there with n = 0.
:func:`evaluate_claim` judges one row; :func:`evaluate_all` a table; :func:`verdict_frame` makes the tidy
``claims.csv`` rows. Adding a claim is adding a row::

    Claim(id="T1", paper="Tessera et al. 2021", statement="...", measure="...", source="gradflow_runs.csv",
          comparison="rigl+ - rigl, paired by seed", test="wilcoxon", direction="greater", threshold=0.0,
          figure="fig4_gradient_norm.png", samples=lambda data: {"a": ..., "b": ...})

The Evci et al. and Tessera et al. rows live in :mod:`figures.evci_claims`; ``figures.paper`` judges the
table ``figures.paper.CLAIMS`` in every setting, so another table joins the report by being added there
(``CLAIMS = EVCI_CLAIMS + MORE_CLAIMS``; ids must be unique).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sparse_training.errors import UserError

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)
DIRECTIONS = ("greater", "less")
ALPHA = 0.05
N_BOOT = 4000
BOOT_SEED = 0
EXACT_LIMIT = 2500  # exact null distributions up to this many Walsh averages / pairs, normal beyond


class NoData(Exception):
    """A claim's measure is not available in a setting (no such runs or analysis); the verdict is inconclusive."""


@dataclass(frozen=True)
class Verdict:
    """The judgement of one claim in one setting.

    ``statistic`` is the test's own statistic (W+, number of positives, U, tau, tau difference, k);
    ``effect`` the effect size in the measure's units (Hodges-Lehmann shift, median difference, tau,
    tau difference, proportion) with its interval ``[ci_low, ci_high]`` at level ``1 - 2 alpha``;
    ``key`` the key number as text; ``detail`` anything else worth saying (extra effects, sub-counts).
    """

    claim: str
    verdict: str
    statistic: float
    effect: float
    ci_low: float
    ci_high: float
    n: int
    test: str
    p_value: float
    key: str
    detail: str = ""

    def with_claim(self, claim: str) -> Verdict:
        """The same verdict under another claim id."""
        return Verdict(**{**asdict(self), "claim": claim})


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as data (see the module docstring)."""

    id: str
    paper: str
    statement: str
    measure: str
    source: str
    comparison: str
    test: str
    direction: str
    threshold: float
    figure: str
    samples: Callable[[ClaimData], Mapping[str, object]] = field(repr=False, compare=False)
    unit: str = ""

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"claim {self.id}: unknown test {self.test!r}; known: {', '.join(TESTS)}.")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"claim {self.id}: direction must be one of {DIRECTIONS}, got {self.direction!r}.")


class ClaimData:
    """What claim measures read: a runs directory and the analysis CSVs of it (each read once)."""

    def __init__(self, runs: str | Path, analysis: str | Path | None = None) -> None:
        self.root = Path(runs)
        self.analysis = Path(analysis) if analysis is not None else self.root / "_analysis"
        self._csv: dict[str, pd.DataFrame] = {}

    def csv(self, name: str) -> pd.DataFrame:
        """An analysis CSV; :class:`NoData` if the analysis did not write it."""
        if name not in self._csv:
            path = self.analysis / name
            if not path.is_file():
                raise NoData(f"{name} is missing")
            try:
                self._csv[name] = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise UserError(f"{path} is not a readable CSV ({exc}).") from None
        return self._csv[name]

    @cached_property
    def runs(self) -> list:
        """The runs of the directory (:class:`analysis.runs.Run`)."""
        from analysis.runs import select_runs

        return select_runs(self.root, warn=False)


# --- decision rule ---------------------------------------------------------------------------
def decide(p_value: float, lo: float, hi: float, threshold: float, direction: str, alpha: float = ALPHA) -> str:
    """held / not held / inconclusive from a one-sided p-value and an interval (see the module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    if not (np.isfinite(p_value) and not math.isnan(lo) and not math.isnan(hi)):
        return INCONCLUSIVE
    if direction == "greater":
        if p_value < alpha and lo > threshold:
            return HELD
        return NOT_HELD if hi <= threshold else INCONCLUSIVE
    if p_value < alpha and hi < threshold:
        return HELD
    return NOT_HELD if lo >= threshold else INCONCLUSIVE


def fmt(x: float) -> str:
    """A number for the report: 3 significant digits with a sign; ∞ for infinite bounds."""
    if not np.isfinite(x):
        return "−∞" if x < 0 else ("∞" if x > 0 else "nan")
    return f"{x:+.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:+.2e}"


def key_text(name: str, effect: float, lo: float, hi: float, n: int) -> str:
    """The key number of a verdict: ``name = effect [lo, hi], n = n``."""
    return f"{name} = {fmt(effect)} [{fmt(lo)}, {fmt(hi)}], n = {n}"


def _too_few(test: str, n: int, name: str, statistic: float = math.nan) -> Verdict:
    return Verdict("", INCONCLUSIVE, statistic, math.nan, math.nan, math.nan, n, test, math.nan,
                   f"{name}: n = {n}, too few")


def _clean(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


# --- exact null distributions ----------------------------------------------------------------
def signed_rank_null(n: int) -> np.ndarray:
    """P(W+ = w) for w = 0 .. n(n+1)/2 under the null (no ties): the subset-sum counts of 1..n over 2^n."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts / 2.0**n


def rank_sum_null(m: int, n: int) -> np.ndarray:
    """P(U = u) for u = 0 .. m n under the null (no ties), U = #{(i, j): a_i > b_j}."""
    # f[i][j] = distribution of U for i a's and j b's; f(i, j, u) = f(i-1, j, u - j) + f(i, j-1, u)
    table = [[None] * (n + 1) for _ in range(m + 1)]
    for i in range(m + 1):
        for j in range(n + 1):
            if i == 0 or j == 0:
                table[i][j] = np.array([1.0])
                continue
            a = np.zeros(i * j + 1)
            prev = table[i - 1][j]
            a[j:j + len(prev)] += prev
            other = table[i][j - 1]
            a[:len(other)] += other
            table[i][j] = a
    counts = table[m][n]
    return counts / counts.sum()


def _critical(cdf: np.ndarray, alpha: float) -> int:
    """Largest c with P(T <= c) <= alpha (-1 when even P(T <= 0) > alpha)."""
    ok = np.flatnonzero(cdf <= alpha + 1e-12)
    return int(ok[-1]) if len(ok) else -1


def _order_interval(sorted_values: np.ndarray, c: int) -> tuple[float, float]:
    """(values[c], values[N-1-c]) of sorted values: the distribution-free bounds; infinite when c < 0."""
    if c < 0:
        return -math.inf, math.inf
    return float(sorted_values[c]), float(sorted_values[len(sorted_values) - 1 - c])


# --- paired and unpaired tests ---------------------------------------------------------------
def paired_test(a: Sequence[float], b: Sequence[float], direction: str = "greater", threshold: float = 0.0,
                test: str = "wilcoxon", alpha: float = ALPHA, name: str = "Δ") -> Verdict:
    """One-sided test that ``a - b`` lies on ``direction``'s side of ``threshold``, pairs matched by position.

    ``test="wilcoxon"``: Wilcoxon signed-rank (exact p without ties, normal approximation with ties or
    many pairs), effect = Hodges-Lehmann estimate, interval from the Walsh averages.
    ``test="sign"``: sign test (ties dropped), effect = median difference, order-statistic interval.
    Pairs with a NaN on either side are dropped; fewer than 3 pairs is inconclusive.
    """
    a, b = _clean(a), _clean(b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length ({len(a)} and {len(b)}).")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = len(d)
    label = {"wilcoxon": "Wilcoxon signed-rank (paired, one-sided)", "sign": "sign test (paired, one-sided)"}
    if test not in label:
        raise ValueError(f"paired test must be 'wilcoxon' or 'sign', got {test!r}.")
    if n < 3:
        return _too_few(label[test], n, name)
    z = d - threshold
    if test == "sign":
        pos, neg = int(np.sum(z > 0)), int(np.sum(z < 0))
        k = pos if direction == "greater" else neg
        m = pos + neg
        p = float(stats.binom.sf(k - 1, m, 0.5)) if m else 1.0
        c = _critical(stats.binom.cdf(np.arange(n + 1), n, 0.5), alpha)
        lo, hi = _order_interval(np.sort(d), c)
        effect = float(np.median(d))
        stat = float(pos)
    else:
        nz = z[z != 0]
        ranks = stats.rankdata(np.abs(nz))
        w_plus = float(np.sum(ranks[nz > 0]))
        w = w_plus if direction == "greater" else float(np.sum(ranks[nz < 0]))
        m = len(nz)
        tied = len(np.unique(np.abs(nz))) < m
        if m == 0:
            p = 1.0
        elif not tied and m * (m + 1) // 2 <= EXACT_LIMIT:
            null = signed_rank_null(m)
            p = float(null[int(round(w)):].sum())
        else:  # normal approximation with tie correction
            _, t = np.unique(ranks, return_counts=True)
            var = m * (m + 1) * (2 * m + 1) / 24 - np.sum(t**3 - t) / 48
            p = float(stats.norm.sf((w - m * (m + 1) / 4 - 0.5) / math.sqrt(var))) if var > 0 else 1.0
        i, j = np.triu_indices(n)
        walsh = np.sort((d[i] + d[j]) / 2)
        if len(walsh) <= EXACT_LIMIT:
            c = _critical(np.cumsum(signed_rank_null(n)), alpha)
        else:
            mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
            c = int(math.floor(mean + stats.norm.ppf(alpha) * sd))
        lo, hi = _order_interval(walsh, c)
        effect = float(np.median(walsh))
        stat = w_plus
    verdict = decide(p, lo, hi, threshold, direction, alpha)
    return Verdict("", verdict, stat, effect, lo, hi, n, label[test], p, key_text(name, effect, lo, hi, n))


def unpaired_test(a: Sequence[float], b: Sequence[float], direction: str = "greater", threshold: float = 0.0,
                  alpha: float = ALPHA, name: str = "shift") -> Verdict:
    """One-sided Mann-Whitney U test that ``a`` is shifted from ``b`` beyond ``threshold`` (independent groups).

    Statistic U = #{(i, j): a_i - threshold > b_j} (+ half the ties); exact p-value without ties for
    small groups, normal approximation otherwise. Effect = Hodges-Lehmann shift (median of a_i - b_j)
    with its exact interval. Fewer than 2 values on a side is inconclusive.
    """
    a, b = _clean(a), _clean(b)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    m, n = len(a), len(b)
    label = "Mann-Whitney U (unpaired, one-sided)"
    if m < 2 or n < 2:
        return _too_few(label, m + n, name)
    diff = (a[:, None] - threshold) - b[None, :]
    u = float(np.sum(diff > 0) + 0.5 * np.sum(diff == 0))
    u_dir = u if direction == "greater" else m * n - u
    tied = len(np.unique(np.concatenate([a - threshold, b]))) < m + n
    if not tied and m * n <= EXACT_LIMIT:
        p = float(rank_sum_null(m, n)[int(round(u_dir)):].sum())
    else:
        ranks = stats.rankdata(np.concatenate([a - threshold, b]))
        _, t = np.unique(ranks, return_counts=True)
        var = m * n / 12 * ((m + n + 1) - np.sum(t**3 - t) / ((m + n) * (m + n - 1)))
        p = float(stats.norm.sf((u_dir - m * n / 2 - 0.5) / math.sqrt(var))) if var > 0 else 1.0
    shifts = np.sort((a[:, None] - b[None, :]).reshape(-1))
    if m * n <= EXACT_LIMIT:
        c = _critical(np.cumsum(rank_sum_null(m, n)), alpha)
    else:
        c = int(math.floor(m * n / 2 + stats.norm.ppf(alpha) * math.sqrt(m * n * (m + n + 1) / 12)))
    lo, hi = _order_interval(shifts, c)
    effect = float(np.median(shifts))
    verdict = decide(p, lo, hi, threshold, direction, alpha)
    return Verdict("", verdict, u, effect, lo, hi, m + n, label, p, key_text(name, effect, lo, hi, m + n),
                   f"n = {m} vs {n}")


# --- correlations ----------------------------------------------------------------------------
def kendall_many(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``x`` (B, n) with the same row of ``y``; NaN for a constant row.

    tau-b = sum_ij sign(x_i - x_j) sign(y_i - y_j) / sqrt(sum_ij sign(x_i - x_j)^2 * sum_ij sign(y_i - y_j)^2),
    vectorized over rows (in chunks), so a bootstrap of thousands of resamples costs little.
    """
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    out = np.empty(x.shape[0])
    step = max(1, 4_000_000 // max(1, x.shape[1] ** 2))
    for s in range(0, x.shape[0], step):
        sx = np.sign(x[s:s + step, :, None] - x[s:s + step, None, :])
        sy = np.sign(y[s:s + step, :, None] - y[s:s + step, None, :])
        num = np.einsum("bij,bij->b", sx, sy)
        den = np.sqrt(np.abs(sx).sum(axis=(1, 2)) * np.abs(sy).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + step] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two samples (NaN for a constant one)."""
    return float(kendall_many(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))[0])


def _bootstrap_p(boot: np.ndarray, threshold: float, direction: str) -> float:
    """One-sided bootstrap p-value: the share of replicates on the wrong side of the threshold (+1 smoothing)."""
    boot = boot[np.isfinite(boot)]
    wrong = np.sum(boot <= threshold) if direction == "greater" else np.sum(boot >= threshold)
    return float((wrong + 1) / (len(boot) + 1))


def _boot_verdict(test: str, name: str, observed: float, boot: np.ndarray, n: int, direction: str,
                  threshold: float, alpha: float, detail: str = "") -> Verdict:
    finite = boot[np.isfinite(boot)]
    if not np.isfinite(observed) or len(finite) < 0.5 * len(boot):
        return Verdict("", INCONCLUSIVE, observed, observed, math.nan, math.nan, n, test, math.nan,
                       f"{name} = {fmt(observed)}, n = {n}: undefined (constant values)", detail)
    lo, hi = (float(v) for v in np.quantile(finite, [alpha, 1 - alpha]))
    p = _bootstrap_p(boot, threshold, direction)
    verdict = decide(p, lo, hi, threshold, direction, alpha)
    return Verdict("", verdict, observed, observed, lo, hi, n, test, p, key_text(name, observed, lo, hi, n), detail)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def correlation_test(x: Sequence[float], y: Sequence[float], direction: str = "greater", threshold: float = 0.0,
                     alpha: float = ALPHA, n_boot: int = N_BOOT, seed: int = BOOT_SEED, name: str = "τ") -> Verdict:
    """Kendall's tau of ``x`` with ``y`` over runs; percentile-bootstrap interval over runs, bootstrap p-value.

    Runs with a NaN in either are dropped; fewer than 5 runs is inconclusive.
    """
    x, y = _clean(x), _clean(y)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    test = "Kendall τ, bootstrap over runs"
    if n < 5:
        return _too_few(test, n, name)
    idx = _resamples(n, n_boot, seed)
    boot = kendall_many(x[idx], y[idx])
    return _boot_verdict(test, name, kendall(x, y), boot, n, direction, threshold, alpha)


def correlation_difference_test(x1: Sequence[float], x2: Sequence[float], y: Sequence[float],
                                direction: str = "greater", threshold: float = 0.0, alpha: float = ALPHA,
                                n_boot: int = N_BOOT, seed: int = BOOT_SEED, name: str = "Δτ") -> Verdict:
    """tau(x1, y) - tau(x2, y) over the same runs; both taus from each bootstrap resample of the runs."""
    x1, x2, y = _clean(x1), _clean(x2), _clean(y)
    ok = np.isfinite(x1) & np.isfinite(x2) & np.isfinite(y)
    x1, x2, y = x1[ok], x2[ok], y[ok]
    n = len(y)
    test = "difference of Kendall τ, bootstrap over runs"
    if n < 5:
        return _too_few(test, n, name)
    idx = _resamples(n, n_boot, seed)
    boot = kendall_many(x1[idx], y[idx]) - kendall_many(x2[idx], y[idx])
    t1, t2 = kendall(x1, y), kendall(x2, y)
    return _boot_verdict(test, name, t1 - t2, boot, n, direction, threshold, alpha,
                         f"τ₁ = {fmt(t1)}, τ₂ = {fmt(t2)}")


def bootstrap_test(observed: float, replicates: Sequence[float], direction: str = "greater", threshold: float = 0.0,
                   alpha: float = ALPHA, n: int = 0, name: str = "Δ") -> Verdict:
    """A statistic with bootstrap replicates computed elsewhere (e.g. ensemble gains of resampled runs).

    Percentile interval at ``1 - 2 alpha`` and the one-sided bootstrap p-value; ``n`` is the number of
    runs resampled (for the record). Fewer than 100 finite replicates is inconclusive.
    """
    boot = _clean(replicates)
    test = "bootstrap over runs (percentile)"
    if np.sum(np.isfinite(boot)) < 100:
        return _too_few(test, n, name, float(observed))
    return _boot_verdict(test, name, float(observed), boot, n, direction, threshold, alpha)


# --- counts ----------------------------------------------------------------------------------
def clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion at ``level``."""
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def count_test(k: int, n: int, direction: str = "greater", threshold: float = 0.5, alpha: float = ALPHA,
               extra: tuple[str, Sequence[float]] | None = None, name: str = "share") -> Verdict:
    """Exact one-sided binomial (sign) test of k successes in n trials against the proportion ``threshold``.

    Effect = k / n with the Clopper-Pearson interval at ``1 - 2 alpha`` (each bound agrees with the
    one-sided exact test). ``extra = (label, values)`` adds the mean of ``values`` with a
    t-interval at the same level to the detail (e.g. the change of the smallest eigenvalue).
    """
    k, n = int(k), int(n)
    test = "exact binomial sign test (one-sided)"
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k = {k}, n = {n}.")
    if n < 1:
        return _too_few(test, n, name)
    p = float(stats.binom.sf(k - 1, n, threshold)) if direction == "greater" else float(stats.binom.cdf(k, n, threshold))
    lo, hi = clopper_pearson(k, n, 1 - 2 * alpha)
    effect = k / n
    detail = ""
    if extra is not None:
        label, values = extra
        mean, elo, ehi = mean_interval(values, alpha)
        detail = f"{label} = {fmt(mean)} [{fmt(elo)}, {fmt(ehi)}]"
    verdict = decide(p, lo, hi, threshold, direction, alpha)
    return Verdict("", verdict, float(k), effect, lo, hi, n, test, p,
                   f"{k}/{n} = {effect:.2f} [{lo:.2f}, {hi:.2f}]", detail)


def mean_interval(values: Sequence[float], alpha: float = ALPHA) -> tuple[float, float, float]:
    """Mean and its Student-t interval at level ``1 - 2 alpha`` (NaN bounds for fewer than 2 values)."""
    v = _clean(values)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(1 - alpha, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


# --- evaluation ------------------------------------------------------------------------------
def _paired(test: str) -> Callable[..., Verdict]:
    def run(**kw) -> Verdict:
        return paired_test(test=test, **kw)
    return run


TESTS: dict[str, Callable[..., Verdict]] = {
    "wilcoxon": _paired("wilcoxon"),
    "sign": _paired("sign"),
    "mannwhitney": unpaired_test,
    "correlation": correlation_test,
    "correlation_difference": correlation_difference_test,
    "bootstrap": bootstrap_test,
    "binomial": count_test,
}


def evaluate_claim(claim: Claim, data: ClaimData) -> Verdict:
    """Judge one claim row on one setting's data (inconclusive with n = 0 when the data lack its measure)."""
    try:
        samples = dict(claim.samples(data))
    except NoData as exc:
        return Verdict(claim.id, INCONCLUSIVE, math.nan, math.nan, math.nan, math.nan, 0, claim.test, math.nan,
                       f"no data ({exc})")
    return TESTS[claim.test](direction=claim.direction, threshold=claim.threshold, **samples).with_claim(claim.id)


def evaluate_all(table: Sequence[Claim], data: ClaimData) -> list[Verdict]:
    """Judge every row of a claim table on one setting."""
    return [evaluate_claim(c, data) for c in table]


VERDICT_COLUMNS = ["setting", "claim", "paper", "statement", "measure", "source", "comparison", "direction",
                   "threshold", "test", "verdict", "statistic", "effect", "ci_low", "ci_high", "n", "p_value", "key",
                   "detail", "figure"]


def verdict_frame(table: Sequence[Claim], verdicts: Sequence[Verdict], setting: str = "") -> pd.DataFrame:
    """Tidy rows (one per claim and setting) for ``claims.csv``."""
    rows = []
    by_id = {c.id: c for c in table}
    for v in verdicts:
        c = by_id[v.claim]
        rows.append({"setting": setting, "claim": c.id, "paper": c.paper, "statement": c.statement,
                     "measure": c.measure, "source": c.source, "comparison": c.comparison, "direction": c.direction,
                     "threshold": c.threshold, **{k: getattr(v, k) for k in ("test", "verdict", "statistic", "effect",
                                                                           "ci_low", "ci_high", "n", "p_value",
                                                                           "key", "detail")},
                     "figure": c.figure})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)
