"""Command line: Tessera et al.'s same-capacity sparse-vs-dense study (SC-SDC) from a runs directory.

    python -m figures.tessera runs-tessera/

Reads the dense-narrow / sparse-wide pairs that the ``tessera-fmnist`` preset (or its digits version
``scsdc``) trains: a *pair* is a ``dense`` run of width ``w`` and a sparse run with ``--match-width w``
whose other settings and seed agree. A *cell* is what a pair varies: optimizer, regularization (none,
L2, augmentation, skip connections, BatchNorm, and BatchNorm with each), activation, depth and the dense
width as a fraction of the sparse-wide width. Gradient flow is taken as Tessera et al. take it: ‖g‖₁,
‖g‖₂, EGF₁ and EGF₂ of each run at 11 evenly spaced points of training, averaged: the logged rows
nearest to steps 0, T/10, ..., T (:func:`analysis.gradflow.spaced_rows`); the presets log exactly there
(``--log-points 10``), and ``n_off_grid`` counts the points whose row lies off its step.

The three designed slices are found from the cells present: the optimizer x regularization table is
at the most common (activation, depth, fraction); the activation x optimizer table at that depth and
fraction and the most common regularization of the other activations; the depth x fraction sweep at
the base activation and regularization and the most common optimizer of the other (depth, fraction).

Writes to ``<runs>/_figures/tessera`` (or ``--out``):

- ``tessera_runs.csv`` (one row per run: cell, seed, network, final test accuracy and loss, the four
  measures averaged over the 11 points, how many rows lay off their point), ``tessera_curves.csv`` (one row
  per run, point and measure) and ``tessera_pairs.csv`` (one row per pair);
- ``tessera_pvalues.csv/.md``: one-sided p-values of "sparse > dense" (Wilcoxon signed-rank over
  seeds, exact) per optimizer x regularization, in the paper's layout (optimizers as rows);
- ``tessera_activation.csv`` and ``fig_tessera_activation.png``: sparse-minus-dense test accuracy per
  activation and optimizer;
- ``fig_tessera_egf.png``: EGF₂ during training per cell of the optimizer x regularization table;
- ``tessera_sweep.csv`` and ``fig_tessera_sweep.png``: sparse-minus-dense accuracy by depth and capacity;
- ``tessera_correlations.csv/.md``: Kendall τ of ‖g‖₁, ‖g‖₂, EGF₁, EGF₂ with final test loss and
  accuracy, sparse and dense runs separately, with bootstrap intervals over runs;
- ``claims.csv`` and ``REPORT.md``: the four Tessera claims judged by the claims engine
  (:mod:`figures.claims`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analysis.cli import shown_path
from analysis.gradflow import SPACED_POINTS, spaced_rows, train_rows
from analysis.plotting import new_figure, save_figure
from analysis.runs import select_runs
from sparse_training.config import DEFAULT_LR, TrainConfig
from sparse_training.errors import UserError, cli_entry
from sparse_training.io import atomic_write_csv, atomic_write_text
from sparse_training.presets import REGULARIZATIONS

from . import claims as engine
from .paper import markdown

MEASURES = ("grad_norm_l1", "grad_norm", "egf1", "egf2")
MEASURE_NAMES = {"grad_norm_l1": "‖g‖₁", "grad_norm": "‖g‖₂", "egf1": "EGF₁", "egf2": "EGF₂"}
TARGETS = {"test_loss": "test loss", "test_acc": "test accuracy"}
POINTS = SPACED_POINTS  # Tessera et al.: 11 evenly spaced points of training
OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam", "adamw", "rmsprop")
EWMA = ("adam", "adamw", "rmsprop")  # optimizers with exponentially weighted moving averages of g²
ACTIVATIONS = ("relu", "prelu", "elu", "swish", "srelu", "sigmoid", "tanh")
CELL = ["optimizer", "regularization", "activation", "depth", "fraction"]
LENGTH_COLUMNS = ["epochs", "lr", "lr_default"]  # what a length study varies beside the cell
NOT_IN_PAIR_KEY = ("method", "sparsity", "width", "match_width", "seed", "distribution", "init")


# --- runs and pairs ------------------------------------------------------------------
def regularization_of(config: dict) -> str:
    """``none``, ``l2``, ``augment``, ``skip``, ``bn``, ``bn+l2``, ... from a run's settings."""
    parts = [name for name, on in (("l2", float(config.get("weight_decay") or 0) > 0),
                                   ("augment", config.get("augment", "none") not in (None, "none")),
                                   ("skip", bool(config.get("skip")))) if on]
    if config.get("batchnorm"):
        parts.insert(0, "bn")
    return "+".join(parts) or "none"


def network_of(config: dict) -> str | None:
    """'sparse' for a sparse-wide run (``match_width``), 'dense' for a dense run, None otherwise."""
    if config.get("match_width") and config.get("method") not in ("dense", "small-dense"):
        return "sparse"
    return "dense" if config.get("method") == "dense" else None


def epochs_of(config: dict, total: int) -> float:
    """A run's length in epochs: its ``--epochs``, or its steps over its steps per epoch (``--steps`` runs)."""
    per = config.get("steps_per_epoch")
    if config.get("steps") and per:
        return round(total / per, 3)
    return float(config.get("epochs") or (total / per if per else np.nan))


def pair_key(config: dict) -> str:
    """What a dense-narrow run and its sparse-wide partner share: every setting but the method's own,
    with the dense width standing for both (the sparse run's ``match_width``)."""
    identity = TrainConfig.from_dict(config).identity()
    fraction = config["match_width"] if network_of(config) == "sparse" else config.get("width")
    rest = {k: v for k, v in identity.items() if k not in NOT_IN_PAIR_KEY}
    return json.dumps({**rest, "fraction": fraction}, sort_keys=True)


