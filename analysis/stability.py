"""Stability to SGD noise against the rewind step (Frankle et al. 2020); CLI: ``python -m analysis.stability runs/``.

Frankle, Dziugaite, Roy and Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket
Hypothesis": train two copies of a network from the same weights with different data orders; the
network is *stable to SGD noise* when the two ends are linearly connected, i.e. the error barrier
on the straight line between them is about 0. Sparse lottery tickets found by iterative magnitude
pruning are stable only when rewound to some step k > 0 of the parent's training, and only then do
they reach the parent's accuracy.

Runs: the ``stability`` preset (``python -m sparse_training.suite --preset stability --out
runs/_stability``) trains, for each rewind step k, copies (seeds 1, 2, ...) of a lottery ticket
rewound to step k of a prune run, and of a dense network rewound to step k of a dense run. This CLI
finds every group of complete ``lottery`` runs with the same parent and rewind step (the family is
the parent's method: ``prune`` -> lottery ticket, ``dense`` -> dense), pairs consecutive copies, and
measures loss and error along the straight line between the pair's ends (``--points`` alphas in
[0, 1], ``--split`` default test, as Frankle et al.).

Barriers (``landscape.curves``): ``error_barrier`` = max error on the line minus the endpoints'
mean error (Frankle et al.'s instability; stable when below ``--stable`` = 0.02, their 2%
threshold); ``loss_barrier`` = height of the loss above the chord (Entezari et al. 2022, the
definition of ``analysis.interpolate``); ``loss_barrier_frankle`` = max loss minus the endpoints'
mean loss.

Outputs (in ``<runs>/_analysis`` or ``--out``):

- ``stability.csv``: one row per (pair, alpha): family, rewind, parent, run_a, run_b, alpha, loss,
  accuracy, error, split;
- ``stability_summary.csv``: one row per pair: family, rewind, parent, run_a, run_b, split,
  error_barrier, loss_barrier, loss_barrier_frankle, acc_a, acc_b, mean_acc, stable;
- ``stability.png``: error barrier and accuracy against the rewind step, one line per family.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser, check_at_least
from analysis.interpolate import split_data
from analysis.plotting import new_figure, save_figure
from analysis.runs import Run, check_same_architecture
from landscape.curves import barrier_above_chord, barrier_max_minus_mean
from landscape.interpolate import interpolate
from sparse_training.errors import UserError, cli_entry

FAMILY_OF_PARENT = {"prune": "lottery ticket", "dense": "dense"}
FAMILY_COLORS = {"lottery ticket": "#1f77b4", "dense": "#222222"}
CURVE_COLUMNS = ["family", "rewind", "parent", "run_a", "run_b", "alpha", "loss", "accuracy", "error", "split"]
SUMMARY_COLUMNS = ["family", "rewind", "parent", "run_a", "run_b", "split", "error_barrier", "loss_barrier",
                   "loss_barrier_frankle", "acc_a", "acc_b", "mean_acc", "stable"]


@dataclass(frozen=True)
class Pair:
    """Two copies rewound to the same step of the same parent, trained with different data orders."""

    family: str
    rewind: int
    parent: str
    a: Run
    b: Run


def find_pairs(runs: list[Run]) -> list[Pair]:
    """Consecutive-seed pairs of complete lottery runs sharing parent and rewind step, sorted by family and k."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        if r.method == "lottery" and r.parent:
            groups.setdefault((r.parent, int(r.config.get("rewind", 0))), []).append(r)
    pairs = []
    for (parent, k), members in groups.items():
        members = sorted(members, key=lambda r: (r.seed, r.run_id))
        family = FAMILY_OF_PARENT.get(members[0].config.get("parent_method", "prune"), "lottery ticket")
        for a, b in zip(members[0::2], members[1::2]):
            pairs.append(Pair(family, k, parent, a, b))
    if not pairs:
        raise UserError("no two complete lottery runs share a parent and a rewind step; train the stability preset "
                        "first (python -m sparse_training.suite --preset stability --out RUNS).")
    return sorted(pairs, key=lambda p: (p.family, p.rewind, p.a.seed))


def measure_pair(pair: Pair, data, alphas: np.ndarray, split: str, stable: float, device) -> tuple[pd.DataFrame, dict]:
    """Loss and error along the line between a pair's ends; its rows and summary row."""
    ends = [r.checkpoint("end")["model"] for r in (pair.a, pair.b)]
    try:
        res = interpolate(pair.a.build(), ends[0], ends[1], data, alphas=alphas, device=device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"cannot interpolate {pair.a.run_id} -> {pair.b.run_id} ({str(exc).splitlines()[0]}).") from None
    error = 1.0 - res.accuracy
    frame = pd.DataFrame({"family": pair.family, "rewind": pair.rewind, "parent": pair.parent,
                          "run_a": pair.a.run_id, "run_b": pair.b.run_id, "alpha": alphas, "loss": res.loss,
                          "accuracy": res.accuracy, "error": error, "split": split})
    err_barrier = barrier_max_minus_mean(alphas, error)
    row = {"family": pair.family, "rewind": pair.rewind, "parent": pair.parent, "run_a": pair.a.run_id,
           "run_b": pair.b.run_id, "split": split, "error_barrier": err_barrier,
           "loss_barrier": barrier_above_chord(alphas, res.loss),
           "loss_barrier_frankle": barrier_max_minus_mean(alphas, res.loss),
           "acc_a": res.accuracy[0], "acc_b": res.accuracy[-1],
           "mean_acc": 0.5 * (res.accuracy[0] + res.accuracy[-1]), "stable": bool(err_barrier < stable)}
    return frame, row


