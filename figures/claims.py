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
Then ``unit`` (of the measure) and ``margin_why``. A claim that one thing is *not larger* than another,
or *about the same*, is a non-superiority (or, with both sides, equivalence) test against a margin: the
row's ``threshold`` is that margin (e.g. ``direction="less"``, ``threshold=0.5`` for "sparse is not better
than dense by more than half a point") and ``margin_why`` says why that margin was chosen; without a
stated margin (threshold 0) "not larger" could only be held by being clearly smaller.

The samples are arrays of aligned **units**: ``a``, ``b`` (wilcoxon, sign: one unit = one pair), ``x``,
``y`` (correlation: one run), ``x1``, ``x2``, ``y`` (correlation_difference), two independent groups
``a`` and ``b`` (mannwhitney), ``k`` and ``n`` or ``outcomes`` (binomial: one 0/1 per trial, ``extra``
values aligned with them); bootstrap has none. Other keys (``name``, ``extra``, ``n``, ``n_boot``) go to
the test as they are. An optional ``seeds`` array, aligned with the units, gives the seed of each (the
seed of each run or update of a correlation or of binomial outcomes; a pair is one seed already, but
several pairs may share one): :func:`evaluate_claim` takes it out before calling the test and uses it
to leave out, or resample, whole seeds.

**Robustness** of each verdict (columns of ``claims.csv``): ``loo_same``/``loo_total``
(:func:`leave_one_out`): of the subsets that leave out one seed (or one unit), how many give the same
verdict; ``fragile``: a held or not held verdict that some subset changes; ``seeds_needed``
(:func:`seeds_needed`, for inconclusive verdicts only): about how many seeds would decide the claim in
80% of reruns, simulated by resampling the observed seeds. Encodings: -1 = not computed or not applicable
(bootstrap tests, no data, a decided verdict for ``seeds_needed``); ``seeds_needed = 51``
(``MORE_THAN_MAX``) = more than 50. :func:`robustness_text` renders them ("LOO 9/10 (fragile)",
"needs ~14 seeds", "needs > 50 seeds", "—").
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property, lru_cache
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
MAX_SEEDS = 50  # seeds_needed searches up to this many seeds
MORE_THAN_MAX = MAX_SEEDS + 1  # Verdict.seeds_needed when even MAX_SEEDS seeds would not do
SIM_BOOT = 400  # bootstrap resamples inside each simulated correlation test of seeds_needed


class NoData(Exception):
    """A claim's measure is not available in a setting (no such runs or analysis); the verdict is inconclusive."""


@dataclass(frozen=True)
class Verdict:
    """The judgement of one claim in one setting.

    ``statistic`` is the test's own statistic (W+, number of positives, U, tau, tau difference, k);
    ``effect`` the effect size in the measure's units (Hodges-Lehmann shift, median difference, tau,
    tau difference, proportion) with its interval ``[ci_low, ci_high]`` at level ``1 - 2 alpha``;
    ``key`` the key number as text; ``detail`` anything else worth saying (extra effects, sub-counts).

    Robustness (filled by :func:`evaluate_claim`; the tests themselves leave the defaults):
    ``loo_same`` of ``loo_total`` leave-one-out subsets give the same verdict (:func:`leave_one_out`;
    both -1 when not computed or not computable, e.g. a bootstrap test or no data); ``fragile`` is true for a
    held or not held verdict that some subset changes; ``seeds_needed`` (:func:`seeds_needed`) is -1 when
    not applicable (a decided verdict, no data, a bootstrap test), else the estimated number of seeds at
    which the claim would be decided with probability 0.8, ``MORE_THAN_MAX`` (51) meaning more than
    ``MAX_SEEDS`` (50). :func:`robustness_text` writes these in words.
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
    loo_same: int = -1
    loo_total: int = -1
    fragile: bool = False
    seeds_needed: int = -1

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
    margin_why: str = ""

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
    return _signed_rank_null(n).copy()


@lru_cache(maxsize=256)
def _signed_rank_null(n: int) -> np.ndarray:
    """:func:`signed_rank_null`, computed once per n (read-only: the tests call it again and again)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    out = counts / 2.0**n
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(W+ <= w) under the null (read-only, cached)."""
    out = np.cumsum(_signed_rank_null(n))
    out.flags.writeable = False
    return out


def rank_sum_null(m: int, n: int) -> np.ndarray:
    """P(U = u) for u = 0 .. m n under the null (no ties), U = #{(i, j): a_i > b_j}."""
    return _rank_sum_null(m, n).copy()