def load_runs(root: Path, quiet: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run table (cell, seed, final test accuracy/loss, measures averaged over 11 points) and the
    long table of the 11 points, for every complete dense-narrow or sparse-wide run."""
    rows, curves = [], []
    runs = [r for r in select_runs(root, warn=False) if network_of(r.config)]
    for run in tqdm(runs, desc="runs", unit="run", disable=quiet, file=sys.stderr):
        c = run.config
        m = train_rows(run)
        if m.empty:
            continue
        total = int(c.get("total_steps") or m["step"].max())
        pts = m.iloc[spaced_rows(m["step"], total, POINTS)].reset_index(drop=True)
        pts["point"] = np.arange(POINTS)
        pts["training_fraction"] = np.linspace(0.0, 1.0, POINTS)
        pts["off_grid"] = np.abs(pts["step"].to_numpy(float) - np.linspace(0.0, total, POINTS)) > 0.5
        last = m.iloc[-1]
        cell = {"optimizer": c["optimizer"], "regularization": regularization_of(c),
                "activation": c.get("activation", "relu"), "depth": int(c.get("depth", 0)),
                "fraction": float(c["match_width"] if network_of(c) == "sparse" else c.get("width", 1.0))}
        lr = float(c.get("lr_resolved") or TrainConfig.from_dict(c).resolved_lr())
        row = {"run_id": run.run_id, "network": network_of(c), "dataset": c.get("dataset"), **cell,
               "epochs": epochs_of(c, total), "lr": lr, "lr_default": bool(np.isclose(lr, DEFAULT_LR.get(c["optimizer"], lr))),
               "seed": run.seed,
               "pair_key": pair_key(c), "test_acc": float(last["test_acc"]), "test_loss": float(last["test_loss"]),
               **{k: float(pts[k].mean()) for k in MEASURES if k in pts}, "n_off_grid": int(pts["off_grid"].sum())}
        rows.append(row)
        long = pts.melt(id_vars=["point", "step", "training_fraction", "off_grid"],
                        value_vars=[k for k in MEASURES if k in pts], var_name="measure", value_name="value")
        for k in ("run_id", "network", *CELL, *LENGTH_COLUMNS, "seed"):
            long[k] = row[k]
        curves.append(long)
    if not rows:
        raise UserError(f"{root} holds no dense-narrow or sparse-wide runs (dense runs and sparse runs trained "
                        "with --match-width); train the tessera-fmnist or scsdc preset first.")
    datasets = sorted({str(r["dataset"]) for r in rows})
    if len(datasets) > 1:
        raise UserError(f"{root} mixes same-capacity runs on {', '.join(datasets)}; point figures.tessera at the "
                        "runs directory of one study.")
    cols = ["run_id", "network", *CELL, *LENGTH_COLUMNS, "seed"]
    curve = pd.concat(curves, ignore_index=True)
    curve = curve[cols + ["point", "step", "training_fraction", "off_grid", "measure", "value"]]
    return pd.DataFrame(rows), curve


def pair_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per pair (a dense and a sparse run with equal key and seed): both accuracies and losses,
    and the sparse-minus-dense accuracy difference."""
    dense = runs[runs["network"] == "dense"].set_index(["pair_key", "seed"])
    sparse = runs[runs["network"] == "sparse"].set_index(["pair_key", "seed"])
    both = dense.merge(sparse[["run_id", "test_acc", "test_loss"]], how="inner", left_index=True, right_index=True,
                       suffixes=("_dense", "_sparse"))
    if both.empty:
        raise UserError("no dense-narrow run has a sparse-wide partner with the same settings and seed; "
                        "train both networks of each pair (tessera-fmnist or scsdc preset).")
    out = both.reset_index()[[*CELL, *LENGTH_COLUMNS, "seed", "run_id_dense", "run_id_sparse", "test_acc_dense",
                              "test_acc_sparse", "test_loss_dense", "test_loss_sparse", "pair_key"]]
    out["acc_diff"] = out["test_acc_sparse"] - out["test_acc_dense"]
    return out.sort_values([*CELL, "epochs", "lr", "seed"]).reset_index(drop=True)


def _mode(values: pd.Series, fallback):
    return values.mode().iloc[0] if len(values) else fallback


def base_cell(pairs: pd.DataFrame) -> dict:
    """The base values the three slices are taken at (see the module docstring)."""
    combo = pairs[["activation", "depth", "fraction"]].apply(tuple, axis=1)
    act, depth, frac = _mode(combo, ("relu", 2, 0.25))
    at = (pairs["depth"] == depth) & (pairs["fraction"] == frac)
    reg = _mode(pairs.loc[at & (pairs["activation"] != act), "regularization"], "none")
    opt = _mode(pairs.loc[~at, "optimizer"], _mode(pairs["optimizer"], "momentum"))
    return {"activation": act, "depth": int(depth), "fraction": float(frac), "regularization": reg, "optimizer": opt}


def slice_of(pairs: pd.DataFrame, base: dict, free: tuple[str, ...]) -> pd.DataFrame:
    """Pairs whose cell equals the base in every factor but the ``free`` ones."""
    keep = np.ones(len(pairs), dtype=bool)
    for k in CELL:
        if k not in free:
            keep &= (pairs[k] == base[k]).to_numpy()
    return pairs[keep]


def _ordered(values, order) -> list:
    rank = {v: i for i, v in enumerate(order)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), str(v)))


