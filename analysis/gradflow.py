"""Gradient norms and Effective Gradient Flow during training, by method; CLI: ``python -m analysis.gradflow runs/``.

Reads only ``metrics.csv`` (the ``phase == "train"`` rows; the pre/post mask-update rows are left out).
Each row's measures are taken on the trainer's fixed batch of 1,000 training examples: ``grad_norm``
(||g||_2 of the masked gradient), ``grad_norm_l1`` (||g||_1), ``egf1`` / ``egf2`` (Tessera et al.'s
Effective Gradient Flow: mean over maskable layers of ||g_l * m_l||_p) and ``egf2_per_weight``.

Three things are computed:

1. **Curves** (Evci et al. 2022, Figure 4): for every method and logged step, the mean, standard
   deviation (pandas' ``std``, ddof = 1; NaN for a single run), minimum, maximum and count over the
   method's runs (seeds). ``gradflow.png`` shows ||g||_2 and EGF_2 on a log scale, mean with a
   +-1 std band.
2. **Measure comparison** (Tessera et al. 2021): each run's measures aggregated three ways:
   ``mean`` = the mean over all logged train rows (the trainer logs steps 1, 2, 4, ... densely before
   its regular interval, so very early steps weigh a little more than in a time average);
   ``init`` = the step-0 row; ``early`` = the mean over rows with 0 < step <= 10% of the run's total
   steps; ``spaced`` = Tessera et al.'s average over 11 evenly spaced points of training (steps
   0, T/10, ..., T; at each, the logged train row nearest to it, the earlier one on a tie). Then,
   across runs, Kendall's tau and Spearman's rho (``scipy.stats``, with p-values) of each measure and
   aggregation against the final test accuracy and the final test loss (the last train row: the full
   test set in eval mode), separately for *sparse* runs (lottery, scratch, scratch+, RigL, RigL+, SET:
   sparse from the first step) and *dense* runs (dense, small-dense). Prune runs form their own group
   ``prune`` and enter no correlation: they are dense for the first part of training, so their
   gradient measures mix a dense and a sparse network. A group of fewer than 3 runs gets NaN, and
   the CLI says so.
3. **Claims** of Evci et al. (2): early in training scratch+ has a larger gradient norm than scratch
   (window ``early``); RigL has a larger gradient norm than scratch during training (window
   ``training``: the ``mean`` aggregation); lottery tickets do not have a larger one than scratch
   (checked in both windows). Each method's value is the mean over its runs (seeds) of the per-run
   aggregate; ``n_pairs``/``a_larger`` count the seeds where both runs exist and A's value is larger.

Outputs (in ``<runs>/_analysis`` or ``--out``): ``gradflow_curves.csv`` (method, step, epoch, measure,
mean, std, min, max, n), ``gradflow.png``, ``gradflow_runs.csv`` (run_id, method, seed, group,
measure, aggregation, value, final_test_acc, final_test_loss), ``gradflow_correlations.csv`` (group,
measure, aggregation, target, kendall_tau, kendall_p, spearman_rho, spearman_p, n_runs) and
``gradflow_claims.csv`` (claim, measure, window, method_a, relation, method_b, mean_a, mean_b, n_a,
n_b, n_pairs, a_larger, holds).
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser
from analysis.plotting import method_color, method_rank, new_figure, order_methods, save_figure
from analysis.runs import Run
from sparse_training.errors import UserError, cli_entry

MEASURES = ("grad_norm_l1", "grad_norm", "egf1", "egf2", "egf2_per_weight")
AGGREGATIONS = ("mean", "init", "early", "spaced")
TARGETS = ("test_acc", "test_loss")
DENSE_METHODS = ("dense", "small-dense")
EARLY_FRACTION = 0.10
SPACED_POINTS = 11  # Tessera et al. average each measure over 11 evenly spaced points of training
CURVE_COLUMNS = ["method", "step", "epoch", "measure", "mean", "std", "min", "max", "n"]
RUN_COLUMNS = ["run_id", "method", "seed", "group", "measure", "aggregation", "value", "final_test_acc",
               "final_test_loss"]
CORR_COLUMNS = ["group", "measure", "aggregation", "target", "kendall_tau", "kendall_p", "spearman_rho", "spearman_p",
                "n_runs"]
CLAIM_COLUMNS = ["claim", "measure", "window", "method_a", "relation", "method_b", "mean_a", "mean_b", "n_a", "n_b",
                 "n_pairs", "a_larger", "holds"]
# (method A, relation, method B, window): Evci et al.'s claim (2) on gradient flow.
CLAIMS = (("scratch+", ">", "scratch", "early"), ("rigl", ">", "scratch", "training"),
          ("lottery", "<=", "scratch", "early"), ("lottery", "<=", "scratch", "training"))


def group_of(method: str) -> str:
    """'dense' for dense and small-dense runs, 'prune' for prune runs (dense early on), 'sparse' for the rest."""
    return "dense" if method in DENSE_METHODS else "prune" if method == "prune" else "sparse"


def train_rows(run: Run) -> pd.DataFrame:
    """The run's ``phase == "train"`` metrics rows, sorted by step (all rows for files without a phase)."""
    m = run.metrics
    if len(m) and "phase" in m:
        m = m[m["phase"] == "train"]
    return m.sort_values("step").reset_index(drop=True) if "step" in m else m


