"""Command line: the papers' figures and tables, and REPORT.md, from a runs directory.

    python -m figures.paper runs/ [more runs directories: one column of the claims matrix each]

Reads what the analysis CLIs wrote to ``<runs>/_analysis`` and runs any analysis that is missing
(``--force`` reruns them all). Writes to ``<runs>/_figures`` as PNG and PDF:

- ``fig3_signal``: output std at initialization against sparsity per init (Evci et al. Fig. 3);
- ``fig4_gradient_norm``: gradient norm and EGF during training per method (Fig. 4);
- ``fig6_mds``: the MDS map of starts, ends and pruning solutions (Fig. 6);
- ``fig7_interpolation``: loss along the paths to the pruning solution (Fig. 7);
- ``fig_hessian_rigl``: extreme Hessian eigenvalues before and after RigL mask updates;
- ``table1_ensemble.md/.csv``: ensembles and disagreement (Table 1);
- ``table1_vs_paper.md/.csv``: the rows Table 1 shares with the paper, beside its ResNet-50/ImageNet numbers;
- ``table_egf_correlation.md/.csv``: Tessera et al.'s comparison of gradient measures;
- ``REPORT.md``: the claims × settings matrix (each cell a verdict with its key number), how each claim is
  tested, and per setting each claim's statistic, interval, p-value and figure, with the tables and figures;
- ``claims.csv``: one row per claim and setting (verdict, statistic, effect, interval, n, test, p-value,
  margin and why, leave-one-out fragility, seeds needed, and the verdict without the runs that did not
  train); ``claims_matrix.csv``: the matrix.

Runs that did not train (final training accuracy within 5 points of chance: ``analysis.runs``) are
listed per setting; every claim is judged on all runs, and again without them (and their partners).
Claim 6's Lanczos residuals and its check at 4x the examples get a section of their own.

Claims are data (:mod:`figures.claims`, rows in :mod:`figures.evci_claims`). With several runs directories
each is a setting (named by its preset, else its directory): its analyses stay in ``<runs>/_analysis``,
its figures go to ``<runs>/_figures`` (or ``<out>/<setting>/`` with ``--out``), and ``REPORT.md``,
``claims.csv`` and ``claims_matrix.csv`` cover all settings in ``--out`` (default ``<first runs>/_figures``).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis.plotting import method_color, new_figure, order_methods, save_figure
from analysis.runs import select_runs
from figures.claims import (
    Claim,
    ClaimData,
    Verdict,
    count_test,
    evaluate_all,
    fmt,
    robustness_text,
    verdict_frame,
)
from figures.evci_claims import BEYOND_CLAIMS, EVCI_CLAIMS
from sparse_training.errors import UserError, cli_entry
from sparse_training.io import atomic_write_bytes, atomic_write_csv, atomic_write_text

from . import beyond
from .steps import Step

FORMATS = ("png", "pdf")
CLAIMS: tuple[Claim, ...] = EVCI_CLAIMS + BEYOND_CLAIMS
TEST_NAMES = {"wilcoxon": "Wilcoxon signed-rank, paired, one-sided", "sign": "sign test, paired, one-sided",
              "mannwhitney": "Mann-Whitney U, one-sided", "correlation": "Kendall τ, bootstrap over runs",
              "correlation_difference": "difference of Kendall τ, bootstrap over runs",
              "bootstrap": "bootstrap over runs", "binomial": "exact binomial sign test, one-sided"}
FAMILY = ("lottery", "scratch", "scratch+", "rigl", "rigl+")


# --- running the analyses ------------------------------------------------------------
def _gradflow_current(analysis_dir: Path) -> bool:
    """gradflow_runs.csv from before the 'spaced' aggregation (Tessera et al.'s 11 points) is stale."""
    try:
        head = pd.read_csv(analysis_dir / "gradflow_runs.csv", usecols=["aggregation"])
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return False
    return "spaced" in set(head["aggregation"])


HESSIAN_METHODS = ("rigl", "rigl+", "set")
HESSIAN_CHECK_DIR = "hessian_check"  # claim 6's subset at 4x the examples, under _analysis/
HESSIAN_CHECK_FACTOR = 4


def hessian_plan(runs: Path, updates: int) -> tuple[list, list[int]]:
    """The mask updates claim 6 is judged on: every seed's RigL/RigL+ (SET) runs with update checkpoints and,
    in each, ``ceil(updates / runs)`` updates evenly spaced from the first, so at least ``updates`` in all.

    Returns (runs, steps); the runs of a preset share their update schedule, so one step list serves all."""
    chosen = [r for r in select_runs(runs, method=list(HESSIAN_METHODS), warn=False) if r.update_steps()]
    if not chosen:
        raise UserError("no RigL run with mask-update checkpoints to take Hessian eigenvalues of.")
    chosen.sort(key=lambda r: (r.seed, r.method))
    steps = sorted(set.intersection(*(set(r.update_steps()) for r in chosen)))
    if not steps:
        raise UserError("the RigL runs share no mask-update step to take Hessian eigenvalues at.")
    per_run = min(len(steps), max(1, math.ceil(updates / len(chosen))))
    return chosen, steps[:: max(1, len(steps) // per_run)][:per_run]


def _which(steps: list[int]) -> str:
    return ",".join(f"{s}:pre,{s}:post" for s in steps)


def _run_regex(chosen: list) -> str:
    return "^(" + "|".join(re.escape(r.run_id) for r in chosen) + ")$"


def _hessian_argv(runs: Path, out: Path, args: argparse.Namespace) -> list[str]:
    # The costliest analysis: the smallest and largest eigenvalue around at least --hessian-updates mask
    # updates over all seeds' RigL and RigL+ runs, on --hessian-examples training examples (claim 6).
    chosen, steps = hessian_plan(runs, args.hessian_updates)
    return [str(runs), "--out", str(out), "--run", _run_regex(chosen), "--which", _which(steps), "--k", "1",
            "--examples", str(args.hessian_examples), "--quiet"]


def _hessian_check_argv(runs: Path, out: Path, args: argparse.Namespace) -> list[str] | None:
    # Claim 6's check: the first chosen update of the first --hessian-check-updates runs (by seed) again,
    # on 4x the examples; skipped (None) when the training set is smaller than that.
    if args.hessian_check_updates < 1:
        return None
    chosen, steps = hessian_plan(runs, args.hessian_updates)
    examples = HESSIAN_CHECK_FACTOR * args.hessian_examples
    if len(chosen[0].dataset(args.data_dir).x_train) < examples:
        return None
    subset = chosen[: args.hessian_check_updates]
    return [str(runs), "--out", str(out / HESSIAN_CHECK_DIR), "--run", _run_regex(subset), "--which",
            _which(steps[:1]), "--k", "1", "--examples", str(examples), "--quiet"]


STEPS = (
    # 10 networks per init and sparsity: with 5, leaving one out leaves a paired rank test unable to decide
    Step("signal", ("signal.csv",), lambda r, o, a: ["--model", a.model, "--sparsities", "0.5,0.8,0.9,0.95,0.98",
                                                     "--repeats", "10", "--out", str(o), "--quiet"]),
    Step("gradflow", ("gradflow_curves.csv", "gradflow_runs.csv", "gradflow_correlations.csv", "gradflow_claims.csv"),
         lambda r, o, a: [str(r), "--out", str(o), "--quiet"], _gradflow_current),
    Step("distances", ("distance_to_pruning.csv",), lambda r, o, a: [str(r), "--out", str(o), "--quiet"]),
    Step("mds", ("mds.csv",), lambda r, o, a: [str(r), "--out", str(o), "--quiet"]),
    Step("interpolate", ("interpolation.csv", "interpolation_summary.csv"),
         lambda r, o, a: [str(r), "--out", str(o), "--examples", str(a.interp_examples), "--quiet"]),
    Step("ensemble", ("ensemble.csv", "ensemble_runs.csv", "ensemble_bootstrap.csv"),
         lambda r, o, a: [str(r), "--out", str(o), "--quiet"]),
    Step("align", ("align.csv", "align_curves.csv"),
         lambda r, o, a: [str(r), "--out", str(o), "--examples", str(a.interp_examples), "--quiet"]),
    Step("hessian", ("hessian_updates.csv", "hessian.csv"), _hessian_argv),
    Step("hessian", (f"{HESSIAN_CHECK_DIR}/hessian_updates.csv", f"{HESSIAN_CHECK_DIR}/hessian.csv"),
         _hessian_check_argv),
)


# longest first (measured on evci-lenet5): a pool of workers then ends its queue at about the same time
COST_ORDER = ("hessian", "align", "interpolate", "stability", "ensemble", "curve", "plane", "signal", "mds",
              "distances", "gradflow")


def _analysis_job(name: str, argv: list[str], threads: int) -> tuple[int, float]:
    """One analysis CLI in a worker process with ``threads`` torch threads: (exit code, seconds)."""
    import importlib

    import torch

    torch.set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    try:
        code = importlib.import_module(f"analysis.{name}").main(argv)
    except SystemExit as exc:  # a CLI's UserError: its sentence is already on stderr
        code = exc.code if isinstance(exc.code, int) else 1
    return int(code or 0), time.perf_counter() - t0


def run_missing_analyses(runs: Path, analysis_dir: Path, args: argparse.Namespace,
                         steps: tuple[Step, ...] = STEPS, jobs: int = 1) -> list[str]:
    """Run every analysis of ``steps`` whose outputs are missing (all with ``--force``); returns the ones run.

    With ``jobs`` above 1 they run in that many worker processes at once, longest first, each with an
    equal share of the CPU cores as torch threads (most analyses are many small operations, which a
    second thread barely speeds up: two processes finish about twice as much work).
    """
    import importlib

    if jobs < 1:
        raise UserError("--jobs must be at least 1.")
    # outputs older than the newest finished run are stale
    newest = max((p.stat().st_mtime for p in runs.glob("*/status.json")), default=0.0)
    todo = []
    for step in steps:
        outputs = [analysis_dir / f for f in step.outputs]
        fresh = all(p.is_file() and p.stat().st_mtime >= newest for p in outputs) and step.current(analysis_dir)
        if fresh and not args.force:
            continue
        argv = step.argv(runs, analysis_dir, args)
        if argv is None:
            continue
        if args.data_dir and step.name in ("signal", "interpolate", "ensemble", "hessian", "plane", "curve", "stability",
                                           "align"):
            argv += ["--data-dir", args.data_dir]
        todo.append((step.name, argv, step.outputs[0]))
    if jobs > 1 and len(todo) > 1:
        return _run_in_pool(todo, min(jobs, len(todo)))
    ran = []
    for name, argv, _ in todo:
        module = importlib.import_module(f"analysis.{name}")
        t0 = time.perf_counter()
        print(f"[figures.paper] running analysis.{name} ...", flush=True)
        code = module.main(argv)
        if code:
            raise UserError(f"analysis.{name} failed (exit code {code}).")
        print(f"[figures.paper] analysis.{name} done in {time.perf_counter() - t0:.0f} s", flush=True)
        ran.append(name)
    return ran


def _run_in_pool(todo: list[tuple[str, list[str], str]], jobs: int) -> list[str]:
    """The analyses of ``todo`` (name, argv, first output) in ``jobs`` spawned worker processes. Failures
    are raised together, as one UserError, once every analysis has ended (the others' outputs are kept)."""
    import multiprocessing
    import os
    from collections import Counter
    from concurrent.futures import ProcessPoolExecutor, as_completed

    rank = {name: i for i, name in enumerate(COST_ORDER)}
    todo = sorted(todo, key=lambda t: rank.get(t[0], len(rank)))
    twice = {name for name, n in Counter(t[0] for t in todo).items() if n > 1}
    label = {i: f"analysis.{name}" + (f" ({first})" if name in twice else "") for i, (name, _, first) in enumerate(todo)}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"[figures.paper] running {len(todo)} analyses, {jobs} at a time ({threads} torch thread(s) each), "
          f"longest first", flush=True)
    ran, failures = [], []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_analysis_job, name, argv, threads): i for i, (name, argv, _) in enumerate(todo)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                code, seconds = future.result()
            except Exception as exc:  # a crash in the worker: name it, let the others finish
                failures.append(f"{label[i]} crashed ({type(exc).__name__}: {exc})")
                continue
            if code:
                failures.append(f"{label[i]} failed (exit code {code})")
                continue
            print(f"[figures.paper] {label[i]} done in {seconds:.0f} s", flush=True)
            ran.append(todo[i][0])
    if failures:
        raise UserError("; ".join(failures) + ".")
    return ran


def read(analysis_dir: Path, name: str) -> pd.DataFrame:
    path = analysis_dir / name
    if not path.is_file():
        raise UserError(f"{path} is missing; run the analysis that writes it (or figures.paper without --no-run).")
    return pd.read_csv(path)


# --- figures -------------------------------------------------------------------------
def fig_signal(sig: pd.DataFrame, out: Path) -> list[Path]:
    inputs = [i for i in ("gaussian", "data") if i in set(sig["input"])]
    fig, axes = new_figure(1, len(inputs), figsize=(4.2 * len(inputs), 3.4), squeeze=False)
    style = {"dense": ("#ff7f0e", "o", "-"), "liu": ("#9467bd", "s", "--"), "sparse": ("#2ca02c", "^", ":")}
    for ax, inp in zip(axes[0], inputs):
        d = sig[sig["input"] == inp].groupby(["init", "sparsity"])["output_std"].agg(["mean", "min", "max"])
        for init, g in d.reset_index().groupby("init"):
            color, marker, ls = style.get(init, ("#17becf", "o", "-"))
            ax.plot(g["sparsity"], g["mean"], marker=marker, ms=5, ls=ls, color=color, label=f"{init} init")
            ax.fill_between(g["sparsity"], g["min"], g["max"], color=color, alpha=0.12, lw=0)
        ax.set(xlabel="sparsity", ylabel="std of the logits at init (mean, min–max band)", yscale="log",
               title=f"{'Gaussian' if inp == 'gaussian' else 'real'} input")
        ax.legend()
    return save_figure(fig, out / "fig3_signal", FORMATS)


def fig_gradnorm(curves: pd.DataFrame, out: Path) -> list[Path]:
    measures = [m for m in ("grad_norm", "egf2") if m in set(curves["measure"])]
    fig, axes = new_figure(1, len(measures), figsize=(5 * len(measures), 3.6), squeeze=False)
    labels = {"grad_norm": "gradient norm ||g||₂ (masked)", "egf2": "EGF₂ (mean layer norm)"}
    for ax, measure in zip(axes[0], measures):
        d = curves[(curves["measure"] == measure) & (curves["step"] > 0)]
        for method in order_methods(d["method"]):
            g = d[d["method"] == method].sort_values("step")
            ax.plot(g["step"], g["mean"], label=method, color=method_color(method), lw=1.4)
            if g["n"].max() > 1:
                ax.fill_between(g["step"], (g["mean"] - g["std"]).clip(lower=g["mean"].min() * 0.1),
                                g["mean"] + g["std"], color=method_color(method), alpha=0.15, lw=0)
        ax.set(xlabel="training step (log scale)", ylabel=labels[measure], yscale="log", xscale="log")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), title="mean ± std over seeds")
    return save_figure(fig, out / "fig4_gradient_norm", FORMATS)