# --- tables ----------------------------------------------------------------------------
def cell_tests(pairs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: n pairs, mean accuracies, mean and Hodges-Lehmann sparse-minus-dense difference with its
    interval, the one-sided exact Wilcoxon p-value of "sparse > dense" over seeds, and its leave-one-out
    robustness: of the ``loo_total`` subsets that leave one seed out, ``loo_same`` fall on the same side of
    p = 0.05; ``fragile`` when some subset changes the side."""
    rows = []
    for key, g in pairs.groupby(by, sort=False):
        v = engine.paired_test(g["test_acc_sparse"], g["test_acc_dense"], "greater", 0.0, "wilcoxon")
        loo_p = [engine.paired_test(g["test_acc_sparse"].drop(i), g["test_acc_dense"].drop(i), "greater", 0.0,
                                    "wilcoxon").p_value for i in g.index] if len(g) > 1 else []
        below = [p < 0.05 for p in loo_p if np.isfinite(p)]
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "n": len(g),
                     "dense_acc": g["test_acc_dense"].mean(), "sparse_acc": g["test_acc_sparse"].mean(),
                     "mean_diff": g["acc_diff"].mean(), "std_diff": g["acc_diff"].std(),
                     "hl_diff": v.effect, "ci_low": v.ci_low, "ci_high": v.ci_high, "p_sparse_greater": v.p_value,
                     "loo_same": sum(b == (v.p_value < 0.05) for b in below), "loo_total": len(below),
                     "fragile": bool(below) and len(set(below) | {bool(v.p_value < 0.05)}) > 1})
    return pd.DataFrame(rows)


def pvalue_markdown(table: pd.DataFrame) -> str:
    """The paper's layout: optimizers as rows, regularizations as columns, the p-value in each cell
    (bold below 0.05) with the mean sparse-minus-dense accuracy in percentage points."""
    opts = _ordered(table["optimizer"], OPTIMIZERS)
    regs = _ordered(table["regularization"], tuple(REGULARIZATIONS))
    cell = table.set_index(["optimizer", "regularization"])
    lines = ["| optimizer | " + " | ".join(regs) + " |", "|---|" + "---|" * len(regs)]
    for o in opts:
        parts = []
        for r in regs:
            if (o, r) not in cell.index:
                parts.append("–")
                continue
            row = cell.loc[(o, r)]
            p = row["p_sparse_greater"]
            text = "n/a" if not np.isfinite(p) else f"{p:.3f}"
            text = f"**{text}**" if np.isfinite(p) and p < 0.05 else text
            text += "†" if bool(row.get("fragile", False)) else ""
            parts.append(f"{text} ({100 * row['mean_diff']:+.1f})")
        lines.append(f"| {o} | " + " | ".join(parts) + " |")
    if "fragile" in table and table["fragile"].any():
        lines += ["", "† fragile: leaving one seed out moves p to the other side of 0.05."]
    return "\n".join(lines) + "\n"


def correlation_table(runs: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Kendall τ of each measure with final test loss and accuracy, per network, with the engine's
    bootstrap interval over runs (level 1 - 2 alpha) and bootstrap p-value for τ != 0 in its sign."""
    rows = []
    for network in ("sparse", "dense"):
        sub = runs[runs["network"] == network]
        for measure in MEASURES:
            for target in TARGETS:
                tau = engine.kendall(sub[measure].to_numpy(float), sub[target].to_numpy(float)) if len(sub) > 1 \
                    else np.nan
                direction = "less" if np.isfinite(tau) and tau < 0 else "greater"
                v = engine.correlation_test(sub[measure], sub[target], direction, 0.0, n_boot=n_boot)
                rows.append({"network": network, "measure": measure, "target": target, "kendall_tau": v.effect,
                             "ci_low": v.ci_low, "ci_high": v.ci_high, "p_value": v.p_value, "n": v.n})
    return pd.DataFrame(rows)


def correlation_markdown(table: pd.DataFrame) -> str:
    """Measures as rows; test loss and test accuracy for sparse, then dense runs, as columns."""
    cols = [(n, t) for n in ("sparse", "dense") for t in TARGETS]
    lines = ["| measure | " + " | ".join(f"{n}: τ with {TARGETS[t]}" for n, t in cols) + " |",
             "|---|" + "---|" * len(cols)]
    idx = table.set_index(["network", "target", "measure"])
    for m in MEASURES:
        parts = []
        for n, t in cols:
            r = idx.loc[(n, t, m)]
            parts.append("n/a" if not np.isfinite(r["kendall_tau"]) else
                         f"{r['kendall_tau']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
        lines.append(f"| {MEASURE_NAMES[m]} | " + " | ".join(parts) + " |")
    n = table.groupby("network")["n"].max().to_dict()
    lines.append("")
    lines.append(f"Runs: {n.get('sparse', 0)} sparse, {n.get('dense', 0)} dense; intervals: percentile bootstrap "
                 f"over runs at {100 * (1 - 2 * engine.ALPHA):.0f}%.")
    return "\n".join(lines) + "\n"


# --- figures ---------------------------------------------------------------------------
def fig_activation(table: pd.DataFrame, path: Path) -> list[Path]:
    """Heat map of the mean sparse-minus-dense test accuracy (pp) per activation x optimizer."""
    acts = _ordered(table["activation"], ACTIVATIONS)
    opts = _ordered(table["optimizer"], OPTIMIZERS)
    grid = np.full((len(acts), len(opts)), np.nan)
    pv = np.full_like(grid, np.nan)
    for r in table.itertuples():
        grid[acts.index(r.activation), opts.index(r.optimizer)] = 100 * r.mean_diff
        pv[acts.index(r.activation), opts.index(r.optimizer)] = r.p_sparse_greater
    fig, ax = new_figure(figsize=(1.3 * len(opts) + 2.2, 0.55 * len(acts) + 1.6))
    lim = max(np.nanmax(np.abs(grid)), 0.1) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(acts)):
        for j in range(len(opts)):
            if np.isfinite(grid[i, j]):
                star = "*" if np.isfinite(pv[i, j]) and pv[i, j] < 0.05 else ""
                ax.text(j, i, f"{grid[i, j]:+.1f}{star}", ha="center", va="center", fontsize=8,
                        color="white" if abs(grid[i, j]) > 0.6 * lim else "black")
    ax.set_xticks(range(len(opts)), opts)
    ax.set_yticks(range(len(acts)), acts)
    ax.grid(False)
    ax.set_title("sparse − dense test accuracy (pp); * p < 0.05 (sparse > dense)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path)


def fig_egf(curves: pd.DataFrame, pairs_slice: pd.DataFrame, path: Path, measure: str = "egf2") -> list[Path]:
    """EGF during training per optimizer x regularization cell: mean over seeds with a ±1 std band,
    sparse-wide and dense-narrow networks, log scale."""
    opts = _ordered(pairs_slice["optimizer"], OPTIMIZERS)
    regs = _ordered(pairs_slice["regularization"], tuple(REGULARIZATIONS))
    keys = set(map(tuple, pairs_slice[CELL].to_numpy().tolist()))
    cur = curves[curves["measure"] == measure]
    cur = cur[[tuple(x) in keys for x in cur[CELL].to_numpy().tolist()]]
    fig, axes = new_figure(len(opts), len(regs), figsize=(1.9 * len(regs) + 0.6, 1.5 * len(opts) + 0.6),
                           squeeze=False, sharex=True, sharey="row")
    colors = {"sparse": "#d62728", "dense": "#222222"}
    stats_ = cur.groupby(["optimizer", "regularization", "network", "training_fraction"])["value"].agg(["mean", "std"])
    for i, o in enumerate(opts):
        for j, r in enumerate(regs):
            ax = axes[i][j]
            for net in ("dense", "sparse"):
                if (o, r, net) not in stats_.index.droplevel(3):
                    continue
                g = stats_.loc[(o, r, net)].reset_index()
                ax.plot(g["training_fraction"], g["mean"], color=colors[net], lw=1.2, label=f"{net}")
                std = g["std"].fillna(0.0)
                lo = (g["mean"] - std).clip(lower=g["mean"] * 0.05)
                ax.fill_between(g["training_fraction"], lo, g["mean"] + std, color=colors[net], alpha=0.15, lw=0)
            if (cur["value"] > 0).any():
                ax.set_yscale("log")
            ax.tick_params(which="both", labelsize=6)
            if i == 0:
                ax.set_title(r, fontsize=8)
            if j == 0:
                ax.set_ylabel(o, fontsize=8)
    axes[-1][0].set_xlabel("fraction of training", fontsize=7)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"{MEASURE_NAMES[measure]} during training (sparse-wide red, dense-narrow black)", fontsize=9)
    return save_figure(fig, path)


def fig_sweep(table: pd.DataFrame, path: Path) -> list[Path]:
    """Sparse-minus-dense test accuracy against dense width / sparse width, a line per depth."""
    fig, ax = new_figure(figsize=(4.8, 3.4))
    for depth, g in table.groupby("depth"):
        g = g.sort_values("fraction")
        ax.errorbar(g["fraction"], 100 * g["mean_diff"], yerr=100 * g["std_diff"].fillna(0), marker="o",
                    capsize=3, lw=1.2, label=f"{depth} hidden layer{'s' if depth != 1 else ''}")
    ax.axhline(0, color="#888888", lw=0.8)
    ax.set_xlabel("dense width / sparse width")
    ax.set_ylabel("sparse − dense test acc (pp)")
    ax.legend()
    return save_figure(fig, path)


# --- claims ----------------------------------------------------------------------------
PAPER = "Tessera et al. 2021"


class TesseraData(engine.ClaimData):
    """The claims engine's data of a runs directory, plus the number of bootstrap resamples to use."""

    def __init__(self, runs: str | Path, analysis: str | Path | None = None, n_boot: int = engine.N_BOOT) -> None:
        super().__init__(runs, analysis)
        self.n_boot = n_boot


def _pairs(data: engine.ClaimData) -> pd.DataFrame:
    return data.csv("tessera_pairs.csv")


def _bn_gain(data: engine.ClaimData) -> dict:
    """Gain in test accuracy from adding BatchNorm to a regularization (r -> bn+r), sparse and dense,
    matched by optimizer, activation, depth, fraction, r and seed."""
    p = _pairs(data)
    base = p[~p["regularization"].str.startswith("bn")].copy()
    base["with_bn"] = ["bn" if r == "none" else f"bn+{r}" for r in base["regularization"]]
    bn = p[p["regularization"].str.startswith("bn")]
    keys = ["optimizer", "activation", "depth", "fraction", "seed"]
    m = base.merge(bn, left_on=keys + ["with_bn"], right_on=keys + ["regularization"], suffixes=("", "_bn"))
    if m.empty:
        raise engine.NoData("no cell has both a regularization and BatchNorm with it")
    return {"a": m["test_acc_sparse_bn"] - m["test_acc_sparse"], "b": m["test_acc_dense_bn"] - m["test_acc_dense"],
            "name": "BN gain sparse − dense"}


def _bn_optimizer_pairs(data: engine.ClaimData, ewma: bool) -> pd.DataFrame:
    p = _pairs(data)
    p = p[p["regularization"].str.startswith("bn") & (p["optimizer"].isin(EWMA) == ewma)]
    if p.empty:
        raise engine.NoData(f"no BatchNorm cell with {'EWMA' if ewma else 'non-EWMA'} optimizers")
    return p


def _bn_non_ewma(data: engine.ClaimData) -> dict:
    p = _bn_optimizer_pairs(data, ewma=False)
    return {"a": p["test_acc_sparse"], "b": p["test_acc_dense"], "name": "sparse − dense acc"}


def _ewma_differs(data: engine.ClaimData) -> dict:
    """Sparse-minus-dense accuracy under BatchNorm, mean over non-EWMA optimizers against mean over
    EWMA ones, matched by regularization, activation, depth, fraction and seed."""
    keys = ["regularization", "activation", "depth", "fraction", "seed"]
    non = _bn_optimizer_pairs(data, ewma=False).groupby(keys)["acc_diff"].mean()
    ew = _bn_optimizer_pairs(data, ewma=True).groupby(keys)["acc_diff"].mean()
    both = pd.concat([non.rename("non"), ew.rename("ewma")], axis=1, join="inner")
    return {"a": both["non"], "b": both["ewma"], "name": "Δacc non-EWMA − EWMA"}


def best_activations(pairs: pd.DataFrame, base: dict) -> pd.DataFrame:
    """Mean sparse (and dense) test accuracy per activation over the activation x optimizer slice."""
    s = slice_of(pairs, base, ("activation", "optimizer"))
    t = s.groupby("activation").agg(sparse_acc=("test_acc_sparse", "mean"), dense_acc=("test_acc_dense", "mean"),
                                    mean_diff=("acc_diff", "mean"), n=("seed", "size"))
    return t.sort_values("sparse_acc", ascending=False).reset_index()


def _swish_prelu(data: engine.ClaimData) -> dict:
    """Sparse test accuracy of the better of Swish/PReLU against the best other activation (each picked
    by its mean), paired by optimizer and seed over the activation x optimizer slice."""
    p = _pairs(data)
    s = slice_of(p, base_cell(p), ("activation", "optimizer"))
    per_opt = s.groupby("optimizer")["activation"].nunique()
    s = s[s["optimizer"].isin(per_opt[per_opt > 1].index)]  # optimizers trained with one activation only say nothing
    means = s.groupby("activation")["test_acc_sparse"].mean()
    ours, others = means[means.index.isin(("swish", "prelu"))], means[~means.index.isin(("swish", "prelu"))]
    if ours.empty or others.empty:
        raise engine.NoData("the activation slice lacks Swish/PReLU or any other activation")
    wide = s.pivot_table(index=["optimizer", "seed"], columns="activation", values="test_acc_sparse")
    wide = wide[[ours.idxmax(), others.idxmax()]].dropna()
    return {"a": wide[ours.idxmax()], "b": wide[others.idxmax()],
            "name": f"{ours.idxmax()} − {others.idxmax()} sparse acc"}


def _egf_vs_norm(p: int):
    def samples(data: engine.ClaimData) -> dict:
        runs = data.csv("tessera_runs.csv")
        s = runs[runs["network"] == "sparse"]
        egf, norm = s[f"egf{p}"].to_numpy(float), s["grad_norm" if p == 2 else "grad_norm_l1"].to_numpy(float)
        acc = s["test_acc"].to_numpy(float)
        # strength, not sign: both measures oriented so that EGF's correlation is positive
        sign = -1.0 if engine.kendall(egf, acc) < 0 else 1.0
        return {"x1": sign * egf, "x2": sign * norm, "y": acc, "name": f"τ(EGF{p}) − τ(‖g‖{p})",
                "n_boot": getattr(data, "n_boot", engine.N_BOOT)}
    return samples


CLAIMS = (
    engine.Claim("T1", PAPER, "BatchNorm helps sparse networks more than dense ones.",
                 "gain in final test accuracy from adding BatchNorm (r → bn+r)", "tessera_pairs.csv",
                 "sparse gain − dense gain, paired by optimizer, regularization and seed", "wilcoxon", "greater", 0.0,
                 "tessera_pvalues.md", _bn_gain, "accuracy"),
    engine.Claim("T2a", PAPER, "With non-EWMA optimizers (SGD, momentum, Adagrad) and BatchNorm, sparse networks "
                 "beat dense ones of the same capacity.", "final test accuracy", "tessera_pairs.csv",
                 "sparse − dense, paired by cell and seed (BatchNorm cells, SGD/momentum/Adagrad)", "wilcoxon",
                 "greater", 0.0, "tessera_pvalues.md", _bn_non_ewma, "accuracy"),
    engine.Claim("T2b", PAPER, "With EWMA optimizers (Adam, RMSProp) the picture differs: the sparse advantage "
                 "under BatchNorm is smaller than with non-EWMA optimizers.", "sparse − dense final test accuracy",
                 "tessera_pairs.csv", "mean over non-EWMA − mean over EWMA optimizers, paired by regularization "
                 "and seed (BatchNorm cells)", "wilcoxon", "greater", 0.0, "tessera_pvalues.md", _ewma_differs,
                 "accuracy"),
    engine.Claim("T3", PAPER, "Swish and PReLU are the best activations for sparse networks.",
                 "final test accuracy of the sparse-wide networks", "tessera_pairs.csv",
                 "better of Swish/PReLU − best other activation (each by its mean), paired by optimizer and seed",
                 "wilcoxon", "greater", 0.0, "fig_tessera_activation.png", _swish_prelu, "accuracy"),
    engine.Claim("T4a", PAPER, "EGF₂ correlates with sparse networks' test accuracy better than ‖g‖₂.",
                 "Kendall τ with final test accuracy, measures averaged over 11 points of training",
                 "tessera_runs.csv", "τ(EGF₂) − τ(‖g‖₂) over sparse runs, oriented so τ(EGF₂) ≥ 0",
                 "correlation_difference", "greater", 0.0, "tessera_correlations.md", _egf_vs_norm(2)),
    engine.Claim("T4b", PAPER, "EGF₁ correlates with sparse networks' test accuracy better than ‖g‖₁.",
                 "Kendall τ with final test accuracy, measures averaged over 11 points of training",
                 "tessera_runs.csv", "τ(EGF₁) − τ(‖g‖₁) over sparse runs, oriented so τ(EGF₁) ≥ 0",
                 "correlation_difference", "greater", 0.0, "tessera_correlations.md", _egf_vs_norm(1)),
)


# --- report ----------------------------------------------------------------------------
def report(shown: str, runs: pd.DataFrame, pairs: pd.DataFrame, base: dict, verdicts: pd.DataFrame,
           pvalues: pd.DataFrame, acts: pd.DataFrame, best: pd.DataFrame, sweep: pd.DataFrame, corr: pd.DataFrame,
           figures: list[Path]) -> str:
    """REPORT.md: design covered, the claims with their tests and verdicts, the tables and figures."""
    cells = pairs[CELL].drop_duplicates()
    seeds = pairs.groupby(CELL)["seed"].nunique()
    off = int((runs["n_off_grid"] > 0).sum())
    lines = ["# Report: Tessera et al., same-capacity sparse vs dense (SC-SDC)", "",
             f"Generated by `python -m figures.tessera {shown}` on {time.strftime('%Y-%m-%d %H:%M')} from "
             f"{len(runs)} runs: {len(pairs)} dense-narrow / sparse-wide pairs in {len(cells)} cells, "
             f"{seeds.min()}{'' if seeds.min() == seeds.max() else f'–{seeds.max()}'} seed(s) per cell. Base cell: {base}. Gradient measures are averaged "
             f"over {POINTS} evenly spaced points of training "
             + ("(each logged exactly)." if off == 0 else
                f"(the nearest logged rows; in {off} runs some lay off their point: log with --log-points 10)."),
             "", "## Claims", "",
             "Judged by the claims engine (`figures/claims.py`): held needs p < 0.05 and the "
             f"{100 * (1 - 2 * engine.ALPHA):.0f}% interval on the claimed side; not held needs the interval on "
             "the other side; anything else is inconclusive. Robustness: how many leave-one-out subsets (of "
             "seeds, else runs) keep the verdict (*fragile* when one changes a held or not-held verdict), and for "
             "an inconclusive verdict the seeds that would decide it with 80% probability.", "",
             "| id | claim | test | key number | p | verdict | robustness | figure |",
             "|---|---|---|---|---|---|---|---|"]
    for r in verdicts.itertuples():
        p = "" if not np.isfinite(r.p_value) else f"{r.p_value:.3g}"
        lines.append(f"| {r.claim} | {r.statement} ({r.comparison}) | {r.test} | {r.key} | {p} | **{r.verdict}** "
                     f"| {getattr(r, 'robustness', '')} | [{r.figure}]({r.figure}) |")
    lines += ["", "## One-sided p-values of sparse > dense per optimizer × regularization", "",
              f"Wilcoxon signed-rank over seeds (exact); in brackets the mean sparse − dense test accuracy in "
              f"percentage points. Activation {base['activation']}, {base['depth']} hidden layer(s), dense width "
              f"{base['fraction']:g} × the sparse width.", "", pvalue_markdown(pvalues) if len(pvalues) else "(none)",
              "## Sparse − dense test accuracy per activation × optimizer", "",
              "![activation](fig_tessera_activation.png)", "", "Mean accuracy per activation over optimizers "
              "and seeds (sparse-wide networks ranked):", "", markdown(best.round(4)),
              "## Depth and capacity", "", markdown(sweep[["depth", "fraction", "n", "dense_acc", "sparse_acc",
                                                              "mean_diff", "p_sparse_greater"]].round(4))
              if len(sweep) else "(none)", "",
              "## Gradient measures against test performance (Kendall τ)", "", correlation_markdown(corr),
              "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


# --- training length ---------------------------------------------------------------------
def length_dir(epochs: float) -> str:
    """The subdirectory of one training length's study: ``epochs-32``."""
    return f"epochs-{epochs:g}"


def other_lr_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Cell tests of every cell (at one length) trained at more than one learning rate, a row per rate, by
    optimizer, regularization, epochs and lr: how the rate changes sparse − dense."""
    keys = ["optimizer", "regularization", "activation", "depth", "fraction", "epochs"]
    both = pairs[pairs.groupby(keys)["lr"].transform("nunique") > 1]
    return cell_tests(both.sort_values(["optimizer", "regularization", "epochs", "lr"]),
                      ["optimizer", "regularization", "epochs", "lr"])


def claims_matrix(by_length: dict) -> pd.DataFrame:
    """Claims as rows, lengths as columns, the verdict in each cell (``held†`` when fragile)."""
    cols = {}
    for epochs, frame in by_length.items():
        cols[epochs] = {r.claim: f"{r.verdict}{'†' if r.fragile else ''}" for r in frame.itertuples()}
    return pd.DataFrame(cols)


def length_claims(by_length: dict) -> pd.DataFrame:
    """Tidy ``claims_by_length.csv``: one row per claim and length with the test's numbers and robustness."""
    frames = []
    for epochs, frame in by_length.items():
        f = frame.copy()
        f.insert(1, "epochs", epochs)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def length_markdown(table: pd.DataFrame) -> str:
    """One-sided p-values of sparse > dense per optimizer x regularization (rows) and length (columns), the
    mean sparse − dense accuracy in brackets, † on fragile cells."""
    lengths = sorted(table["epochs"].unique())
    lines = ["| optimizer | regularization | " + " | ".join(f"{e:g} epochs" for e in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    idx = table.set_index(["optimizer", "regularization", "epochs"])
    for o in _ordered(table["optimizer"], OPTIMIZERS):
        for r in _ordered(table.loc[table["optimizer"] == o, "regularization"], tuple(REGULARIZATIONS)):
            parts = []
            for e in lengths:
                if (o, r, e) not in idx.index:
                    parts.append("–")
                    continue
                row = idx.loc[(o, r, e)]
                p = row["p_sparse_greater"]
                text = "n/a" if not np.isfinite(p) else (f"**{p:.3f}**" if p < 0.05 else f"{p:.3f}")
                parts.append(f"{text}{'†' if row['fragile'] else ''} ({100 * row['mean_diff']:+.1f})")
            lines.append(f"| {o} | {r} | " + " | ".join(parts) + " |")
    lines += ["", "In brackets the mean sparse − dense test accuracy (pp); bold: p < 0.05; † fragile: leaving one "
              "seed out moves p to the other side of 0.05."]
    return "\n".join(lines) + "\n"


def _log2_epochs(ax, epochs: pd.Series) -> None:
    """A log2 epochs axis ticked at the lengths trained, with a margin (set, not autoscaled: NaN-proof)."""
    ticks = sorted(float(e) for e in epochs.unique())
    ax.set_xscale("log", base=2)
    ax.set_xlim(ticks[0] / 1.3, ticks[-1] * 1.3)
    ax.set_xticks(ticks, [f"{e:g}" for e in ticks])
    ax.minorticks_off()


def _interval_line(ax, x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray, label: str) -> None:
    """A line of points with their intervals [lo, hi] as error bars (a missing interval draws none)."""
    err = np.vstack([y - lo, hi - y])
    ax.errorbar(x, y, yerr=np.nan_to_num(np.clip(err, 0, None)), marker="o", capsize=3, lw=1.2, label=label)


def fig_length(table: pd.DataFrame, path: Path) -> list[Path]:
    """Sparse − dense test accuracy (Hodges-Lehmann, with its Wilcoxon interval over seeds) against training
    length, a line per optimizer, a panel per regularization."""
    regs = _ordered(table["regularization"], tuple(REGULARIZATIONS))
    fig, axes = new_figure(1, len(regs), figsize=(4.2 * len(regs), 3.4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], regs):
        sub = table[table["regularization"] == r]
        opts = _ordered(sub["optimizer"], OPTIMIZERS)
        for k, o in enumerate(opts):
            g = sub[sub["optimizer"] == o].sort_values("epochs")
            x = g["epochs"].to_numpy(float) * (1 + 0.04 * (k - (len(opts) - 1) / 2))  # dodge the intervals
            hl = g["hl_diff"].to_numpy(float)  # too few seeds for the test: the mean, without an interval
            y = np.where(np.isfinite(hl), hl, g["mean_diff"].to_numpy(float))
            _interval_line(ax, x, 100 * y, 100 * g["ci_low"].to_numpy(float), 100 * g["ci_high"].to_numpy(float), o)
        ax.axhline(0, color="#888888", lw=0.8)
        _log2_epochs(ax, sub["epochs"])
        ax.set_xlabel("epochs")
        ax.set_title("no regularization" if r == "none" else r)
    axes[0][0].set_ylabel("sparse − dense test acc (pp)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Sparse-wide − dense-narrow by training length (Hodges-Lehmann, {100 * (1 - 2 * engine.ALPHA):.0f}% "
                 "interval over seeds)", fontsize=9)
    return save_figure(fig, path)


def tau_table(claims: pd.DataFrame) -> pd.DataFrame:
    """τ(EGF_p) − τ(‖g‖_p) with its bootstrap interval per length, from claims T4a (p = 2) and T4b (p = 1)."""
    t = claims[claims["claim"].isin(["T4a", "T4b"])].copy()
    t["p"] = np.where(t["claim"] == "T4a", 2, 1)
    return t[["p", "epochs", "effect", "ci_low", "ci_high", "p_value", "n", "verdict"]].rename(
        columns={"effect": "tau_diff", "n": "runs"}).sort_values(["p", "epochs"]).reset_index(drop=True)


def fig_length_tau(table: pd.DataFrame, path: Path) -> list[Path]:
    """τ(EGF_p) − τ(‖g‖_p) (Kendall τ with final test accuracy over sparse runs) against training length."""
    fig, ax = new_figure(figsize=(4.8, 3.4))
    for k, (p, g) in enumerate(table.groupby("p")):
        g = g.sort_values("epochs")
        x = g["epochs"].to_numpy(float) * (1 + 0.04 * (k - 0.5))
        _interval_line(ax, x, g["tau_diff"].to_numpy(float), g["ci_low"].to_numpy(float),
                       g["ci_high"].to_numpy(float), f"p = {p}")
    ax.axhline(0, color="#888888", lw=0.8)
    _log2_epochs(ax, table["epochs"])
    ax.set_xlabel("epochs")
    ax.set_ylabel("τ(EGF_p) − τ(‖g‖_p)")
    ax.set_title("EGF vs gradient norm as a predictor of sparse test accuracy", fontsize=9)
    ax.legend()
    return save_figure(fig, path)


def write_length_study(out: Path, shown: str, runs: pd.DataFrame, pairs: pd.DataFrame, by_length: dict,
                       studied: pd.Series) -> pd.DataFrame:
    """The length axis: tables, figures, ``claims_by_length.csv`` and REPORT.md over the per-length studies
    (``by_length``: each length's verdicts; ``studied``: the pairs at the learning rate the claims are judged
    at); returns the claims x lengths matrix."""
    main_pairs = pairs[studied]
    base = base_cell(main_pairs)
    table = cell_tests(slice_of(main_pairs, base, ("optimizer", "regularization")),
                       ["optimizer", "regularization", "epochs"])
    claims = length_claims(by_length)
    taus = tau_table(claims)
    other = other_lr_table(pairs) if (~studied).any() else pd.DataFrame()
    files = {"tessera_runs.csv": runs.drop(columns="pair_key"), "tessera_pairs.csv": pairs.drop(columns="pair_key"),
             "tessera_length.csv": table, "tessera_length_tau.csv": taus, "claims_by_length.csv": claims}
    if len(other):
        files["tessera_other_lr.csv"] = other
    for name, frame in files.items():
        atomic_write_csv(out / name, frame)
    fig_length(table, out / "fig_tessera_length.png")
    fig_length_tau(taus, out / "fig_tessera_length_tau.png")
    matrix = claims_matrix(by_length)
    statements = {c.id: c.statement for c in CLAIMS}
    seeds = main_pairs.groupby([*CELL, "epochs"])["seed"].nunique()
    lines = ["# Report: Tessera et al.'s SC-SDC claims against training length", "",
             f"Generated by `python -m figures.tessera {shown}` on {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} "
             f"runs: {len(pairs)} dense-narrow / sparse-wide pairs, lengths "
             f"{', '.join(f'{e:g}' for e in by_length)} epochs, {seeds.min()}"
             f"{'' if seeds.min() == seeds.max() else f'–{seeds.max()}'} seeds per cell. Each length's full study "
             "(tables, figures, claims with their tests) is in its own directory: "
             + ", ".join(f"[{length_dir(e)}]({length_dir(e)}/REPORT.md)" for e in by_length) + ".", "",
             "## Claims × lengths", "",
             "Judged at each length by the claims engine on that length's pairs (each optimizer at its default "
             "learning rate); † fragile: leaving one seed out changes a held or not-held verdict. A claim with no "
             "data at a length (e.g. T3 where only ReLU was trained) is inconclusive there.", "",
             "| claim | statement | " + " | ".join(f"{e:g} epochs" for e in matrix.columns) + " |",
             "|---|---|" + "---|" * len(matrix.columns)]
    keys = claims.set_index(["claim", "epochs"])["key"]
    for claim, row in matrix.iterrows():
        cells = [f"**{v}**<br>{keys.get((claim, e), '')}" for e, v in row.items()]
        lines.append(f"| {claim} | {statements.get(claim, '')} | " + " | ".join(cells) + " |")
    lines += ["", "## Sparse − dense by length", "",
              f"Activation {base['activation']}, {base['depth']} hidden layers, dense width {base['fraction']:g} × the "
              "sparse width. One-sided exact Wilcoxon p-values of sparse > dense over seeds:", "",
              length_markdown(table), "![length](fig_tessera_length.png)", "",
              "## EGF against the gradient norm by length", "",
              "Kendall τ of each measure (averaged over 11 points of training) with final test accuracy over the "
              "sparse-wide runs of a length; the difference τ(EGF_p) − τ(‖g‖_p) with its bootstrap interval:", "",
              markdown(taus.round(4)), "![tau](fig_tessera_length_tau.png)", ""]
    if len(other):
        lines += ["## Other learning rates", "",
                  "The paper trains at learning rates 0.001 and 0.1; here the optimizers' defaults everywhere, and "
                  "the other rate for the optimizers and lengths below (not part of the claims):", "",
                  markdown(other[["optimizer", "regularization", "epochs", "lr", "n", "dense_acc", "sparse_acc",
                                  "mean_diff", "p_sparse_greater", "fragile"]].round(4)), ""]
    atomic_write_text(out / "REPORT.md", "\n".join(lines) + "\n")
    return matrix


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m figures.tessera", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="runs directory (e.g. from the tessera-fmnist or scsdc preset)")
    p.add_argument("--out", default=None, help="output directory (default: <runs>/_figures/tessera)")
    p.add_argument("--n-boot", type=int, default=engine.N_BOOT,
                   help="bootstrap resamples of the correlations and of claims T4a/T4b")
    p.add_argument("--lr", type=_lr_choice, default="default",
                   help="the learning rate the claims are judged at: 'default' (each optimizer at its own default; "
                        "the presets' choice) or a number (every optimizer at that rate, e.g. 0.001 for tessera-paper); "
                        "pairs at other rates go to tessera_other_lr.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _lr_choice(text: str):
    if text == "default":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'default' or a positive number, not '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a learning rate must be positive, not {text}")
    return value


def write_study(root: Path, runs: pd.DataFrame, curves: pd.DataFrame, pairs: pd.DataFrame, out: Path,
                n_boot: int, shown: str) -> pd.DataFrame:
    """Every table, figure, ``claims.csv`` and ``REPORT.md`` of one study (one training length) of ``pairs``
    (``runs`` and ``curves`` are narrowed to their runs) into ``out``; returns the verdicts."""
    keep = set(pairs["run_id_dense"]) | set(pairs["run_id_sparse"])
    runs, curves = runs[runs["run_id"].isin(keep)], curves[curves["run_id"].isin(keep)]
    out.mkdir(parents=True, exist_ok=True)
    base = base_cell(pairs)
    pvalues = cell_tests(slice_of(pairs, base, ("optimizer", "regularization")), ["optimizer", "regularization"])
    acts = cell_tests(slice_of(pairs, base, ("activation", "optimizer")), ["activation", "optimizer"])
    sweep = cell_tests(slice_of(pairs, base, ("depth", "fraction")), ["depth", "fraction"])
    corr = correlation_table(runs, n_boot)
    tables = {"tessera_runs.csv": runs.drop(columns="pair_key"), "tessera_curves.csv": curves,
              "tessera_pairs.csv": pairs.drop(columns="pair_key"), "tessera_pvalues.csv": pvalues,
              "tessera_activation.csv": acts, "tessera_sweep.csv": sweep, "tessera_correlations.csv": corr}
    for name, frame in tables.items():
        atomic_write_csv(out / name, frame)
    atomic_write_text(out / "tessera_pvalues.md", pvalue_markdown(pvalues) if len(pvalues) else "(none)\n")
    atomic_write_text(out / "tessera_correlations.md", correlation_markdown(corr))
    figures = fig_activation(acts, out / "fig_tessera_activation.png")
    figures += fig_egf(curves, slice_of(pairs, base, ("optimizer", "regularization")), out / "fig_tessera_egf.png")
    figures += fig_sweep(sweep, out / "fig_tessera_sweep.png")
    data = TesseraData(root, analysis=out, n_boot=n_boot)
    judged = engine.evaluate_all(CLAIMS, data)
    verdicts = engine.verdict_frame(CLAIMS, judged, setting=shown)
    verdicts["robustness"] = [engine.robustness_text(v) for v in judged]
    atomic_write_csv(out / "claims.csv", verdicts)
    best = best_activations(pairs, base)
    atomic_write_text(out / "REPORT.md", report(shown, runs, pairs, base, verdicts, pvalues, acts, best, sweep,
                                                corr, figures))
    return verdicts


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_boot < 100:
        raise UserError("--n-boot must be at least 100.")
    root = Path(args.runs)
    runs, curves = load_runs(root, quiet=args.quiet)
    pairs = pair_table(runs)
    paired = set(pairs["run_id_dense"]) | set(pairs["run_id_sparse"])  # a run without its partner stays out
    runs, curves = runs[runs["run_id"].isin(paired)], curves[curves["run_id"].isin(paired)]
    studied = pairs["lr_default"] if args.lr == "default" else pd.Series(np.isclose(pairs["lr"], args.lr), pairs.index)
    main_pairs = pairs[studied]  # the claims: each optimizer at its default learning rate, or all at --lr
    other_lr = pairs[~studied]
    if main_pairs.empty:
        rates = ", ".join(f"{v:g}" for v in sorted(pairs["lr"].unique()))
        wanted = "the optimizers' default learning rates" if args.lr == "default" else f"learning rate {args.lr:g}"
        raise UserError(f"{root} holds no pairs at {wanted}; its pairs were trained at {rates} (choose one with --lr).")
    out = Path(args.out) if args.out else root / "_figures" / "tessera"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out} ({exc.strerror or exc}).") from None
    shown = shown_path(root)
    lengths = sorted(main_pairs["epochs"].unique())
    if len(lengths) == 1:
        verdicts = write_study(root, runs, curves, main_pairs, out, args.n_boot, shown)
        written = "7 CSV tables, 2 Markdown tables, 3 figures, claims.csv and REPORT.md"
        if len(other_lr):
            atomic_write_csv(out / "tessera_other_lr.csv", other_lr_table(pairs))
            written += ", tessera_other_lr.csv"
        print(f"wrote {written} to {out}")
        for r in verdicts.itertuples():
            print(f"  {r.claim}: {r.verdict:<12} {r.key}")
        return 0
    by_length = {}
    for epochs in tqdm(lengths, desc="lengths", unit="length", disable=args.quiet, file=sys.stderr):
        by_length[epochs] = write_study(root, runs, curves, main_pairs[main_pairs["epochs"] == epochs],
                                        out / length_dir(epochs), args.n_boot, shown)
    matrix = write_length_study(out, shown, runs, pairs, by_length, studied)
    print(f"wrote a study per length ({', '.join(length_dir(e) for e in lengths)}), the length tables and figures, "
          f"claims_by_length.csv and REPORT.md to {out}")
    for claim, row in matrix.iterrows():
        print(f"  {claim}: " + "  ".join(f"{e:g} ep {v}" for e, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
