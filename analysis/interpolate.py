"""Loss and accuracy along straight lines between checkpoints; CLI: ``python -m analysis.interpolate runs/``.

Evci et al. (2022), Section 5 / Figure 7: a lottery ticket sits in the basin of the pruning solution
it came from (the loss stays low on the line from the ticket's start or end to that solution), while
scratch and RigL runs land in other basins (a barrier rises between them).

A path goes from point A (alpha = 0) to point B (alpha = 1); the model at alpha is
``(1 - alpha) A + alpha B`` for every parameter and buffer (``landscape.interpolate.interpolate``).
By default, every lottery, scratch, scratch+, rigl, rigl+ and set run with a pruning solution (its
parent prune run) gets two paths: its *start* to the solution's end, and its *end* to the solution's
end. ``--from RUN_ID:POINT --to RUN_ID:POINT`` (repeatable, paired in order) asks for other paths, with
POINT one of ``start``, ``end``, a step number, or ``STEP:pre`` / ``STEP:post`` (RigL mask updates).

Loss is the mean cross-entropy in eval mode over ``--split`` (default **train**: Evci et al.'s Fig. 7
shows the training loss; all training examples unless ``--examples N`` takes a fixed subset, the
first N of the trainer's fixed permutation, so ``--examples 1000`` is the metrics batch). With
``--recalibrate-bn`` BatchNorm statistics are recomputed at every point from the training inputs used.

Outputs (in ``<runs>/_analysis`` or ``--out``):

- ``interpolation.csv``: one row per (path, alpha): path_id, path, run_id, method, seed, from_point,
  to_point, alpha, loss, accuracy, split;
- ``interpolation_summary.csv``: one row per path: path_id, path, run_id, method, seed, from, to, split,
  loss_at_0, loss_at_1, max_loss (over alpha in [0, 1]), barrier (see :func:`barrier`), acc_at_0, acc_at_1;
- ``interpolation.png``: loss against alpha, a panel per kind of path, a line per run coloured by method.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser, check_at_least
from analysis.plotting import method_color, method_rank, new_figure, order_methods, save_figure
from analysis.runs import Run, check_same_architecture, pruning_solution
from landscape.curves import barrier_above_chord
from landscape.interpolate import interpolate
from sparse_training.data import Dataset
from sparse_training.errors import UserError, cli_entry
from sparse_training.metrics import metric_indices

# Runs that get default paths to their pruning solution.
PATH_METHODS = ("lottery", "scratch", "scratch+", "rigl", "rigl+", "set")
START_PATH = "start->pruning solution"
END_PATH = "end->pruning solution"
CUSTOM_PATH = "custom"
ALPHA_RANGE = (-0.2, 1.2)
DEFAULT_POINTS = 29
CURVE_COLUMNS = ["path_id", "path", "run_id", "method", "seed", "from_point", "to_point", "alpha", "loss",
                 "accuracy", "split"]
SUMMARY_COLUMNS = ["path_id", "path", "run_id", "method", "seed", "from", "to", "split", "loss_at_0", "loss_at_1",
                   "max_loss", "barrier", "acc_at_0", "acc_at_1"]


# --- pure math --------------------------------------------------------------------------------
def alpha_grid(points: int = DEFAULT_POINTS, lo: float = ALPHA_RANGE[0], hi: float = ALPHA_RANGE[1]) -> np.ndarray:
    """``points`` evenly spaced alphas on [lo, hi], plus 0 and 1 exactly when the grid misses them.

    With the defaults (29 points on [-0.2, 1.2], step 0.05) 0 and 1 are grid points already.
    """
    check_at_least("--points", points, 2)
    grid = np.round(np.linspace(lo, hi, points), 12)
    return np.union1d(grid, [0.0, 1.0])


def _index_of(alphas: np.ndarray, value: float) -> int:
    hits = np.flatnonzero(np.isclose(alphas, value, rtol=0, atol=1e-9))
    if len(hits) == 0:
        raise ValueError(f"the alpha grid does not contain {value}.")
    return int(hits[0])


def barrier(alphas: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray) -> float:
    """The loss barrier of a path: ``max over alpha in [0, 1] of loss(alpha) - ((1-alpha) loss(0) + alpha loss(1))``.

    The height of the curve above the chord between its endpoints (Entezari et al. 2022; Frankle et
    al. 2020 measure instead the maximum minus the endpoints' mean, see
    ``landscape.curves.barrier_max_minus_mean``); 0 for a convex (or straight) curve. ``alphas``
    must contain 0 and 1.
    """
    return barrier_above_chord(alphas, losses)


# --- points and paths -------------------------------------------------------------------------
@dataclass(frozen=True)
class PointSpec:
    """A checkpoint of a run: ``which`` is 'start', 'end' or a step; ``phase`` '', 'pre' or 'post'."""

    run_id: str
    which: str | int
    phase: str = ""

    @property
    def label(self) -> str:
        """``RUN_ID:start``, ``RUN_ID:end``, ``RUN_ID:STEP`` or ``RUN_ID:STEP:pre``."""
        return f"{self.run_id}:{self.which}" + (f":{self.phase}" if self.phase else "")


def parse_point(text: str) -> PointSpec:
    """Parse ``RUN_ID:start|end|STEP[:pre|post]`` (run ids never contain ':')."""
    parts = text.strip().split(":")
    bad = UserError(f"'{text}' is not a checkpoint; write RUN_ID:start, RUN_ID:end, RUN_ID:STEP or RUN_ID:STEP:pre|post.")
    if len(parts) not in (2, 3) or not parts[0]:
        raise bad
    run_id, which = parts[0], parts[1]
    phase = parts[2] if len(parts) == 3 else ""
    if which in ("start", "end"):
        if phase:
            raise bad
        return PointSpec(run_id, which)
    if not which.isdigit() or phase not in ("", "pre", "post"):
        raise bad
    return PointSpec(run_id, int(which), phase)


@dataclass(frozen=True)
class PathSpec:
    """A path from ``a`` (alpha 0) to ``b`` (alpha 1), reported under ``run`` (its method and seed)."""

    kind: str
    run: Run
    a: PointSpec
    b: PointSpec

    @property
    def path_id(self) -> str:
        return f"{self.a.label}->{self.b.label}"


def default_paths(selected: Sequence[Run], pool: Sequence[Run]) -> list[PathSpec]:
    """Start->pruning solution and end->pruning solution for every selected run of PATH_METHODS."""
    paths = []
    for run in selected:
        if run.method not in PATH_METHODS:
            continue
        sol = pruning_solution(list(pool), run)
        if sol is None:
            if run.parent:
                print(f"warning: {run.run_id}'s pruning solution {run.parent} is not a complete run here; "
                      "skipping it", file=sys.stderr)
            continue
        target = PointSpec(sol.run_id, "end")
        paths.append(PathSpec(START_PATH, run, PointSpec(run.run_id, "start"), target))
        paths.append(PathSpec(END_PATH, run, PointSpec(run.run_id, "end"), target))
    if not paths:
        raise UserError("no selected run has a pruning solution to interpolate to (lottery, scratch, scratch+, "
                        "rigl, rigl+ or set runs whose parent prune run is complete); use --from/--to for other paths.")
    return paths


def custom_paths(froms: Sequence[str], tos: Sequence[str], pool: Sequence[Run]) -> list[PathSpec]:
    """Paths from ``--from``/``--to`` pairs; each run id must name a complete run of the pool."""
    if len(froms) != len(tos):
        raise UserError(f"give --from and --to in pairs; got {len(froms)} --from and {len(tos)} --to.")
    by_id = {r.run_id: r for r in pool}
    paths = []
    for f, t in zip(froms, tos):
        a, b = parse_point(f), parse_point(t)
        for p in (a, b):
            if p.run_id not in by_id:
                raise UserError(f"no complete run '{p.run_id}' in the runs directory (named in {p.label}).")
        path = PathSpec(CUSTOM_PATH, by_id[a.run_id], a, b)
        if all(p.path_id != path.path_id for p in paths):  # a path asked for twice is computed once
            paths.append(path)
    return paths


def path_runs(paths: Sequence[PathSpec], pool: Sequence[Run]) -> list[Run]:
    """Every run a path touches, once."""
    by_id = {r.run_id: r for r in pool}
    ids = dict.fromkeys(pid for p in paths for pid in (p.run.run_id, p.a.run_id, p.b.run_id))
    return [by_id[i] for i in ids]


# --- evaluation ---------------------------------------------------------------------------------
def split_data(dataset: Dataset, split: str, examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a split; with ``examples``, the first ``examples`` of the trainer's fixed permutation."""
    if split not in ("train", "test"):
        raise UserError(f"--split must be train or test, not '{split}'.")
    x, y = (dataset.x_train, dataset.y_train) if split == "train" else (dataset.x_test, dataset.y_test)
    if examples is None:
        return x, y
    check_at_least("--examples", examples, 1)
    idx = metric_indices(len(x), examples)
    return x[idx], y[idx]