def fig_mds(mds: pd.DataFrame, out: Path) -> list[Path]:
    fig, ax = new_figure(figsize=(6.2, 5.2))
    for (method, kind), g in mds.groupby(["method", "kind"]):
        filled = kind != "start"
        c = method_color(method)
        ax.scatter(g["x"], g["y"], s=40, marker="o" if method != "prune" else "*",
                   facecolors=c if filled else "none", edgecolors=c, label=f"{method}-{kind}", zorder=3)
    for _, g in mds.groupby("run_id"):
        if {"start", "end"} <= set(g["kind"]):
            s, e = g[g["kind"] == "start"].iloc[0], g[g["kind"] == "end"].iloc[0]
            ax.annotate("", (e["x"], e["y"]), (s["x"], s["y"]),
                        arrowprops=dict(arrowstyle="-", lw=0.5, color=method_color(s["method"]), alpha=0.4))
    ax.set(xlabel="MDS 1", ylabel="MDS 2", title="Solutions and starting points (MDS of L2 distances)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_figure(fig, out / "fig6_mds", FORMATS)


def fig_interp(curves: pd.DataFrame, out: Path) -> list[Path]:
    paths = [p for p in ("start", "end") if f"{p}->pruning solution" in set(curves["path"])]
    if not paths:
        raise UserError("interpolation.csv holds no path to a pruning solution; rerun analysis.interpolate.")
    fig, axes = new_figure(1, len(paths), figsize=(4.8 * len(paths), 3.6), squeeze=False, sharey=True)
    for ax, point in zip(axes[0], paths):
        d = curves[curves["path"] == f"{point}->pruning solution"]
        seen = set()
        for (_run_id, method), g in d.groupby(["run_id", "method"]):
            g = g.sort_values("alpha")
            ax.plot(g["alpha"], g["loss"], color=method_color(method), lw=1.1, alpha=0.8,
                    label=None if method in seen else method)
            seen.add(method)
        ax.axvline(0, color="grey", lw=0.5)
        ax.axvline(1, color="grey", lw=0.5)
        ax.set(xlabel=f"α  (0 = run {point}, 1 = pruning solution)", ylabel="training loss", yscale="log",
               title=f"{point} → pruning solution")
        ax.legend()
    return save_figure(fig, out / "fig7_interpolation", FORMATS)


def fig_hessian(updates: pd.DataFrame, out: Path) -> list[Path]:
    """Smallest and largest eigenvalue before (hollow) and after (filled) each update, one line per run; the
    legend names each method once, so it stays readable with every seed's runs."""
    fig, axes = new_figure(1, 2, figsize=(9.5, 3.6))
    named: set[str] = set()
    for _, g in updates.groupby("run_id"):
        g = g.sort_values("step")
        method = g["method"].iloc[0]
        c = method_color(method)
        label = None if method in named else method
        named.add(method)
        for ax, col in zip(axes, ("min", "top")):
            ax.plot(g["step"], g[f"{col}_pre"], "o--", color=c, mfc="none", alpha=0.7)
            ax.plot(g["step"], g[f"{col}_post"], "o-", color=c, alpha=0.7, label=label if col == "min" else None)
    axes[0].axhline(0, color="grey", lw=0.6)
    axes[0].set(xlabel="step of the mask update", ylabel="smallest Hessian eigenvalue",
                title="Before (hollow) and after (filled) updates")
    axes[1].set(xlabel="step of the mask update", ylabel="largest Hessian eigenvalue")
    axes[0].legend(fontsize=8, title="one line per run")
    return save_figure(fig, out / "fig_hessian_rigl", FORMATS)


# --- tables ----------------------------------------------------------------------------
def pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.2f}"