def load_metrics(runs: Sequence[Run], quiet: bool = True) -> pd.DataFrame:
    """Train rows of every run with run_id, method, seed and total_steps columns; runs without rows are skipped."""
    frames = []
    for run in tqdm(runs, desc="metrics", unit="run", disable=quiet, file=sys.stderr):
        m = train_rows(run)
        missing = [c for c in ("step", "grad_norm") if c not in m]
        if m.empty or missing:
            print(f"warning: {run.run_id} has no gradient-flow rows in metrics.csv; skipping it", file=sys.stderr)
            continue
        m = m.copy()
        m.insert(0, "run_id", run.run_id)
        m.insert(1, "method", run.method)
        m.insert(2, "seed", run.seed)
        m["total_steps"] = int(run.config.get("total_steps") or m["step"].max())
        frames.append(m)
    if not frames:
        external = " (checkpoints of other code have no metrics.csv)" if any(
            r.config.get("external") for r in runs) else ""
        raise UserError(f"none of the selected runs has gradient-flow rows in its metrics.csv{external}.")
    return pd.concat(frames, ignore_index=True)


# --- curves -----------------------------------------------------------------------------------
def curves(metrics: pd.DataFrame, measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """Per method, step and measure: mean, std (ddof 1), min, max and count over runs."""
    present = [m for m in measures if m in metrics]
    long = metrics.melt(id_vars=["method", "step", "epoch"] if "epoch" in metrics else ["method", "step"],
                        value_vars=present, var_name="measure", value_name="value")
    if "epoch" not in long:
        long["epoch"] = np.nan
    g = long.groupby(["method", "measure", "step"], sort=True)
    out = g["value"].agg(["mean", "std", "min", "max", "count"]).reset_index().rename(columns={"count": "n"})
    out["epoch"] = g["epoch"].mean().to_numpy()
    out = out.sort_values(["method", "measure", "step"], key=lambda s: s.map(method_rank) if s.name == "method" else s)
    return out[CURVE_COLUMNS].reset_index(drop=True)


def plot_curves(table: pd.DataFrame, path, x: str = "step") -> list:
    """||g||_2 and EGF_2 against step (or epoch): mean over seeds with a +-1 std band, log scale."""
    panels = [("grad_norm", "gradient norm ||g||_2"), ("egf2", "effective gradient flow EGF_2")]
    panels = [p for p in panels if p[0] in set(table["measure"])]
    fig, axes = new_figure(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    methods = order_methods(table["method"])
    for ax, (measure, title) in zip(axes[0], panels):
        for method in methods:
            g = table[(table["method"] == method) & (table["measure"] == measure)]
            g = g[g["mean"] > 0]
            if g.empty:
                continue
            color = method_color(method)
            ax.plot(g[x], g["mean"], color=color, lw=1.4, label=method)
            std = g["std"].fillna(0.0)
            lo = (g["mean"] - std).where(g["mean"] - std > 0, g["min"])
            ax.fill_between(g[x], lo, g["mean"] + std, color=color, alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_title(title)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


# --- per-run measures and correlations --------------------------------------------------------
def early_mask(steps: pd.Series, total: int) -> pd.Series:
    """Rows of the early window: 0 < step <= 10% of the run's total steps (step 0 is 'init')."""
    return (steps > 0) & (steps <= EARLY_FRACTION * total)


def spaced_rows(steps: pd.Series, total: int, points: int = SPACED_POINTS) -> np.ndarray:
    """Positions (into ``steps``, sorted ascending) of the rows nearest to ``points`` evenly spaced steps 0..total."""
    s = steps.to_numpy(dtype=np.float64)
    targets = np.linspace(0.0, float(total), points)
    return np.array([int(np.argmin(np.abs(s - t))) for t in targets])  # argmin: the earlier row on a tie


def run_measures(metrics: pd.DataFrame, measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """Each run's measures under each aggregation (mean, init, early, spaced), with its final test accuracy and loss."""
    present = [m for m in measures if m in metrics]
    rows = []
    for run_id, g in metrics.groupby("run_id", sort=False):
        g = g.sort_values("step")
        last = g.iloc[-1]
        at0 = g[g["step"] == 0]
        early = g[early_mask(g["step"], int(last["total_steps"]))]
        spaced = g.iloc[spaced_rows(g["step"], int(last["total_steps"]))]
        for measure in present:
            values = {"mean": g[measure].mean(),
                      "init": at0[measure].iloc[0] if len(at0) else np.nan,
                      "early": early[measure].mean() if len(early) else np.nan,
                      "spaced": spaced[measure].mean()}
            for agg in AGGREGATIONS:
                rows.append({"run_id": run_id, "method": last["method"], "seed": int(last["seed"]),
                             "group": group_of(last["method"]), "measure": measure, "aggregation": agg,
                             "value": float(values[agg]), "final_test_acc": float(last.get("test_acc", np.nan)),
                             "final_test_loss": float(last.get("test_loss", np.nan))})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float, int]:
    """``(kendall_tau, kendall_p, spearman_rho, spearman_p, n)`` over pairs where both are finite; NaN if n < 3."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(len(x))
    if n < 3:
        return math.nan, math.nan, math.nan, math.nan, n
    with warnings.catch_warnings():  # a constant column gives NaN with a warning: NaN is the answer
        warnings.simplefilter("ignore")
        kt = stats.kendalltau(x, y)
        sr = stats.spearmanr(x, y)
    return float(kt.statistic), float(kt.pvalue), float(sr.statistic), float(sr.pvalue), n


def correlations(per_run: pd.DataFrame) -> pd.DataFrame:
    """Rank correlation of every measure and aggregation with final test accuracy and loss, per group."""
    rows = []
    for group in ("sparse", "dense"):
        sub = per_run[per_run["group"] == group]
        for measure in dict.fromkeys(per_run["measure"]):
            for agg in AGGREGATIONS:
                s = sub[(sub["measure"] == measure) & (sub["aggregation"] == agg)]
                for target in TARGETS:
                    kt, kp, sr, sp, n = rank_correlation(s["value"], s[f"final_{target}"])
                    rows.append({"group": group, "measure": measure, "aggregation": agg, "target": target,
                                 "kendall_tau": kt, "kendall_p": kp, "spearman_rho": sr, "spearman_p": sp,
                                 "n_runs": n})
    return pd.DataFrame(rows, columns=CORR_COLUMNS)


# --- claims -----------------------------------------------------------------------------------
def claims(per_run: pd.DataFrame, measure: str = "grad_norm") -> pd.DataFrame:
    """Evci et al.'s gradient-flow claims, checked on the per-run aggregates (see the module docstring)."""
    window_agg = {"early": "early", "training": "mean"}
    rows = []
    for a, rel, b, window in CLAIMS:
        sub = per_run[(per_run["measure"] == measure) & (per_run["aggregation"] == window_agg[window])]
        va = sub[sub["method"] == a].set_index("seed")["value"].dropna()
        vb = sub[sub["method"] == b].set_index("seed")["value"].dropna()
        mean_a = float(va.mean()) if len(va) else math.nan
        mean_b = float(vb.mean()) if len(vb) else math.nan
        common = va.index.intersection(vb.index)
        larger = int((va[common] > vb[common]).sum())
        if math.isnan(mean_a) or math.isnan(mean_b):
            holds: object = None
        else:
            holds = bool(mean_a > mean_b) if rel == ">" else bool(mean_a <= mean_b)
        rows.append({"claim": f"{a} {rel} {b} ({window})", "measure": measure, "window": window, "method_a": a,
                     "relation": rel, "method_b": b, "mean_a": mean_a, "mean_b": mean_b, "n_a": len(va),
                     "n_b": len(vb), "n_pairs": len(common), "a_larger": larger, "holds": holds})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


# --- CLI ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.gradflow``."""
    parser = analysis_parser(
        "gradflow", "Gradient norm and EGF curves by method (Evci et al. Fig. 4), rank correlation of gradient-flow "
                    "measures with final test accuracy and loss (Tessera et al.), and Evci et al.'s claims on "
                    "gradient flow, all from metrics.csv.")
    parser.add_argument("--x", default="step", choices=("step", "epoch"), help="x axis of the curves")
    return parser


def format_table(frame: pd.DataFrame) -> str:
    """A table as aligned text."""
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def report(per_run: pd.DataFrame, corr: pd.DataFrame, claim_table: pd.DataFrame) -> str:
    """What the CLI prints: the claims, the groups too small to correlate, the correlations of the mean."""
    lines = ["Evci et al.'s claims on the gradient norm (mean over seeds of per-run aggregates):",
             format_table(claim_table[["claim", "mean_a", "mean_b", "n_pairs", "a_larger", "holds"]])]
    for group in ("sparse", "dense"):
        n = int(per_run[per_run["group"] == group]["run_id"].nunique())
        if n < 3:
            lines.append(f"{group} runs: {n} (< 3), so their rank correlations are NaN.")
    shown = corr[(corr["aggregation"] == "mean") & (corr["n_runs"] >= 3)]
    if not shown.empty:
        lines += ["rank correlation with the final test accuracy/loss (aggregation: mean over training):",
                  format_table(shown.drop(columns=["aggregation"]))]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the gradient-flow CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    metrics = load_metrics(cmd.selected(), quiet=cmd.args.quiet)
    table = curves(metrics)
    per_run = run_measures(metrics)
    corr = correlations(per_run)
    claim_table = claims(per_run)
    cmd.write({"gradflow_curves.csv": table, "gradflow_runs.csv": per_run, "gradflow_correlations.csv": corr,
               "gradflow_claims.csv": claim_table},
              {"gradflow.png": lambda path: plot_curves(table, path, cmd.args.x)},
              report=report(per_run, corr, claim_table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