def evaluate_path(path: PathSpec, runs: dict[str, Run], data: tuple[torch.Tensor, torch.Tensor],
                  alphas: np.ndarray, *, recalibrate: bool = False,
                  recalibration_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                  device: torch.device | str = "cpu") -> pd.DataFrame:
    """Loss and accuracy at every alpha of one path, as rows of ``interpolation.csv`` (without split)."""
    ckpt = {p.label: runs[p.run_id].checkpoint(p.which, p.phase) for p in (path.a, path.b)}
    model = path.run.build()
    try:
        result = interpolate(model, ckpt[path.a.label]["model"], ckpt[path.b.label]["model"], data, alphas=alphas,
                             recalibrate_bn=recalibrate, recalibration_data=recalibration_data, device=device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"cannot interpolate {path.a.label} -> {path.b.label}: the checkpoints do not fit one "
                        f"architecture ({str(exc).splitlines()[0]}).") from None
    frame = result.to_frame()
    frame.insert(0, "path_id", path.path_id)
    frame.insert(1, "path", path.kind)
    frame.insert(2, "run_id", path.run.run_id)
    frame.insert(3, "method", path.run.method)
    frame.insert(4, "seed", path.run.seed)
    frame.insert(5, "from_point", path.a.label)
    frame.insert(6, "to_point", path.b.label)
    return frame