def table1(ens: pd.DataFrame, out: Path) -> pd.DataFrame:
    order = ["lottery", "pruning solutions", "scratch", "scratch+", "rigl", "rigl+", "set"]
    ens = ens.set_index("group").reindex([g for g in order if g in set(ens["group"])]).reset_index()
    rows = []
    for _, r in ens.iterrows():
        rows.append({"Initialization": r["group"], "runs": int(r["n_runs"]),
                     "Test accuracy (%)": f"{pct(r['test_acc_mean'])} ± {pct(r['test_acc_std'])}",
                     "Ensemble (%)": pct(r["ensemble_acc"]),
                     "Ensemble gain (pp)": f"{100 * (r['ensemble_acc'] - r['test_acc_mean']):+.2f}",
                     "Disagreement": f"{r['disagreement_mean']:.4f} ± {0 if pd.isna(r['disagreement_std']) else r['disagreement_std']:.4f}",
                     "Disagreement w/ Pruned": f"{r['disagreement_pruned_mean']:.4f} ± {0 if pd.isna(r['disagreement_pruned_std']) else r['disagreement_pruned_std']:.4f}"})
    table = pd.DataFrame(rows)
    atomic_write_csv(out / "table1_ensemble.csv", ens)
    atomic_write_text(out / "table1_ensemble.md", markdown(table))
    return table


