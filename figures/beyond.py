"""REPORT.md's "Beyond the paper" section: the plane, the curves, stability to SGD noise and per-layer spectra.

:func:`markdown` reads what ``analysis.plane``, ``analysis.curve``, ``analysis.stability`` and
``analysis.hessian --per-layer`` wrote to ``_analysis/``, copies their figures next to REPORT.md
and returns the section, each figure with one sentence computed from the CSV files (an analysis
that has not been run is said to be missing). :data:`STEPS` are those analyses as
``figures.paper`` steps, with the arguments ``figures.reproduce`` uses.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.runs import select_runs
from landscape.curves import barrier_above_chord
from sparse_training.io import atomic_write_bytes

from .steps import Step

CONNECTED = 0.05  # nats: a segment whose loss rises less than this above its chord counts as one basin
STABILITY_DIR = "_stability"  # the stability preset's runs, inside the main runs directory


# --- the analyses, as figures.paper steps ---------------------------------------------------------
def plane_argv(runs: Path, out: Path, args) -> list[str]:
    """Seed 0's lottery end, scratch end and pruning solution on a 21 x 21 grid."""
    return [str(runs), "--out", str(out), "--examples", str(args.interp_examples), "--grid", "21", "--quiet"]


def curve_argv(runs: Path, out: Path, args) -> list[str]:
    """Seed 0's scratch, scratch+, rigl and rigl+ ends to the pruning solution, 400 steps per bend."""
    return [str(runs), "--out", str(out), "--seed", "0", "--examples", str(args.interp_examples), "--steps", "400",
            "--quiet"]


def stability_argv(runs: Path, out: Path, args) -> list[str]:
    """The stability preset's runs in ``<runs>/_stability``, on the test split."""
    return [str(runs / STABILITY_DIR), "--out", str(out), "--quiet"]


LAYER_EXAMPLES = 500  # the per-layer blocks' training examples (claim 6's --hessian-examples is larger)