def compute(cmd: Command) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every pair of the runs directory, measured."""
    args = cmd.args
    check_at_least("--points", args.points, 2)
    if not 0 < args.stable < 1:
        raise UserError(f"--stable must lie in (0, 1), got {args.stable}.")
    pairs = find_pairs(cmd.selected())
    check_same_architecture([r for p in pairs for r in (p.a, p.b)])
    device = cmd.device
    data = split_data(pairs[0].a.dataset(args.data_dir), args.split, args.examples)
    alphas = np.linspace(0.0, 1.0, args.points)
    frames, rows = [], []
    for pair in tqdm(pairs, desc="pairs", unit="pair", disable=args.quiet, file=sys.stderr):
        frame, row = measure_pair(pair, data, alphas, args.split, args.stable, device)
        frames.append(frame)
        rows.append(row)
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS], pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def by_rewind(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean error barrier, loss barrier and accuracy per family and rewind step (over pairs)."""
    g = summary.groupby(["family", "rewind"])
    return g.agg(pairs=("error_barrier", "size"), error_barrier=("error_barrier", "mean"),
                 loss_barrier=("loss_barrier", "mean"), mean_acc=("mean_acc", "mean")).reset_index()


def stable_from(summary: pd.DataFrame, threshold: float = 0.02) -> dict[str, int | None]:
    """Per family, the smallest rewind step from which the mean error barrier stays below ``threshold`` (None if never)."""
    out: dict[str, int | None] = {}
    for family, g in by_rewind(summary).groupby("family"):
        g = g.sort_values("rewind")
        ok = (g["error_barrier"] < threshold).to_numpy()
        steps = g["rewind"].to_numpy()
        first = next((int(steps[i]) for i in range(len(ok)) if ok[i:].all()), None)
        out[str(family)] = first
    return out


def plot_stability(summary: pd.DataFrame, path, split: str) -> list:
    """Error barrier and accuracy against the rewind step (symlog x so k = 0 shows)."""
    table = by_rewind(summary)
    fig, axes = new_figure(1, 2, figsize=(9.5, 3.6))
    for family, g in table.groupby("family"):
        g = g.sort_values("rewind")
        color = FAMILY_COLORS.get(str(family), "#17becf")
        axes[0].plot(g["rewind"], 100 * g["error_barrier"], "-o", color=color, label=family)
        axes[1].plot(g["rewind"], 100 * g["mean_acc"], "-o", color=color, label=family)
        pts = summary[summary["family"] == family]
        axes[0].scatter(pts["rewind"], 100 * pts["error_barrier"], s=10, color=color, alpha=0.5)
    axes[0].axhline(2.0, color="0.5", ls=":", lw=0.8)
    axes[0].set_ylabel(f"{split} error barrier (pp)")
    axes[0].set_title("instability: max error on the line - endpoints' mean", fontsize=9)
    axes[1].set_ylabel(f"{split} accuracy of the copies (%)")
    for ax in axes:
        ax.set_xscale("symlog", linthresh=50)
        ax.set_xlabel("rewind step k")
        ax.legend()
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.stability``."""
    parser = analysis_parser(
        "stability", "Stability to SGD noise (Frankle et al. 2020): the error barrier between two copies rewound "
                     "to step k and trained with different data orders, and their accuracy, against k, for lottery "
                     "tickets and dense networks (runs of the stability preset).")
    parser.add_argument("--points", type=int, default=11, help="evenly spaced alphas in [0, 1]")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="data the barrier is measured on")
    parser.add_argument("--examples", type=int, default=None,
                        help="use a fixed subset of this many examples of the split (default: all)")
    parser.add_argument("--stable", type=float, default=0.02,
                        help="error barrier below which a pair counts as stable (Frankle et al.: 2%%)")
    return parser


def report(summary: pd.DataFrame, split: str, stable: float) -> str:
    """The barrier and accuracy by rewind step, and from which step each family is stable."""
    lines = [f"error barrier ({split}) and accuracy by rewind step (mean over pairs):",
             by_rewind(summary).to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    for family, k in stable_from(summary, stable).items():
        lines.append(f"{family}: " + (f"stable (error barrier < {stable:g}) from rewind step {k} on."
                                      if k is not None else f"not stable at any measured rewind step (< {stable:g})."))
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the stability CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    curves, summary = compute(cmd)
    split, stable = cmd.args.split, cmd.args.stable
    cmd.write({"stability.csv": curves, "stability_summary.csv": summary},
              {"stability.png": lambda path: plot_stability(summary, path, split)}, report=report(summary, split, stable))
    return 0


if __name__ == "__main__":
    sys.exit(main())