# Evci et al. (AAAI 2022), Table 1: five sparse ResNet-50 models per row trained on ImageNet. Fractions:
# (test acc mean, std, ensemble acc, disagreement mean, std, disagreement with the pruning solution mean, std);
# "pruning solutions" compares 4 other pruned models with the one the lottery tickets derive from.
# Source: the paper's Table 1 as given in its co-author's post on the paper (Calgary ML lab,
# github.com/calgaryml/calgaryml.github.io, _posts/2025-05-19-gradient-flow-sparse-neural-networks.md).
PAPER_TABLE1 = {
    "lottery": (0.7573, 0.0008, 0.7627, 0.0894, 0.0009, 0.0941, 0.0009),
    "scratch": (0.7116, 0.0013, 0.7405, 0.2039, 0.0013, 0.2033, 0.0012),
    "pruning solution": (0.7560, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), float("nan")),
    "pruning solutions": (0.7565, 0.0013, 0.7780, 0.1620, 0.0008, 0.1623, 0.0011),
}
PAPER_SOURCE = "Evci et al. (ResNet-50, ImageNet)"
TABLE1_COLUMNS = ["test_acc_mean", "test_acc_std", "ensemble_acc", "disagreement_mean", "disagreement_std",
                  "disagreement_pruned_mean", "disagreement_pruned_std"]


def table1_vs_paper(ens: pd.DataFrame, pruning_acc: float, here: str, out: Path) -> pd.DataFrame:
    """The Table 1 rows shared with the paper (lottery, scratch, the pruning solution, other pruning
    solutions), each as the paper's ImageNet numbers and ours, written as ``table1_vs_paper.md/.csv``.

    ``pruning_acc`` is the test accuracy of the pruning solution the lottery tickets derive from;
    ``here`` names our setting (e.g. "LeNet-5, mnist"). The CSV holds fractions; the Markdown percent.
    """
    ours = ens.set_index("group")
    rows = []
    for group, paper in PAPER_TABLE1.items():
        rows.append({"group": group, "source": PAPER_SOURCE, "n_runs": 1 if group == "pruning solution" else 5,
                     **dict(zip(TABLE1_COLUMNS, paper))})
        if group == "pruning solution":
            mine = dict.fromkeys(TABLE1_COLUMNS, float("nan")) | {"test_acc_mean": pruning_acc}
            rows.append({"group": group, "source": f"here ({here})", "n_runs": 1, **mine})
        elif group in ours.index:
            r = ours.loc[group]
            rows.append({"group": group, "source": f"here ({here})", "n_runs": int(r["n_runs"]),
                         **{c: float(r[c]) for c in TABLE1_COLUMNS}})
    frame = pd.DataFrame(rows)
    frame["ensemble_gain"] = frame["ensemble_acc"] - frame["test_acc_mean"]
    atomic_write_csv(out / "table1_vs_paper.csv", frame)

    def pm(mean: float, std: float, fmt: Callable[[float], str]) -> str:
        return "–" if pd.isna(mean) else fmt(mean) if pd.isna(std) else f"{fmt(mean)} ± {fmt(std)}"

    def d4(x: float) -> str:
        return f"{x:.4f}"

    table = pd.DataFrame({
        "Initialization": ["" if i and g == frame["group"][i - 1] else g for i, g in enumerate(frame["group"])],
        "source": frame["source"], "runs": frame["n_runs"],
        "Test accuracy (%)": [pm(m, s, pct) for m, s in zip(frame["test_acc_mean"], frame["test_acc_std"])],
        "Ensemble (%)": frame["ensemble_acc"].map(pct),
        "Ensemble gain (pp)": ["–" if pd.isna(g) else f"{100 * g:+.2f}" for g in frame["ensemble_gain"]],
        "Disagreement": [pm(m, s, d4) for m, s in zip(frame["disagreement_mean"], frame["disagreement_std"])],
        "Disagreement w/ Pruned": [pm(m, s, d4) for m, s in
                                   zip(frame["disagreement_pruned_mean"], frame["disagreement_pruned_std"])],
    })
    atomic_write_text(out / "table1_vs_paper.md", markdown(table))
    return table