def summarize(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per path: endpoint losses and accuracies, the highest loss on [0, 1] and the barrier."""
    rows = []
    for path_id, g in curves.groupby("path_id", sort=False):
        a, loss, acc = g["alpha"].to_numpy(), g["loss"].to_numpy(), g["accuracy"].to_numpy()
        i0, i1 = _index_of(a, 0.0), _index_of(a, 1.0)
        inside = (a >= -1e-9) & (a <= 1 + 1e-9)
        first = g.iloc[0]
        rows.append({"path_id": path_id, "path": first["path"], "run_id": first["run_id"], "method": first["method"],
                     "seed": first["seed"], "from": first["from_point"], "to": first["to_point"],
                     "split": first["split"], "loss_at_0": loss[i0], "loss_at_1": loss[i1],
                     "max_loss": float(loss[inside].max()), "barrier": barrier(a, loss),
                     "acc_at_0": acc[i0], "acc_at_1": acc[i1]})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def barrier_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of the barrier (and endpoint losses) by kind of path and method, over seeds."""
    if summary.empty:
        return pd.DataFrame(columns=["path", "method", "n", "barrier_mean", "barrier_std", "loss_at_0", "max_loss"])
    g = summary.groupby(["path", "method"], sort=False)
    out = g.agg(n=("barrier", "size"), barrier_mean=("barrier", "mean"), barrier_std=("barrier", "std"),
                loss_at_0=("loss_at_0", "mean"), max_loss=("max_loss", "mean")).reset_index()
    return out.sort_values(["path", "method"], key=lambda s: s.map(method_rank) if s.name == "method" else s)


# --- picture ----------------------------------------------------------------------------------
def plot_paths(curves: pd.DataFrame, path: str, split: str) -> list:
    """Loss against alpha: a panel per kind of path, a line per path coloured by method."""
    kinds = list(dict.fromkeys(curves["path"]))
    fig, axes = new_figure(1, len(kinds), figsize=(4.6 * len(kinds), 3.6), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        sub = curves[curves["path"] == kind]
        seen: dict[str, object] = {}
        for _, g in sub.groupby("path_id", sort=False):
            method = g["method"].iloc[0]
            (line,) = ax.plot(g["alpha"], g["loss"], color=method_color(method), lw=1.2, alpha=0.8)
            seen.setdefault(method, line)
        for x in (0.0, 1.0):
            ax.axvline(x, color="0.6", lw=0.8, ls=":")
        ax.set_xlabel("alpha (0: run's point, 1: pruning solution)" if kind != CUSTOM_PATH else "alpha (0: --from, 1: --to)")
        ax.set_title(kind)
        order = order_methods(seen)
        ax.legend([seen[m] for m in order], order, loc="upper right")
    axes[0][0].set_ylabel(f"{split} loss")
    return save_figure(fig, path)


# --- CLI ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.interpolate``."""
    parser = analysis_parser(
        "interpolate", "Loss and accuracy along straight lines between checkpoints (Evci et al. 2022, Fig. 7): by "
                       "default from each lottery/scratch/scratch+/rigl/rigl+/set run's start and end to its pruning "
                       "solution; the barrier of each path is summarized.")
    add_path_args(parser, "path", " in order", "; the selectors --method/--seed/--run then do not apply")
    parser.add_argument("--split", default="train", choices=("train", "test"),
                        help="data the loss is measured on (Evci et al. Fig. 7 uses the training loss)")
    parser.add_argument("--examples", type=int, default=None,
                        help="use a fixed subset of this many examples of the split (default: all)")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS,
                        help="alphas evenly spaced on [-0.2, 1.2] (0 and 1 are added when missing)")
    parser.add_argument("--recalibrate-bn", action="store_true",
                        help="recompute BatchNorm statistics from the training inputs at every point")
    return parser


def add_path_args(parser: argparse.ArgumentParser, noun: str, paired: str = "", note: str = "") -> None:
    """``--from``/``--to``: custom paths between two checkpoints each (interpolate, curve)."""
    parser.add_argument("--from", dest="from_points", action="append", default=None, metavar="RUN_ID:POINT",
                        help=f"start of a custom {noun} (repeatable, paired with --to{paired}); POINT is start, end, "
                             f"a step, or STEP:pre / STEP:post{note}")
    parser.add_argument("--to", dest="to_points", action="append", default=None, metavar="RUN_ID:POINT",
                        help=f"end of a custom {noun} (repeatable)")


def check_paired(args: argparse.Namespace, noun: str) -> None:
    """``--from`` without ``--to`` (or the other way round) is a UserError."""
    if bool(args.from_points) != bool(args.to_points):
        raise UserError(f"--from and --to go together; give both (once per {noun}).")


def select_paths(cmd: Command) -> tuple[list[PathSpec], list[Run]]:
    """The paths the arguments ask for and the runs they touch (architectures checked)."""
    args = cmd.args
    check_paired(args, "path")
    if args.from_points:
        pool = cmd.pool()
        paths = custom_paths(args.from_points, args.to_points, pool)
    else:
        selected = cmd.selected()
        pool = cmd.pool()
        paths = default_paths(selected, pool)
    runs = path_runs(paths, pool)
    check_same_architecture(runs)
    return paths, runs


def compute(cmd: Command) -> pd.DataFrame:
    """All paths of the arguments, evaluated: the rows of ``interpolation.csv``."""
    args = cmd.args
    alphas = alpha_grid(args.points)
    paths, runs = select_paths(cmd)
    device = cmd.device
    dataset = runs[0].dataset(args.data_dir)
    data = split_data(dataset, args.split, args.examples)
    recal = split_data(dataset, "train", args.examples) if args.recalibrate_bn else None
    by_id = {r.run_id: r for r in runs}
    frames = []
    for path in tqdm(paths, desc="paths", unit="path", disable=args.quiet, file=sys.stderr):
        frames.append(evaluate_path(path, by_id, data, alphas, recalibrate=args.recalibrate_bn,
                                    recalibration_data=recal, device=device))
    curves = pd.concat(frames, ignore_index=True)
    curves["split"] = args.split
    return curves[CURVE_COLUMNS]


def format_barriers(table: pd.DataFrame) -> str:
    """The barrier table as aligned text."""
    if table.empty:
        return "(no path)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the interpolation CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    curves = compute(cmd)
    summary = summarize(curves)
    split = cmd.args.split
    cmd.write({"interpolation.csv": curves, "interpolation_summary.csv": summary},
              {"interpolation.png": lambda path: plot_paths(curves, path, split)},
              report=f"loss barrier along the paths ({split} split; mean over seeds):\n"
                     + format_barriers(barrier_table(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