@lru_cache(maxsize=256)
def _rank_sum_null(m: int, n: int) -> np.ndarray:
    """:func:`rank_sum_null`, computed once per (m, n) (read-only)."""
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
    out = counts / counts.sum()
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def _rank_sum_cdf(m: int, n: int) -> np.ndarray:
    """P(U <= u) under the null (read-only, cached)."""
    out = np.cumsum(_rank_sum_null(m, n))
    out.flags.writeable = False
    return out


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
            null = _signed_rank_null(m)
            p = float(null[int(round(w)):].sum())
        else:  # normal approximation with tie correction
            _, t = np.unique(ranks, return_counts=True)
            var = m * (m + 1) * (2 * m + 1) / 24 - np.sum(t**3 - t) / 48
            p = float(stats.norm.sf((w - m * (m + 1) / 4 - 0.5) / math.sqrt(var))) if var > 0 else 1.0
        i, j = np.triu_indices(n)
        walsh = np.sort((d[i] + d[j]) / 2)
        if len(walsh) <= EXACT_LIMIT:
            c = _critical(_signed_rank_cdf(n), alpha)
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
        p = float(_rank_sum_null(m, n)[int(round(u_dir)):].sum())
    else:
        ranks = stats.rankdata(np.concatenate([a - threshold, b]))
        _, t = np.unique(ranks, return_counts=True)
        var = m * n / 12 * ((m + n + 1) - np.sum(t**3 - t) / ((m + n) * (m + n - 1)))
        p = float(stats.norm.sf((u_dir - m * n / 2 - 0.5) / math.sqrt(var))) if var > 0 else 1.0
    shifts = np.sort((a[:, None] - b[None, :]).reshape(-1))
    if m * n <= EXACT_LIMIT:
        c = _critical(_rank_sum_cdf(m, n), alpha)
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