def egf_table(corr: pd.DataFrame, out: Path) -> pd.DataFrame:
    names = {"grad_norm_l1": "‖g‖₁", "grad_norm": "‖g‖₂", "egf1": "EGF₁", "egf2": "EGF₂",
             "egf2_per_weight": "EGF₂ per weight"}
    # Tessera et al.'s aggregation: each measure averaged over 11 evenly spaced points of training
    d = corr[(corr["aggregation"] == "spaced")]
    rows = []
    for group in ("sparse", "dense"):
        for measure, name in names.items():
            g = d[(d["group"] == group) & (d["measure"] == measure)]
            if g.empty:
                continue
            acc = g[g["target"].str.contains("acc")].iloc[0]
            loss = g[g["target"].str.contains("loss")].iloc[0]
            rows.append({"runs": group, "measure": name, "n": int(acc["n_runs"]),
                         "Kendall τ (test acc)": acc["kendall_tau"], "Spearman ρ (test acc)": acc["spearman_rho"],
                         "Kendall τ (test loss)": loss["kendall_tau"], "Spearman ρ (test loss)": loss["spearman_rho"]})
    table = pd.DataFrame(rows)
    atomic_write_csv(out / "table_egf_correlation.csv", table)
    atomic_write_text(out / "table_egf_correlation.md", markdown(table.round(3)))
    return table


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (no tabulate dependency); a '|' inside a cell is escaped."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v).replace("|", "\\|") for v in r.values) + " |")
    return "\n".join(lines) + "\n"


# --- claims, settings and the report -------------------------------------------------------------
@dataclass
class Setting:
    """One runs directory: its name (a column of the claims matrix), where it lives, what was measured."""

    name: str
    runs: Path
    analysis: Path
    out: Path
    all_runs: list
    verdicts: list[Verdict]
    acc: pd.DataFrame
    table: pd.DataFrame
    vs_paper: pd.DataFrame | None
    untrained: list = field(default_factory=list)  # runs that did not train
    verdicts_trained: list[Verdict] | None = None  # without them and their partners (None: none flagged)


class TrainedClaimData(ClaimData):
    """A setting's claim data without the runs of ``exclude``: their rows leave every analysis CSV that has a
    ``run_id`` column, so a paired claim also loses their partners (pairs need both). Aggregate CSVs
    (``ensemble.csv``, ``ensemble_bootstrap.csv``, ``signal.csv``) have no runs to drop and are kept."""

    def __init__(self, runs: str | Path, analysis: str | Path | None, exclude: set[str]) -> None:
        super().__init__(runs, analysis)
        self.exclude = set(exclude)

    def csv(self, name: str) -> pd.DataFrame:
        frame = super().csv(name)
        return frame[~frame["run_id"].isin(self.exclude)] if "run_id" in frame else frame

    @cached_property
    def runs(self) -> list:
        return [r for r in super().runs if r.run_id not in self.exclude]


def setting_label(runs: Path, all_runs: list) -> str:
    """A setting's column name: the preset recorded in the runs' config, else the directory's name, else
    'model-dataset-sSPARSITY' when the directory has a generic name (runs, _figures, .)."""
    presets = pd.Series([r.config.get("preset") for r in all_runs]).dropna()
    if len(presets):
        return str(presets.mode().iloc[0])
    name = runs.name or runs.resolve().name  # the name given (a link may name a setting), else the real one
    if name and name not in ("runs", "_figures", "_analysis"):
        return name
    models = pd.Series([r.config.get("model", "?") for r in all_runs]).mode().iloc[0]
    datasets = pd.Series([r.config.get("dataset", "?") for r in all_runs]).mode().iloc[0]
    return f"{models}-{datasets}-s{max(r.sparsity for r in all_runs):g}"


