"""The claims of Evci et al. (AAAI 2022) and Tessera et al. (2021) as rows of the claim engine (:mod:`figures.claims`).

Each row's ``samples`` reads one setting's analysis CSVs (``<runs>/_analysis``) and returns the
per-seed (or per-run, per-update) values its test takes. Paired rows pair runs by seed; a seed missing
on either side is left out. Thresholds are the papers' qualitative claims made explicit:

1. Signal propagation at initialization (``signal.csv``, Gaussian input, each repeat a fresh network;
   ratio = output std at the runs' sparsity / at sparsity 0, per repeat): (a) sparse init keeps a larger
   ratio than dense init (log ratios, paired by repeat); (b) dense init lets the std decay below half;
   (c) sparse init keeps it within a factor 2.
2. Gradient norm ||g||_2 (``gradflow_runs.csv``; early = mean over 0 < step <= 10%, training = mean
   over all logged steps), paired by seed: (a) scratch+ > scratch early; (b) RigL > scratch during
   training; (c, d) lottery tickets do not have a larger one than scratch, early and during training:
   a non-superiority test of log(‖g‖ lottery / ‖g‖ scratch) against the margin log 1.25 (held when the
   upper bound shows the lottery's norm is at most 25% above scratch's; equal norms can be held).
3. L2 distance to the pruning solution (``distance_to_pruning.csv``), paired by seed: (a) lottery start
   closer than scratch start; (b) lottery end closer than half of scratch end's distance.
4. Loss barrier on the straight line from a run's end to its pruning solution
   (``interpolation_summary.csv``), paired by seed: (a) lottery's barrier < 1/4 of scratch's;
   (b) scratch's barrier > 0.05 nats.
5. Ensembles (``ensemble_runs.csv``, ``ensemble_bootstrap.csv``): disagreement with the pruning solution
   (a) lottery < other pruning solutions and (b) other pruning solutions < scratch (Mann-Whitney:
   independent runs, not paired); (c) the lottery tickets' ensemble gain is below the smallest gain of
   the other groups (bootstrap over runs).
6. RigL (and RigL+) mask updates make the smallest Hessian eigenvalue more negative
   (``hessian_updates.csv``; :func:`analysis.hessian.more_negative`: it decreases and ends below
   ``-1e-4 * lambda_max``): exact binomial sign test of that share against 1/2 over updates (at least 40,
   over every seed's RigL and RigL+ runs; leave-one-seed-out drops a seed's updates), with the mean
   change of the smallest eigenvalue (post - pre) and its t-interval.
7. Tessera et al.: EGF_p correlates with test performance better than ||g||_p, like with like (p = 1, 2),
   each measure averaged over 11 evenly spaced points of training (``gradflow_runs.csv``, aggregation
   ``spaced``); Kendall's tau with final test accuracy (EGF's tau minus the norm's, held when the
   bootstrap interval of the difference is above 0) and with final test loss (the norm's minus EGF's,
   i.e. EGF's more negative). Sparse runs only (lottery, scratch, scratch+, RigL, RigL+, SET; prune
   runs left out entirely, as they are dense for the first part of training); dense runs (dense,
   small-dense, one of each per seed in the evci presets) in separate rows. Leave-one-out drops a seed's runs.

Rows carry their seeds (``seeds``) where a seed holds several units (runs, updates), so the fragility
check leaves out a whole seed and the seeds-needed estimate resamples seeds.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.hessian import more_negative
from figures.claims import Claim, ClaimData, NoData

EVCI = "Evci et al. 2022"
TESSERA = "Tessera et al. 2021"


def paired_by_seed(frame: pd.DataFrame, column: str, a: str, b: str, value: str, scale_b: float = 1.0) -> dict:
    """Values of ``frame[column] == a`` and ``== b``, paired by seed: ``{"a": ..., "b": scale_b * ...}``."""
    va = frame[frame[column] == a].groupby("seed")[value].mean()
    vb = frame[frame[column] == b].groupby("seed")[value].mean()
    if va.empty or vb.empty:
        raise NoData(f"no {a if va.empty else b} runs")
    common = va.index.intersection(vb.index)
    if common.empty:
        raise NoData(f"no seed has both {a} and {b}")
    return {"a": va[common].to_numpy(), "b": scale_b * vb[common].to_numpy()}


# --- 1: signal propagation ---------------------------------------------------------------------
def _log_ratios(data: ClaimData, init: str) -> np.ndarray:
    sig = data.csv("signal.csv")
    sig = sig[sig["input"] == "gaussian"]
    target = max((r.sparsity for r in data.runs), default=0.95)
    levels = np.array(sorted(set(sig["sparsity"])))
    s_hi = float(levels[np.argmin(np.abs(levels - target))])
    g = sig[sig["init"] == init].set_index(["sparsity", "repeat"])["output_std"]
    if (0.0 not in levels) or s_hi == 0.0 or g.empty:
        raise NoData(f"signal.csv lacks {init} init at sparsity 0 and {target}")
    hi, lo = g.xs(s_hi, level="sparsity"), g.xs(0.0, level="sparsity")
    common = hi.index.intersection(lo.index)
    return np.log(hi[common].to_numpy() / lo[common].to_numpy())


def _signal_sparse_vs_dense(data: ClaimData) -> dict:
    return {"a": _log_ratios(data, "sparse"), "b": _log_ratios(data, "dense"), "name": "Δ log std ratio"}


def _signal_dense(data: ClaimData) -> dict:
    r = _log_ratios(data, "dense")
    return {"a": r, "b": np.zeros_like(r), "name": "log std ratio"}


def _signal_sparse(data: ClaimData) -> dict:
    r = np.abs(_log_ratios(data, "sparse"))
    return {"a": r, "b": np.zeros_like(r), "name": "|log std ratio|"}


# --- 2: gradient norm ----------------------------------------------------------------------------
def _gradnorm(a: str, b: str, aggregation: str, log: bool = False):
    def samples(data: ClaimData) -> dict:
        runs = data.csv("gradflow_runs.csv")
        runs = runs[(runs["measure"] == "grad_norm") & (runs["aggregation"] == aggregation)]
        pair = paired_by_seed(runs, "method", a, b, "value")
        if not log:
            return {**pair, "name": "Δ‖g‖₂"}
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero norm gives ±inf, dropped by the test
            return {"a": np.log(pair["a"]), "b": np.log(pair["b"]), "name": "Δ log ‖g‖₂"}
    return samples


# 2c/2d: "not larger" as non-superiority. The margin: the lottery's norm may exceed scratch's by at most 25%,
# a gap smaller than the differences the paper does draw (2a: scratch+ over scratch early).
NOT_LARGER_MARGIN = math.log(1.25)
NOT_LARGER_WHY = ("non-superiority margin log 1.25: ‖g‖ at most 25% above scratch's counts as not larger; "
                  "smaller than the gaps the paper calls differences (2a)")


# --- 3: distances ----------------------------------------------------------------------------------
def _distance(kind: str, scale: float):
    def samples(data: ClaimData) -> dict:
        d = data.csv("distance_to_pruning.csv")
        d = d[d["pruning_run"].notna() & (d["kind"] == kind)]
        return {**paired_by_seed(d, "method", "lottery", "scratch", "distance", scale), "name": "Δ L2"}
    return samples


# --- 4: barriers -------------------------------------------------------------------------------------
def _barriers(data: ClaimData) -> pd.DataFrame:
    s = data.csv("interpolation_summary.csv")
    return s[s["path"] == "end->pruning solution"]


def _barrier_lottery_vs_scratch(data: ClaimData) -> dict:
    return {**paired_by_seed(_barriers(data), "method", "lottery", "scratch", "barrier", 0.25), "name": "Δ barrier"}


def _barrier_scratch(data: ClaimData) -> dict:
    b = _barriers(data)
    v = b[b["method"] == "scratch"].groupby("seed")["barrier"].mean().to_numpy()
    if len(v) == 0:
        raise NoData("no scratch barrier")
    return {"a": v, "b": np.zeros_like(v), "name": "barrier"}


# --- 5: ensembles --------------------------------------------------------------------------------------
def _disagreement(a: str, b: str):
    def samples(data: ClaimData) -> dict:
        r = data.csv("ensemble_runs.csv")
        va = r.loc[r["group"] == a, "disagreement_pruned"].dropna().to_numpy()
        vb = r.loc[r["group"] == b, "disagreement_pruned"].dropna().to_numpy()
        if len(va) == 0 or len(vb) == 0:
            raise NoData(f"no {a if len(va) == 0 else b} runs with a pruning solution")
        return {"a": va, "b": vb, "name": "shift in disagreement"}
    return samples


def _ensemble_gain(data: ClaimData) -> dict:
    ens = data.csv("ensemble.csv").set_index("group")
    boot = data.csv("ensemble_bootstrap.csv").pivot(index="replicate", columns="group", values="ensemble_gain")
    if "lottery" not in ens.index or "lottery" not in boot or len(ens) < 2:
        raise NoData("no lottery group or no other group")
    gain = ens["ensemble_acc"] - ens["test_acc_mean"]
    others = [g for g in gain.index if g != "lottery" and g in boot]
    observed = float(gain["lottery"] - gain[others].min())
    replicates = (boot["lottery"] - boot[others].min(axis=1)).to_numpy()
    return {"observed": observed, "replicates": replicates, "n": int(ens.loc["lottery", "n_runs"]),
            "name": "lottery gain − smallest other gain"}


# --- 6: Hessian around RigL updates ------------------------------------------------------------------------
def _hessian(data: ClaimData) -> dict:
    u = data.csv("hessian_updates.csv")
    u = u[u["method"].isin(["rigl", "rigl+"])]
    if u.empty:
        raise NoData("no RigL mask update in hessian_updates.csv")
    return {"outcomes": more_negative(u).to_numpy(), "seeds": u["seed"].to_numpy(),
            "extra": ("mean Δλ_min (post − pre)", (u["min_post"] - u["min_pre"]).to_numpy()),
            "name": "share more negative"}


# --- 7: EGF against the gradient norm ---------------------------------------------------------------------------
def _egf(p: int, target: str, group: str):
    egf, norm = f"egf{p}", "grad_norm_l1" if p == 1 else "grad_norm"

    def samples(data: ClaimData) -> dict:
        r = data.csv("gradflow_runs.csv")
        if "spaced" not in set(r["aggregation"]):
            raise NoData("gradflow_runs.csv has no 'spaced' aggregation; rerun analysis.gradflow")
        r = r[(r["aggregation"] == "spaced") & (r["group"] == group) & (r["method"] != "prune")]
        wide = r.pivot_table(index="run_id", columns="measure", values="value")
        y = r.groupby("run_id")[f"final_{target}"].first().reindex(wide.index)
        seeds = r.groupby("run_id")["seed"].first().reindex(wide.index)
        if wide.empty or egf not in wide or norm not in wide:
            raise NoData(f"no {group} runs with {egf} and {norm}")
        return {"x1": wide[egf].to_numpy(), "x2": wide[norm].to_numpy(), "y": y.to_numpy(),
                "seeds": seeds.to_numpy(), "name": f"τ(EGF{p}) − τ(‖g‖{p})"}
    return samples


def _egf_rows() -> list[Claim]:
    rows = []
    letters = iter("abcdefgh")
    for group in ("sparse", "dense"):
        for target, direction, word in (("test_acc", "greater", "accuracy"), ("test_loss", "less", "loss")):
            for p in (1, 2):
                sub = "₁" if p == 1 else "₂"
                better = "higher" if direction == "greater" else "more negative"
                rows.append(Claim(
                    id=f"7{next(letters)}", paper=TESSERA,
                    statement=f"EGF{sub} correlates with final test {word} better than ‖g‖{sub} ({group} runs).",
                    measure=f"Kendall τ of EGF{sub} and of ‖g‖{sub} (each averaged over 11 evenly spaced points of "
                            f"training) with final test {word}, over {group} runs"
                            + (" (prune runs left out)" if group == "sparse" else ""),
                    source="gradflow_runs.csv (aggregation spaced)",
                    comparison=f"τ(EGF{sub}) − τ(‖g‖{sub}), same runs; EGF's τ {better}",
                    test="correlation_difference", direction=direction, threshold=0.0,
                    figure="table_egf_correlation.md", samples=_egf(p, target, group)))
    return rows


EVCI_CLAIMS: tuple[Claim, ...] = (
    Claim("1a", EVCI, "At high sparsity, sparse init keeps the output std larger than dense init does.",
          "log(output std at the runs' sparsity / at sparsity 0), Gaussian input", "signal.csv",
          "sparse init − dense init, paired by repeat", "wilcoxon", "greater", 0.0, "fig3_signal.png",
          _signal_sparse_vs_dense),
    Claim("1b", EVCI, "Dense init lets the output std decay (below half of the dense network's).",
          "log(output std ratio), dense init", "signal.csv", "log ratio vs log ½", "wilcoxon", "less",
          math.log(0.5), "fig3_signal.png", _signal_dense,
          margin_why="threshold log ½: the paper's decay, the output std falls below half of the dense network's"),
    Claim("1c", EVCI, "Sparse init keeps the output std near the dense network's (within a factor 2).",
          "|log(output std ratio)|, sparse init", "signal.csv", "|log ratio| vs log 2", "wilcoxon", "less",
          math.log(2.0), "fig3_signal.png", _signal_sparse,
          margin_why="equivalence margin log 2: within a factor 2 of the dense network's std counts as kept"),
    Claim("2a", EVCI, "Early in training scratch+ has a larger gradient norm than scratch.",
          "‖g‖₂ averaged over 0 < step ≤ 10% of training", "gradflow_runs.csv (aggregation early)",
          "scratch+ − scratch, paired by seed", "wilcoxon", "greater", 0.0, "fig4_gradient_norm.png",
          _gradnorm("scratch+", "scratch", "early")),
    Claim("2b", EVCI, "RigL keeps a larger gradient norm than scratch during training.",
          "‖g‖₂ averaged over all logged steps", "gradflow_runs.csv (aggregation mean)",
          "rigl − scratch, paired by seed", "wilcoxon", "greater", 0.0, "fig4_gradient_norm.png",
          _gradnorm("rigl", "scratch", "mean")),
    Claim("2c", EVCI, "Lottery tickets do not have a larger gradient norm than scratch early in training "
          "(at most 25% larger).", "log ‖g‖₂ averaged over 0 < step ≤ 10% of training",
          "gradflow_runs.csv (aggregation early)", "log ‖g‖ lottery − log ‖g‖ scratch, paired by seed; "
          "non-superiority", "wilcoxon", "less", NOT_LARGER_MARGIN, "fig4_gradient_norm.png",
          _gradnorm("lottery", "scratch", "early", log=True), margin_why=NOT_LARGER_WHY),
    Claim("2d", EVCI, "Lottery tickets do not have a larger gradient norm than scratch during training "
          "(at most 25% larger).", "log ‖g‖₂ averaged over all logged steps", "gradflow_runs.csv (aggregation mean)",
          "log ‖g‖ lottery − log ‖g‖ scratch, paired by seed; non-superiority", "wilcoxon", "less",
          NOT_LARGER_MARGIN, "fig4_gradient_norm.png", _gradnorm("lottery", "scratch", "mean", log=True),
          margin_why=NOT_LARGER_WHY),
    Claim("3a", EVCI, "Lottery-start is closer in L2 to the pruning solution than scratch-start.",
          "L2 distance of the start to the pruning solution", "distance_to_pruning.csv",
          "lottery − scratch, paired by seed", "wilcoxon", "less", 0.0, "fig6_mds.png", _distance("start", 1.0)),
    Claim("3b", EVCI, "Lottery-end is much closer (< half) to the pruning solution than scratch-end.",
          "L2 distance of the end to the pruning solution", "distance_to_pruning.csv",
          "lottery − ½ scratch, paired by seed", "wilcoxon", "less", 0.0, "fig6_mds.png", _distance("end", 0.5),
          margin_why="factor ½: 'much closer' made explicit"),
    Claim("4a", EVCI, "The loss on the line lottery-end → pruning solution has no barrier: below ¼ of scratch's.",
          "barrier: max over α∈[0,1] of the training loss above the chord (nats)", "interpolation_summary.csv",
          "lottery − ¼ scratch, paired by seed", "wilcoxon", "less", 0.0, "fig7_interpolation.png",
          _barrier_lottery_vs_scratch, margin_why="factor ¼: 'no barrier' relative to scratch's made explicit"),
    Claim("4b", EVCI, "The loss on the line scratch-end → pruning solution has a barrier (> 0.05 nats).",
          "barrier of scratch runs (nats)", "interpolation_summary.csv", "scratch barrier vs 0.05", "wilcoxon",
          "greater", 0.05, "fig7_interpolation.png", _barrier_scratch,
          margin_why="0.05 nats: well above the float noise of the line's loss, well below the barriers the paper shows"),
    Claim("5a", EVCI, "Lottery tickets disagree less with their pruning solution than other pruning solutions do.",
          "fraction of test examples classified differently from the pruning solution", "ensemble_runs.csv",
          "lottery vs pruning solutions (independent runs)", "mannwhitney", "less", 0.0, "table1_ensemble.md",
          _disagreement("lottery", "pruning solutions")),
    Claim("5b", EVCI, "Other pruning solutions disagree less with the pruning solution than scratch runs do.",
          "fraction of test examples classified differently from the pruning solution", "ensemble_runs.csv",
          "pruning solutions vs scratch (independent runs)", "mannwhitney", "less", 0.0, "table1_ensemble.md",
          _disagreement("pruning solutions", "scratch")),
    Claim("5c", EVCI, "The ensemble gain of lottery tickets is the smallest of all groups.",
          "ensemble accuracy − mean member accuracy", "ensemble.csv, ensemble_bootstrap.csv",
          "lottery − the smallest other group's gain, bootstrap over runs", "bootstrap", "less", 0.0,
          "table1_ensemble.md", _ensemble_gain),
    Claim("6", EVCI, "RigL mask updates make the smallest Hessian eigenvalue more negative.",
          "updates whose smallest eigenvalue decreased and ends below −1e-4·λ_max (analysis.hessian.more_negative)",
          "hessian_updates.csv (RigL, RigL+)", "share of updates vs ½", "binomial", "greater", 0.5,
          "fig_hessian_rigl.png", _hessian,
          margin_why="½: more updates deepen the negative curvature than not"),
    *_egf_rows(),
)


# --- beyond the paper: is the scratch barrier a permutation artefact? -----------------------------------------
BEYOND = "Beyond the paper"


def _aligned_barrier(data: ClaimData) -> dict:
    """Scratch runs' loss barrier to the pruning solution after weight matching, against ¼ of the unaligned one."""
    a = data.csv("align.csv")
    a = a[a["method"] == "scratch"]
    wide = a.pivot_table(index="seed", columns="aligned", values="loss_barrier", aggfunc="mean")
    if wide.empty or True not in wide or False not in wide:
        raise NoData("align.csv has no scratch run measured before and after alignment")
    wide = wide.dropna()
    return {"a": wide[True].to_numpy(), "b": 0.25 * wide[False].to_numpy(), "name": "aligned − ¼ unaligned"}


BEYOND_CLAIMS: tuple[Claim, ...] = (
    Claim("4c", BEYOND, "After weight matching (the mask permuted along), the scratch barrier stays above ¼ of "
          "its unaligned value: scratch does not sit in the pruning solution's basin seen through a permutation.",
          "loss barrier end → pruning solution after weight matching (nats)", "align.csv",
          "aligned − ¼ unaligned, scratch runs, paired by seed", "wilcoxon", "greater", 0.0, "align.png",
          _aligned_barrier,
          margin_why="factor ¼: the same bar as 4a, so 'the barrier survives alignment' is judged like 'no barrier'"),
)