def kendall_resampled(xs: Sequence[np.ndarray], y: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
    """Kendall's tau-b of each ``x`` in ``xs`` with ``y`` on each resample ``idx[b]`` (rows of indices into the runs).

    The same numbers as ``kendall_many(x[idx], y[idx])``, bit for bit, at a fraction of the cost: a pair of
    resampled runs (i, j) contributes ``S[idx_i, idx_j]`` to the sums, with ``S`` an n x n matrix of the
    original runs (``sign(x_i - x_j) sign(y_i - y_j)``, ``|sign(x_i - x_j)|``, ``|sign(y_i - y_j)|``), so
    with ``c`` a resample's counts of each run every sum is ``c^T S c``, a matrix product. The sums are
    integers, exact in float64 whatever the order of summation, hence the same quotient.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    idx = np.atleast_2d(np.asarray(idx))
    sy = np.sign(y[:, None] - y[None, :])
    mats = []
    for x in xs:
        x = np.asarray(x, dtype=np.float64)
        sx = np.sign(x[:, None] - x[None, :])
        mats += [sx * sy, np.abs(sx)]
    mats.append(np.abs(sy))
    k = len(mats)
    big = np.concatenate(mats, axis=1)  # n x (k n)
    sums = np.empty((idx.shape[0], k))
    step = max(1, 4_000_000 // max(1, k * n))
    for s in range(0, idx.shape[0], step):
        rows = idx[s:s + step]
        b = rows.shape[0]
        c = np.bincount((rows + n * np.arange(b)[:, None]).reshape(-1), minlength=b * n).reshape(b, n)
        c = c.astype(np.float64)
        sums[s:s + b] = np.einsum("bkn,bn->bk", (c @ big).reshape(b, k, n), c)
    dy = sums[:, -1]
    out = []
    for i in range(len(xs)):
        num, den = sums[:, 2 * i], np.sqrt(sums[:, 2 * i + 1] * dy)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
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
    (boot,) = kendall_resampled([x], y, idx)
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
    tau1, tau2 = kendall_resampled([x1, x2], y, idx)
    boot = tau1 - tau2
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


def outcome_array(outcomes: Sequence[float]) -> np.ndarray:
    """Trial outcomes as a float array of 0/1 (bool or 0/1 values; NaN = no outcome, kept as NaN)."""
    o = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    bad = np.isfinite(o) & (o != 0) & (o != 1)
    if bad.any():
        raise ValueError(f"outcomes must be 0/1 or bool, got {o[bad][0]!r}.")
    return o


def count_test(k: int | None = None, n: int | None = None, direction: str = "greater", threshold: float = 0.5,
               alpha: float = ALPHA, extra: tuple[str, Sequence[float]] | None = None, name: str = "share",
               outcomes: Sequence[float] | None = None) -> Verdict:
    """Exact one-sided binomial (sign) test of k successes in n trials against the proportion ``threshold``.

    Effect = k / n with the Clopper-Pearson interval at ``1 - 2 alpha`` (each bound agrees with the
    one-sided exact test). ``extra = (label, values)`` adds the mean of ``values`` with a
    t-interval at the same level to the detail (e.g. the change of the smallest eigenvalue).
    Instead of ``k`` and ``n``, ``outcomes`` may give one 0/1 (or bool) value per trial: k = their sum,
    n = their number (NaN outcomes left out, with their ``extra`` values, which are then aligned to them).
    """
    if outcomes is not None:
        if k is not None or n is not None:
            raise ValueError("give either k and n or outcomes, not both.")
        o = outcome_array(outcomes)
        ok = np.isfinite(o)
        if extra is not None:
            values = _clean(extra[1])
            if len(values) != len(o):
                raise ValueError(f"extra has {len(values)} values for {len(o)} outcomes; they must be aligned.")
            extra = (extra[0], values[ok])
        k, n = int(o[ok].sum()), int(ok.sum())
    elif k is None or n is None:
        raise ValueError("count_test needs k and n, or outcomes.")
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

# the keys of the aligned unit arrays of each test (one unit = one pair or one run); mannwhitney's two groups
# and binomial's outcomes are handled on their own, bootstrap has no units
UNIT_KEYS: dict[str, tuple[str, ...]] = {
    "wilcoxon": ("a", "b"),
    "sign": ("a", "b"),
    "correlation": ("x", "y"),
    "correlation_difference": ("x1", "x2", "y"),
}
CORRELATION_TESTS = ("correlation", "correlation_difference")


# --- robustness: leave-one-out and seeds needed ----------------------------------------------
@dataclass(frozen=True)
class _Units:
    """A claim's samples split into its units: ``groups[g]`` are the unit indices of seed (or unit) g."""

    kind: str  # "aligned", "groups" (mannwhitney) or "binomial"
    arrays: dict[str, np.ndarray]  # aligned unit arrays, non-finite units dropped (binomial: "outcomes")
    groups: list[np.ndarray]  # aligned/binomial: the units of each seed (one unit each without seeds)
    rest: dict[str, object]  # the other keyword arguments of the test (name, alpha, n_boot, ...)

    @property
    def n_groups(self) -> int:
        """Number of seeds (or units), the n that leave-one-out and seeds_needed count in."""
        if self.kind == "groups":
            return len(self.arrays["a"]) + len(self.arrays["b"])
        return len(self.groups)


def _group_indices(seeds: object, ok: np.ndarray, n: int) -> list[np.ndarray]:
    """Indices (into the kept units) of each seed, in order of first appearance; one per unit without seeds."""
    if seeds is None:
        return [np.array([i]) for i in range(int(ok.sum()))]
    s = np.asarray(seeds, dtype=object).reshape(-1)
    if len(s) != n:
        raise ValueError(f"seeds has {len(s)} values for {n} units; they must be aligned.")
    codes, _ = pd.factorize(pd.Series(s[ok]), use_na_sentinel=False)
    return [np.flatnonzero(codes == g) for g in range(codes.max() + 1)] if len(codes) else []


def _units(test: str, samples: Mapping[str, object]) -> _Units | None:
    """Split ``samples`` (the test's keyword arguments, maybe with ``seeds``) into units; None for bootstrap."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}.")
    samples = dict(samples)
    seeds = samples.pop("seeds", None)
    if test == "bootstrap":
        return None
    if test in UNIT_KEYS:
        keys = UNIT_KEYS[test]
        arrays = {k: _clean(samples.pop(k)) for k in keys}
        n = len(arrays[keys[0]])
        if any(len(v) != n for v in arrays.values()):
            raise ValueError(f"{test}: the unit arrays {keys} differ in length.")
        ok = np.logical_and.reduce([np.isfinite(v) for v in arrays.values()])
        return _Units("aligned", {k: v[ok] for k, v in arrays.items()}, _group_indices(seeds, ok, n), samples)
    if test == "mannwhitney":
        if seeds is not None:
            raise ValueError("mannwhitney: seeds are not supported (each run of a and of b is one unit).")
        a, b = _clean(samples.pop("a")), _clean(samples.pop("b"))
        return _Units("groups", {"a": a[np.isfinite(a)], "b": b[np.isfinite(b)]}, [], samples)
    # binomial: outcomes, or k successes of n trials
    samples.pop("extra", None)  # its values only add to the detail, never to the verdict
    if samples.get("outcomes") is not None:
        o = outcome_array(samples.pop("outcomes"))
        samples.pop("k", None), samples.pop("n", None)
    else:
        if seeds is not None:
            raise ValueError("binomial: seeds need outcomes= (one per trial), not k and n.")
        k, n = int(samples.pop("k")), int(samples.pop("n"))
        o = np.r_[np.ones(k), np.zeros(n - k)]
    ok = np.isfinite(o)
    return _Units("binomial", {"outcomes": o[ok]}, _group_indices(seeds, ok, len(o)), samples)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while many small tests run: their matrices are too small to gain from threads, and
    threads that wait for a busy core slow each product down several times (threadpoolctl, a dependency of
    scikit-learn; without it nothing changes)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _judge(test: str, units: _Units, direction: str, threshold: float, **arrays: object) -> str:
    return TESTS[test](direction=direction, threshold=threshold, **units.rest, **arrays).verdict


def leave_one_out(test: str, samples: Mapping[str, object], direction: str, threshold: float,
                  full: Verdict | None = None) -> tuple[int, int] | None:
    """How many leave-one-out subsets give the verdict of the full data: ``(same, subsets)``.

    Each subset leaves out one seed (all its units, when ``samples`` has a ``seeds`` array aligned with the
    units) or else one unit: one pair (wilcoxon, sign), one run (correlation, correlation_difference),
    one trial (binomial; computed from the distinct cases only, a success left out and a failure left out,
    each counted as many times as it occurs), each run of ``a`` and then each run of ``b`` (mannwhitney,
    m + n subsets). Units with a NaN, which the test drops anyway, are not counted. ``full`` is the verdict
    of the full data when already known. None for ``bootstrap`` (its replicates are computed elsewhere) and
    when the full data have n = 0. A held or not held verdict that some subset changes is *fragile*.
    """
    units = _units(test, samples)
    if units is None:
        return None
    if full is None:
        test_samples = {k: v for k, v in samples.items() if k != "seeds"}
        full = TESTS[test](direction=direction, threshold=threshold, **test_samples)
    if full.n == 0 or units.n_groups == 0:
        return None
    with _one_blas_thread():
        return _leave_one_out(test, units, direction, threshold, full.verdict)


def _leave_one_out(test: str, units: _Units, direction: str, threshold: float, verdict: str) -> tuple[int, int]:
    """:func:`leave_one_out` on split units, against the full data's ``verdict``."""
    if units.kind == "groups":
        a, b = units.arrays["a"], units.arrays["b"]
        same = sum(_judge(test, units, direction, threshold, a=np.delete(a, i), b=b) == verdict
                   for i in range(len(a)))
        same += sum(_judge(test, units, direction, threshold, a=a, b=np.delete(b, j)) == verdict
                    for j in range(len(b)))
        return int(same), len(a) + len(b)
    if units.kind == "binomial":
        o = units.arrays["outcomes"]
        k, n = int(o.sum()), len(o)
        cases: dict[tuple[int, int], int] = {}
        for g in units.groups:
            key = (int(o[g].sum()), len(g))
            cases[key] = cases.get(key, 0) + 1
        same = sum(count * (_judge(test, units, direction, threshold, k=k - kg, n=n - ng) == verdict)
                   for (kg, ng), count in cases.items())
        return int(same), len(units.groups)
    n = len(next(iter(units.arrays.values())))
    same = 0
    for g in units.groups:
        keep = np.ones(n, dtype=bool)
        keep[g] = False
        same += _judge(test, units, direction, threshold, **{k: v[keep] for k, v in units.arrays.items()}) \
            == verdict
    return int(same), len(units.groups)


def seeds_needed(test: str, samples: Mapping[str, object], direction: str, threshold: float, power: float = 0.8,
                 max_seeds: int = MAX_SEEDS, n_sim: int = 200, seed: int = 0, n_boot: int = SIM_BOOT) -> int | None:
    """The smallest number of seeds at which the claim would be decided (held or not held) in ``power`` of reruns.

    Meant for an inconclusive verdict (:func:`evaluate_claim` calls it only then). A rerun with ``s`` seeds
    is simulated by resampling the observed units with replacement: ``s`` pairs (wilcoxon, sign), ``s``
    runs (correlation tests), ``s`` trials (binomial), or, when ``samples`` has ``seeds``, ``s`` seeds each
    with all its units (pairs, runs or updates clustered by seed); mannwhitney draws ``s`` runs for each
    group (``s`` counts seeds per group). Each of ``n_sim`` resamples is judged with the same test,
    direction and threshold; the share decided is compared with ``power``. The answer is searched in
    ``[current + 1, max_seeds]`` (current = seeds, or units, of the data; the larger group for
    mannwhitney) assuming the share grows with ``s``: ``max_seeds`` first, then bisection, so about
    ``log2(max_seeds)`` candidates of at most ``n_sim`` tests each (a candidate stops early once its
    answer is certain). The correlation tests use ``n_boot`` bootstrap resamples (default 400, not
    4000) inside each simulated test, to keep the cost down. Random numbers come from
    ``numpy.random.default_rng((seed, s))`` for candidate ``s``: deterministic.

    None when more than ``max_seeds`` would be needed (or the data already have ``max_seeds``), and also
    for ``bootstrap`` (not resamplable from the samples) and data with n = 0.
    """
    units = _units(test, samples)
    if not _resamplable(units):
        return None
    assert units is not None
    if units.kind == "groups":
        current = max(len(units.arrays["a"]), len(units.arrays["b"]))
    else:
        current = len(units.groups)
    lo, hi = current + 1, max_seeds
    if lo > hi:
        return None
    draw = _simulator(test, units, direction, threshold, n_boot)
    need = math.ceil(power * n_sim - 1e-9)  # decided resamples needed for share >= power

    def enough(s: int) -> bool:
        rng = np.random.default_rng((seed, s))
        decided = 0
        for i in range(n_sim):
            decided += draw(rng, s, i) in (HELD, NOT_HELD)
            if decided >= need:
                return True
            if decided + (n_sim - 1 - i) < need:
                return False
        return decided >= need

    with _one_blas_thread():
        if not enough(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if enough(mid):
                hi = mid
            else:
                lo = mid + 1
    return hi


def _resamplable(units: _Units | None) -> bool:
    """Whether reruns can be simulated from the units: some data (and both groups for mannwhitney)."""
    if units is None or units.n_groups == 0:
        return False
    return units.kind != "groups" or (len(units.arrays["a"]) > 0 and len(units.arrays["b"]) > 0)


def _simulator(test: str, units: _Units, direction: str, threshold: float,
               n_boot: int) -> Callable[[np.random.Generator, int, int], str]:
    """A function (rng, s, i) -> verdict of the i-th simulated rerun with s seeds (see :func:`seeds_needed`)."""
    if units.kind == "groups":
        a, b = units.arrays["a"], units.arrays["b"]

        def draw_groups(rng: np.random.Generator, s: int, i: int) -> str:
            return _judge(test, units, direction, threshold, a=a[rng.integers(0, len(a), s)],
                          b=b[rng.integers(0, len(b), s)])
        return draw_groups
    groups = units.groups
    singletons = all(len(g) == 1 for g in groups)
    if units.kind == "binomial":
        o = units.arrays["outcomes"]
        kg = np.array([o[g].sum() for g in groups], dtype=int)
        ng = np.array([len(g) for g in groups], dtype=int)
        cache: dict[tuple[int, int], str] = {}

        def draw_binomial(rng: np.random.Generator, s: int, i: int) -> str:
            pick = rng.integers(0, len(groups), s)
            key = (int(kg[pick].sum()), int(ng[pick].sum()))
            if key not in cache:
                cache[key] = _judge(test, units, direction, threshold, k=key[0], n=key[1])
            return cache[key]
        return draw_binomial
    rest = dict(units.rest)
    correlation = test in CORRELATION_TESTS
    if correlation:
        rest["n_boot"] = min(n_boot, int(rest.get("n_boot", N_BOOT)))  # type: ignore[arg-type]

    def draw_aligned(rng: np.random.Generator, s: int, i: int) -> str:
        pick = rng.integers(0, len(groups), s)
        idx = pick if singletons else np.concatenate([groups[g] for g in pick])
        if correlation:
            rest["seed"] = i  # another bootstrap inside each simulated test
        return TESTS[test](direction=direction, threshold=threshold, **rest,
                           **{k: v[idx] for k, v in units.arrays.items()}).verdict
    return draw_aligned


def with_robustness(test: str, samples: Mapping[str, object], direction: str, threshold: float,
                    verdict: Verdict) -> Verdict:
    """``verdict`` (the test's verdict of ``samples``) with its leave-one-out and seeds-needed fields filled.

    Leave-one-out whenever computable; seeds needed only for an inconclusive verdict with n > 0 of a
    resamplable test (``MORE_THAN_MAX`` when more than ``MAX_SEEDS``). See :class:`Verdict`.
    """
    loo = leave_one_out(test, samples, direction, threshold, full=verdict)
    fields: dict[str, object] = {}
    if loo is not None:
        same, total = loo
        fields.update(loo_same=same, loo_total=total,
                      fragile=verdict.verdict in (HELD, NOT_HELD) and same < total)
    if verdict.verdict == INCONCLUSIVE and verdict.n > 0 and _resamplable(_units(test, samples)):
        needed = seeds_needed(test, samples, direction, threshold)
        fields["seeds_needed"] = MORE_THAN_MAX if needed is None else needed
    return replace(verdict, **fields)


def robustness_text(v: Verdict) -> str:
    """The robustness of a verdict in words: "LOO 9/10 (fragile)", "LOO 10/10; needs ~14 seeds",
    "needs > 50 seeds", or "—" when nothing was computed."""
    parts = []
    if v.loo_total > 0:
        parts.append(f"LOO {v.loo_same}/{v.loo_total}" + (" (fragile)" if v.fragile else ""))
    if v.seeds_needed > MAX_SEEDS:
        parts.append(f"needs > {MAX_SEEDS} seeds")
    elif v.seeds_needed > 0:
        parts.append(f"needs ~{v.seeds_needed} seeds")
    return "; ".join(parts) or "—"


def evaluate_claim(claim: Claim, data: ClaimData) -> Verdict:
    """Judge one claim row on one setting's data (inconclusive with n = 0 when the data lack its measure).

    ``seeds`` in the samples is taken out before the test is called and used for the robustness fields
    (:func:`with_robustness`): leave-one-out always when computable, seeds needed for an inconclusive verdict.
    """
    try:
        samples = dict(claim.samples(data))
    except NoData as exc:
        return Verdict(claim.id, INCONCLUSIVE, math.nan, math.nan, math.nan, math.nan, 0, claim.test, math.nan,
                       f"no data ({exc})")
    test_samples = {k: v for k, v in samples.items() if k != "seeds"}
    verdict = TESTS[claim.test](direction=claim.direction, threshold=claim.threshold, **test_samples)
    return with_robustness(claim.test, samples, claim.direction, claim.threshold, verdict).with_claim(claim.id)


def evaluate_all(table: Sequence[Claim], data: ClaimData) -> list[Verdict]:
    """Judge every row of a claim table on one setting."""
    return [evaluate_claim(c, data) for c in table]


VERDICT_COLUMNS = ["setting", "claim", "paper", "statement", "measure", "source", "comparison", "direction",
                   "threshold", "margin_why", "test", "verdict", "statistic", "effect", "ci_low", "ci_high", "n",
                   "p_value", "loo_same", "loo_total", "fragile", "seeds_needed", "key", "detail", "figure"]
ROBUSTNESS_COLUMNS = ("loo_same", "loo_total", "fragile", "seeds_needed")


def verdict_frame(table: Sequence[Claim], verdicts: Sequence[Verdict], setting: str = "") -> pd.DataFrame:
    """Tidy rows (one per claim and setting) for ``claims.csv``."""
    rows = []
    by_id = {c.id: c for c in table}
    for v in verdicts:
        c = by_id[v.claim]
        rows.append({"setting": setting, "claim": c.id, "paper": c.paper, "statement": c.statement,
                     "measure": c.measure, "source": c.source, "comparison": c.comparison, "direction": c.direction,
                     "threshold": c.threshold, "margin_why": c.margin_why,
                     **{k: getattr(v, k) for k in ("test", "verdict", "statistic", "effect", "ci_low", "ci_high", "n",
                                                   "p_value", *ROBUSTNESS_COLUMNS, "key", "detail")},
                     "figure": c.figure})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)