def layers_argv(runs: Path, out: Path, args) -> list[str]:
    """Per-layer blocks around two mask updates (the first and a middle one) of the seed-0 RigL run."""
    rigl = [r for r in select_runs(runs, method="rigl", warn=False) if r.update_steps()]
    run = min(rigl, key=lambda r: (r.seed, r.run_id))
    steps = run.update_steps()
    keep = sorted({steps[0], steps[len(steps) // 2]})
    which = ",".join(f"{s}:pre,{s}:post" for s in keep)
    return [str(runs), "--out", str(out), "--run", f"^{re.escape(run.run_id)}$", "--which", which, "--per-layer",
            "--k", "1", "--max-iter", "30", "--examples", str(LAYER_EXAMPLES), "--quiet"]


def steps():
    """The four analyses as :class:`figures.steps.Step` objects."""
    return (Step("plane", ("plane.csv", "plane_points.csv"), plane_argv),
            Step("curve", ("curve.csv", "curve_summary.csv"), curve_argv),
            Step("stability", ("stability.csv", "stability_summary.csv"), stability_argv),
            Step("hessian", ("hessian_layers.csv", "hessian_layers_updates.csv"), layers_argv))


# --- sentences from the data ----------------------------------------------------------------------
def _read(analysis_dir: Path, name: str) -> pd.DataFrame | None:
    path = analysis_dir / name
    return pd.read_csv(path) if path.is_file() else None


def plane_sentence(grid: pd.DataFrame, points: pd.DataFrame) -> str:
    """Which of the three points share a basin: the loss along each straight segment, read off the grid."""
    from scipy.interpolate import RegularGridInterpolator

    alphas, betas = np.unique(grid["alpha"]), np.unique(grid["beta"])
    loss = grid.pivot(index="beta", columns="alpha", values="loss").loc[betas, alphas].to_numpy()
    f = RegularGridInterpolator((betas, alphas), loss)
    anchors = points[points["kind"] == "anchor"].set_index("role")
    name = {r: f"{anchors.loc[r, 'method']} ({r})" for r in "abc"}
    parts, joined = [], []
    ts = np.linspace(0.0, 1.0, 41)
    for p, q in (("a", "c"), ("a", "b"), ("b", "c")):
        (a0, b0), (a1, b1) = anchors.loc[p, ["alpha", "beta"]], anchors.loc[q, ["alpha", "beta"]]
        seg = f(np.stack([b0 + ts * (b1 - b0), a0 + ts * (a1 - a0)], axis=1))
        height = barrier_above_chord(ts, seg)
        parts.append(f"{name[p]}–{name[q]} {height:.3f}")
        if height < CONNECTED:
            joined.append(f"{name[p]} and {name[q]}")
    verdict = ("; " + ", ".join(joined) + f" lie in one basin (< {CONNECTED} nats)") if joined else \
        f"; no two of them lie in one basin on this plane (every rise ≥ {CONNECTED} nats)"
    return (f"Rise of the training loss above the chord along the straight segments in the plane (bilinear on the "
            f"{len(alphas)}×{len(betas)} grid, nats): {', '.join(parts)}{verdict}.")


def curve_sentence(summary: pd.DataFrame) -> str:
    """How much a trained Bezier bend lowers the barrier to the pruning solution."""
    n = len(summary)
    line, bent = summary["line_barrier"], summary["curve_barrier"]
    ratio = float((bent / line.where(line > 0)).median())
    worst = summary.loc[bent.idxmax()]
    return (f"Over {n} curve(s) ({', '.join(summary['method'])}), the barrier above the chord falls from "
            f"{line.mean():.3f} nats on the straight line to {bent.mean():.3f} on the trained quadratic Bezier curve "
            f"(median ratio {ratio:.2f}; highest remaining {bent.max():.3f}, {worst['method']}; Frankle et al.'s "
            f"max-minus-mean barrier {summary['line_barrier_frankle'].mean():.3f} → "
            f"{summary['curve_barrier_frankle'].mean():.3f}): the solutions are "
            + ("joined by a curved low-loss path although the line crosses a barrier."
               if bent.max() < CONNECTED else
               "much closer to connected along a curve than the line suggests, but a small barrier remains."))


def stability_sentence(summary: pd.DataFrame, threshold: float = 0.02) -> str:
    """From which rewind step each family is stable, and what it costs in accuracy."""
    from analysis.stability import by_rewind, stable_from

    table = by_rewind(summary)
    first = stable_from(summary, threshold)
    bits = []
    for family, g in table.groupby("family"):
        g = g.sort_values("rewind")
        k = first[str(family)]
        when = f"stable from k = {k}" if k is not None else "unstable at every measured k"
        bits.append(f"{family}: error barrier {100 * g['error_barrier'].iloc[0]:.2f} pp at k = {g['rewind'].iloc[0]}, "
                    f"{100 * g['error_barrier'].iloc[-1]:.2f} pp at k = {g['rewind'].iloc[-1]} ({when}; accuracy "
                    f"{100 * g['mean_acc'].min():.1f}–{100 * g['mean_acc'].max():.1f}%)")
    pairs = int(table["pairs"].max())
    return (f"{'; '.join(bits)}. Stable means an error barrier below {100 * threshold:g} pp (Frankle et al.'s "
            f"threshold); {pairs} pair(s) of copies per rewind step, so no interval: indicative only.")


def layers_sentence(layers: pd.DataFrame, updates: pd.DataFrame | None, full: pd.DataFrame | None) -> str:
    """Whether any layer's own block has negative curvature, and which layer's top eigenvalue grew most."""
    first = layers[layers["index"] == 0]
    bottom = first[first["kind"] == "bottom"]
    top = first[first["kind"] == "top"]
    worst = bottom.loc[bottom["eigenvalue"].idxmin()]
    scale = float(top["eigenvalue"].max())
    n_ckpt = len(first.groupby(["run_id", "step", "phase"]))
    negative = float(worst["eigenvalue"]) < -1e-4 * scale
    text = (f"Across {n_ckpt} checkpoints around RigL mask updates, the smallest eigenvalue of any single layer's "
            f"block is {worst['eigenvalue']:.2g} ({worst['layer']}, largest block eigenvalue {scale:.3g})")
    if negative:
        text += ", so that layer carries negative curvature of its own"
    else:
        conv = bottom["converged"].astype(bool) if "converged" in bottom else pd.Series(True, index=bottom.index)
        text += (": no layer shows negative curvature within its own weights (as expected for ReLU networks, "
                 "piecewise linear in any one layer's weights, whose blocks are Gauss-Newton matrices; "
                 f"{int(conv.sum())} of {len(conv)} smallest-eigenvalue estimates met the tolerance, the others are "
                 "Ritz values, upper bounds)")
        if full is not None and len(full) and float(full["min_post"].min()) < 0:
            text += (f", so the negative eigenvalues of the full Hessian (down to {full['min_post'].min():.3g} after "
                     "updates) come from the blocks that couple layers")
    if updates is not None and len(updates):
        growth = (updates["top_post"] / updates["top_pre"]).groupby(updates["layer"]).mean()
        text += f"; the largest block eigenvalue grows most after updates in {growth.idxmax()} (×{growth.max():.2f} on average)"
    return text + "."


# --- the section ----------------------------------------------------------------------------------
def markdown(analysis_dir: Path, figures_dir: Path, setting: str | None = None, link_prefix: str = "") -> str:
    """The "Beyond the paper" section; copies plane.png, curve.png, stability.png, hessian_layers.png to figures_dir.

    ``setting`` names the section (one per setting in a multi-setting report); ``link_prefix`` is the
    path from the report to ``figures_dir``.
    """
    analysis_dir, figures_dir = Path(analysis_dir), Path(figures_dir)
    lines = ["## Beyond the paper" + (f": {setting}" if setting else ""), "",
             "Geometry questions the paper leaves open, answered on the same runs (the methods: the user guide's "
             "analyses page, docs/guide/analyses.md).", ""]
    items = [
        ("plane", "Loss on the plane through the lottery ticket, scratch and pruning solutions (Li et al. 2018; "
                  "Garipov et al. 2018)", ("plane.csv", "plane_points.csv"),
         lambda d: plane_sentence(*d)),
        ("curve", "Bezier curves vs straight lines to the pruning solution (Garipov et al. 2018; Draxler et al. 2018)",
         ("curve_summary.csv",), lambda d: curve_sentence(d[0])),
        ("stability", "Stability to SGD noise against the rewind step (Frankle et al. 2020)",
         ("stability_summary.csv",), lambda d: stability_sentence(d[0])),
        ("hessian_layers", "Per-layer Hessian spectra around RigL mask updates", ("hessian_layers.csv",),
         lambda d: layers_sentence(d[0], _read(analysis_dir, "hessian_layers_updates.csv"),
                                   _read(analysis_dir, "hessian_updates.csv"))),
    ]
    for stem, title, files, sentence in items:
        lines += [f"### {title}", ""]
        data = [_read(analysis_dir, f) for f in files]
        if any(d is None for d in data):
            lines += [f"Not computed: {', '.join(files)} missing from {analysis_dir}.", ""]
            continue
        lines.append(sentence(data))
        png = analysis_dir / f"{stem}.png"
        if png.is_file():
            target = figures_dir / f"beyond_{stem}.png"
            atomic_write_bytes(target, png.read_bytes())
            lines += ["", f"![{stem}]({link_prefix}{target.name})"]
        lines.append("")
    return "\n".join(lines) + "\n"