def unique_names(names: list[str]) -> list[str]:
    """The names with '-2', '-3', ... added to repeats, so every column of the matrix is distinct."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def cell(v: Verdict) -> str:
    """A matrix cell: the verdict and its key number (effect and interval, or k/n for counts)."""
    if v.n == 0:
        return f"{v.verdict} (no data)"
    if v.test.startswith("exact binomial"):
        number = f"{int(v.statistic)}/{v.n} [{v.ci_low:.2f}, {v.ci_high:.2f}]"
    elif math.isnan(v.ci_low):
        number = f"n = {v.n}"
    else:
        number = f"{fmt(v.effect)} [{fmt(v.ci_low)}, {fmt(v.ci_high)}]"
    extra = robustness_text(v)
    return f"**{v.verdict}** {number}" + (f" · {extra}" if extra and extra != "—" else "")


def claims_matrix(settings: list[Setting], table: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """Claims × settings: each cell a verdict with its key number."""
    frame = pd.DataFrame({"claim": [c.id for c in table], "statement": [c.statement for c in table]})
    for s in settings:
        by_id = {v.claim: v for v in s.verdicts}
        frame[s.name] = [cell(by_id[c.id]) for c in table]
    return frame


@dataclass
class Report:
    """What the REPORT.md sections are made from."""

    command: str
    out: Path
    settings: list[Setting]
    claims: tuple[Claim, ...] = CLAIMS


def setting_frame(s: Setting, table: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """A setting's ``claims.csv`` rows, with the verdict and key number without the runs that did not train
    (the same as with them when no run was flagged) and how many runs were flagged."""
    frame = verdict_frame(table, s.verdicts, s.name)
    without = s.verdicts_trained or s.verdicts
    by_id = {v.claim: v for v in without}
    frame["verdict_without_untrained"] = [by_id[c].verdict for c in frame["claim"]]
    frame["key_without_untrained"] = [by_id[c].key for c in frame["claim"]]
    frame["untrained_runs"] = len(s.untrained)
    return frame


def without_text(v: Verdict, w: Verdict | None) -> str:
    """The verdict without the runs that did not train: 'same' when nothing changes."""
    if w is None:
        return "no run flagged"
    if (w.verdict, w.key) == (v.verdict, v.key):
        return "same"
    return f"**{w.verdict}** {w.key}"


def section_header(rep: Report) -> list[str]:
    return ["# Report: gradient flow and solution geometry of sparse networks", "",
            f"Generated by `{rep.command}` on {time.strftime('%Y-%m-%d %H:%M')}. Every number below is computed "
            "from the CSV files the analysis CLIs wrote into each runs directory's `_analysis/`. Nothing is tuned "
            "per method.", ""]


def section_matrix(rep: Report) -> list[str]:
    return ["## Claims across settings", "",
            "Each cell: the verdict and its key number, the effect with its 90% interval (each bound a one-sided "
            "95% bound, matching the one-sided test at α = 0.05). **held**: p < 0.05 and the interval on the "
            "claimed side of the threshold; **not held**: the interval on the other side; **inconclusive**: "
            "the interval covers the threshold, or too few samples. Intervals come from the spread between "
            "seeds (runs, updates), so float noise between machines cannot flip a clear verdict. With 3 seeds a "
            "paired rank test cannot reach p < 0.05 (its smallest p is 1/8) and its interval is unbounded "
            "([−∞, ∞]); with 2 or fewer there is no test (n = 2). The effect is in the measure's units: see "
            "\"How each claim is tested\" and each setting's claims table for the names.", "",
            markdown(claims_matrix(rep.settings, rep.claims)), ""]


def section_tests(rep: Report) -> list[str]:
    frame = pd.DataFrame([{"claim": c.id, "paper": c.paper, "measure": c.measure, "source": c.source,
                           "comparison": c.comparison, "test": TEST_NAMES[c.test],
                           "claimed side": f"{'>' if c.direction == 'greater' else '<'} {c.threshold:.3g}",
                           "margin or threshold: why": c.margin_why or "0: the direction alone"}
                          for c in rep.claims])
    return ["## How each claim is tested", "",
            "A claim that something is *not larger* (2c, 2d) is a non-superiority test: held when the upper bound "
            "of the effect lies below the margin, so equal values can be held. **Robustness** beside each "
            "verdict: *LOO k/n* is how many of the n leave-one-seed-out subsets (leave-one-run-out, -update "
            "where units are not seeds) give the same verdict; a held or not-held verdict that one left-out seed "
            "changes is **fragile**. For an inconclusive verdict, *needs ~N seeds* is the number of seeds at "
            "which resampling the observed seeds decides it (held or not held) with 80% probability, or "
            "> 50.", "", markdown(frame), ""]


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def section_settings(rep: Report) -> list[str]:
    lines: list[str] = []
    by_id = {c.id: c for c in rep.claims}
    for s in rep.settings:
        fig = "" if s.out == rep.out else _rel(s.out, rep.out) + "/"
        without = {v.claim: v for v in s.verdicts_trained} if s.verdicts_trained else {}
        rows = [{"claim": v.claim, "verdict": f"**{v.verdict}**", "key number": v.key,
                 "p": "–" if math.isnan(v.p_value) else f"{v.p_value:.3g}", "robustness": robustness_text(v),
                 "without did-not-train runs": without_text(v, without.get(v.claim)), "test": v.test,
                 "detail": v.detail,
                 "figure": f"[{by_id[v.claim].figure}]({fig}{by_id[v.claim].figure})"} for v in s.verdicts]
        lines += [f"## Setting {s.name} ({setting_name(s.all_runs)}, `{s.runs}`)", "",
                  "### Claims", "", markdown(pd.DataFrame(rows)), "",
                  "### Runs that did not train", "", *untrained_lines(s),
                  "### Claim 6: Lanczos convergence and 4× the examples", "", *hessian_check_lines(s),
                  "### Final test accuracy by method", "", markdown(s.acc), "",
                  "### Table 1: ensembles and disagreement (test split)", "", markdown(s.table), ""]
        if s.vs_paper is not None:
            lines += ["### Table 1 beside the paper's ImageNet numbers", "",
                      "Evci et al.'s Table 1 (sparse ResNet-50 on ImageNet) and the same rows measured here. "
                      "The scales differ; compare the orderings: the lottery tickets' disagreement with their "
                      "pruning solution against the other pruning solutions' and scratch's, and the ensemble gains.",
                      "", markdown(s.vs_paper), ""]
        lines += ["### Figures", ""] + [f"![{p.stem}]({fig}{p.name})" for p in sorted(s.out.glob("*.png"))] + [""]
    return lines


def untrained_lines(s: Setting) -> list[str]:
    """The runs whose final training accuracy is within 5 points of chance, per method."""
    if not s.untrained:
        return ["None: every run's final training accuracy is more than 5 points above chance.", ""]
    frame = pd.DataFrame([{"method": r.method, "seed": r.seed, "run": r.run_id,
                           "train acc (%)": f"{100 * r.final_train_acc:.2f}",
                           "test acc (%)": f"{100 * r.final_test_acc:.2f}"} for r in s.untrained])
    counts = frame.groupby("method", sort=False).size()
    return [f"{len(frame)} run(s) ended within 5 points of chance ("
            + ", ".join(f"{m}: {n}" for m, n in counts.items())
            + "). Each claim is judged on all runs; the claims table shows each verdict without them (and, in "
              "paired claims, their partners) beside it.", "", markdown(frame), ""]


def hessian_check(analysis_dir: Path) -> dict | None:
    """Claim 6 on its check subset: outcomes at the base and at 4x the examples for the same updates,
    the binomial verdict on each, and the largest relative Lanczos residual of the smallest eigenvalue."""
    from analysis.hessian import more_negative

    try:
        base = pd.read_csv(analysis_dir / "hessian_updates.csv")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    base = base[base["method"].isin(["rigl", "rigl+"])]
    out: dict = {"n": len(base)}
    if len(base) and "min_residual_pre" in base:
        rel = pd.concat([base["min_residual_pre"] / base["top_pre"].abs(),
                         base["min_residual_post"] / base["top_post"].abs()])
        out["residual_max"] = float(rel.max())
        out["residual_median"] = float(rel.median())
    try:
        big = pd.read_csv(analysis_dir / HESSIAN_CHECK_DIR / "hessian_updates.csv")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return out
    keys = ["run_id", "step"]
    both = base.assign(ok=more_negative(base))[keys + ["ok"]].merge(
        big.assign(ok=more_negative(big))[keys + ["ok"]], on=keys, suffixes=("", "_4x"))
    if both.empty:
        return out
    small_ok, big_ok = both["ok"].to_numpy(), both["ok_4x"].to_numpy()
    out.update(check_n=len(both), agree=int((small_ok == big_ok).sum()),
               verdict_base=count_test(int(small_ok.sum()), len(both)),
               verdict_4x=count_test(int(big_ok.sum()), len(both)))
    return out


def hessian_check_lines(s: Setting) -> list[str]:
    info = hessian_check(s.analysis)
    if not info or not info.get("n"):
        return ["No Hessian eigenvalues around RigL mask updates in this setting.", ""]
    lines = []
    if "residual_max" in info:
        lines.append(f"Over the {info['n']} updates (pre and post), the Lanczos residual ‖Hv − λv‖ of λ_min is at "
                     f"most {info['residual_max']:.1e} × |λ_max| (median {info['residual_median']:.1e}).")
    if "check_n" in info:
        vb, v4 = info["verdict_base"], info["verdict_4x"]
        same = "the same verdict" if vb.verdict == v4.verdict else "**different verdicts**"
        lines.append(f"The same {info['check_n']} updates on 4× the examples: {info['agree']}/{info['check_n']} "
                     f"updates get the same outcome (more negative or not); on this subset the base examples give "
                     f"**{vb.verdict}** {vb.key} and 4× give **{v4.verdict}** {v4.key}: {same}.")
    else:
        lines.append("No check at 4× the examples here (the training set is smaller, or it was not asked for).")
    return [" ".join(lines), ""]


def section_beyond(rep: Report) -> list[str]:
    """The "Beyond the paper" section (figures.beyond) of each setting whose analyses computed it."""
    lines: list[str] = []
    for s in rep.settings:
        if not (s.analysis / "plane.csv").is_file() and not (s.analysis / "curve_summary.csv").is_file():
            continue
        several = len(rep.settings) > 1  # then one section per setting, named and linked to its own figures
        prefix = "" if s.out == rep.out else _rel(s.out, rep.out) + "/"
        lines.append(beyond.markdown(s.analysis, s.out, s.name if several else None, prefix))
    return lines


# The report is these sections in order; a new section is a function Report -> lines added here.
REPORT_SECTIONS: list[Callable[[Report], list[str]]] = [section_header, section_matrix, section_tests,
                                                        section_settings, section_beyond]


def report(rep: Report) -> str:
    """REPORT.md: every section of REPORT_SECTIONS in order."""
    return "\n".join(line for section in REPORT_SECTIONS for line in section(rep)) + "\n"


def pruning_solution_acc(ens: pd.DataFrame, all_runs: list) -> float:
    """Final test accuracy of the pruning solution the lottery tickets were compared with (NaN if absent)."""
    refs = ens.loc[ens["group"] == "lottery", "pruning_run"] if "pruning_run" in ens else pd.Series(dtype=object)
    ref = refs.iloc[0] if len(refs) else None
    return next((r.final_test_acc for r in all_runs if r.run_id == ref), float("nan"))


def setting_name(all_runs: list) -> str:
    """'model, dataset' of the runs (the most common of each), for table captions."""
    models = pd.Series([r.config.get("model", "?") for r in all_runs]).mode()
    datasets = pd.Series([r.config.get("dataset", "?") for r in all_runs]).mode()
    return f"{models.iloc[0]}, {datasets.iloc[0]}"


def accuracy_by_method(rs: list) -> pd.DataFrame:
    """Final test accuracy (mean ± std) per method of the given runs."""
    frame = pd.DataFrame([{"method": r.method, "test_acc": r.final_test_acc} for r in rs])
    order = ["dense", "small-dense", "prune", "lottery", "scratch", "scratch+", "rigl", "rigl+", "set"]
    t = frame.groupby("method")["test_acc"].agg(["mean", "std", "count"]).reset_index()
    t = t.sort_values("method", key=lambda c: c.map({m: i for i, m in enumerate(order)}))
    return pd.DataFrame({"method": t["method"], "runs": t["count"],
                         "test accuracy (%)": [f"{100 * m:.2f} ± {0 if pd.isna(s) else 100 * s:.2f}"
                                               for m, s in zip(t["mean"], t["std"])]})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m figures.paper", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="runs directories (e.g. from the paper-lenet5 preset); "
                                           "each is one setting, a column of the claims matrix")
    p.add_argument("--out", default=None, help="output directory (default: <first runs>/_figures); with several "
                                               "runs directories each setting's figures go to <out>/<setting>/")
    p.add_argument("--analysis-dir", default=None,
                   help="where analyses are read/written (default: <runs>/_analysis; one runs directory only)")
    p.add_argument("--force", action="store_true", help="rerun every analysis")
    p.add_argument("--model", default=None, help="model for the signal-propagation figure (default: the runs')")
    p.add_argument("--interp-examples", type=int, default=1000, help="training examples per interpolation point")
    p.add_argument("--hessian-examples", type=int, default=None,
                   help="training examples for Hessian eigenvalues (default: 2,000 for runs on full data, "
                        "1,000 on the 4,000-image subset, which keeps make reproduce in minutes)")
    p.add_argument("--hessian-updates", type=int, default=40,
                   help="RigL/RigL+ mask updates to take eigenvalues around, spread over every seed's runs")
    p.add_argument("--hessian-check-updates", type=int, default=6,
                   help="of those, how many to take again on 4x the examples (0: none)")
    p.add_argument("--data-dir", default=None, help="directory with full-size datasets (or $SPARSE_DATA)")
    p.add_argument("--jobs", type=int, default=1, help="analyses to run at a time, in worker processes")
    p.add_argument("--quiet", action="store_true", help="less output")
    return p


def _mkdir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {d} ({exc.strerror or exc}).") from None


def analysis_args(args: argparse.Namespace, all_runs) -> argparse.Namespace:
    """A copy of ``args`` for one runs directory's analyses: ``--model`` defaults to its runs' model."""
    setting_args = argparse.Namespace(**vars(args))
    setting_args.model = args.model or all_runs[0].config.get("model", "lenet5")
    if setting_args.hessian_examples is None:
        setting_args.hessian_examples = default_hessian_examples(all_runs)
    return setting_args


def default_hessian_examples(all_runs: list) -> int:
    """Claim 6's training examples: 2,000 where the runs train on a full dataset, else 1,000."""
    return 2000 if any(r.config.get("full_data") for r in all_runs) else 1000


def build_setting(name: str, runs: Path, analysis_dir: Path, out: Path, args: argparse.Namespace) -> Setting:
    """Analyses (those missing), figures, tables and claim verdicts of one runs directory."""
    all_runs = select_runs(runs, warn=False)
    setting_args = analysis_args(args, all_runs)
    for d in (analysis_dir, out):
        _mkdir(d)
    run_missing_analyses(runs, analysis_dir, setting_args, jobs=args.jobs)
    fig_signal(read(analysis_dir, "signal.csv"), out)
    fig_gradnorm(read(analysis_dir, "gradflow_curves.csv"), out)
    fig_mds(read(analysis_dir, "mds.csv"), out)
    fig_interp(read(analysis_dir, "interpolation.csv"), out)
    fig_hessian(read(analysis_dir, "hessian_updates.csv"), out)
    ens = read(analysis_dir, "ensemble.csv")
    table = table1(ens, out)
    vs_paper = table1_vs_paper(ens, pruning_solution_acc(ens, all_runs), setting_name(all_runs), out)
    egf_table(read(analysis_dir, "gradflow_correlations.csv"), out)
    if (analysis_dir / "align.png").is_file():  # claim 4c's figure, beside the others
        atomic_write_bytes(out / "align.png", (analysis_dir / "align.png").read_bytes())
    verdicts = evaluate_all(CLAIMS, ClaimData(runs, analysis_dir))
    untrained = [r for r in all_runs if r.did_not_train]
    trained = evaluate_all(CLAIMS, TrainedClaimData(runs, analysis_dir, {r.run_id for r in untrained})) \
        if untrained else None
    return Setting(name, runs, analysis_dir, out, all_runs, verdicts, accuracy_by_method(all_runs), table, vs_paper,
                   untrained, trained)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1.")
    dirs = [Path(r) for r in args.runs]
    if len(dirs) > 1 and args.analysis_dir:
        raise UserError("--analysis-dir applies to one runs directory; with several, each uses its own _analysis.")
    pools = [select_runs(d, warn=False) for d in dirs]  # every directory is checked before anything is written
    names = unique_names([setting_label(d, p) for d, p in zip(dirs, pools)])
    out = Path(args.out) if args.out else dirs[0] / "_figures"
    settings = []
    for name, runs in zip(names, dirs):
        analysis_dir = Path(args.analysis_dir) if args.analysis_dir else runs / "_analysis"
        setting_out = out if len(dirs) == 1 else (out / name if args.out else runs / "_figures")
        if len(dirs) > 1 and not args.quiet:
            print(f"[figures.paper] setting {name}: {runs}", flush=True)
        settings.append(build_setting(name, runs, analysis_dir, setting_out, args))
    _mkdir(out)
    command = "python -m figures.paper " + " ".join(str(d) for d in dirs)
    verdicts = pd.concat([setting_frame(s) for s in settings], ignore_index=True)
    atomic_write_csv(out / "claims.csv", verdicts)
    matrix = claims_matrix(settings)
    atomic_write_csv(out / "claims_matrix.csv", matrix)
    atomic_write_text(out / "REPORT.md", report(Report(command, out, settings)))
    for s in settings:
        print(f"{s.name}: figures and tables in {s.out}")
    print(f"wrote claims.csv, claims_matrix.csv and REPORT.md to {out}")
    print(f"report: {out / 'REPORT.md'}\n")
    print(matrix.drop(columns=["statement"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
