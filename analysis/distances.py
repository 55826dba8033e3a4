"""L2 distances between runs' checkpoints, streamed block-wise; CLI: ``python -m analysis.distances runs/``.

A *point* is one checkpoint of one run, seen as the vector of all its parameters (weights,
zeros off the mask included, and biases; never BatchNorm running statistics), in the same
coordinates for every run of one architecture. The pairwise distance matrix is computed a block
of rows against a block of columns at a time, so memory holds about ``2 * block`` vectors plus
the N x N matrix, whatever the number of checkpoints (Evci et al. 2022, Section 5 / Figure 6).

Outputs (in ``<runs>/_analysis`` or ``--out``):

- ``distances.csv``: one row per unordered pair of points (point_a, point_b, run_a, run_b,
  method_a, method_b, kind_a, kind_b, distance);
- ``distance_to_pruning.csv``: each point's distance to its family's pruning solution (run_id,
  method, seed, point, kind, pruning_run, distance); prune runs get their own end and, for seeds
  other than the family's, also the seed-0 solution;
- ``distance_to_pruning.png``: those distances by method, hollow markers for starts, filled for ends.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser, check_at_least
from analysis.plotting import method_color, new_figure, order_methods, save_figure
from analysis.runs import Run, check_same_architecture, family_solution, pruning_solution
from landscape.params import ParamSpace
from sparse_training.errors import UserError, cli_entry
from sparse_training.io import load_state_dict

# Methods whose runs share the sparse network's architecture; small-dense has its own width.
DEFAULT_METHODS = ("prune", "lottery", "scratch", "scratch+", "rigl", "rigl+", "set", "dense")
DEFAULT_BLOCK = 8
DISTANCE_COLUMNS = ["point_a", "point_b", "run_a", "run_b", "method_a", "method_b", "kind_a", "kind_b", "distance"]
TO_PRUNING_COLUMNS = ["run_id", "method", "seed", "point", "kind", "pruning_run", "distance"]


@dataclass(frozen=True)
class Point:
    """One parameter vector: the checkpoint at ``path`` (``kind`` is 'start', 'end' or a step)."""

    path: Path
    label: str
    run_id: str = ""
    method: str = ""
    seed: int = 0
    kind: str = ""

    @property
    def name(self) -> str:
        """The legend name of the point, e.g. 'lottery-start' or 'prune-end'."""
        return f"{self.method}-{self.kind}"

    @classmethod
    def of_run(cls, run: Run, which: str) -> Point:
        """The checkpoint ``which`` ('start', 'end' or a step number) of ``run``."""
        step: str | int = which if which in ("start", "end") else int(which)
        return cls(run.dir.checkpoint_path(step), f"{run.run_id}:{which}", run.run_id, run.method, run.seed, which)


class VectorLoader:
    """Loads checkpoints as float64 parameter vectors, all in the coordinates of the first one loaded."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.space: ParamSpace | None = None
        self.first: Path | None = None

    def _state(self, path: str | Path) -> dict[str, torch.Tensor]:
        state = load_state_dict(path)
        space = ParamSpace(state)  # all parameters, no masks: one coordinate per weight, zeros included
        if self.space is None:
            self.space, self.first = space, Path(path)
        elif space.names != self.space.names or space.shapes != self.space.shapes:
            raise UserError(f"checkpoint {path} holds other parameters than {self.first} (different architectures); "
                            "select runs of one architecture with --method/--run.")
        return state

    def __call__(self, path: str | Path) -> torch.Tensor:
        """The checkpoint's parameter vector (float64, on the loader's device)."""
        state = self._state(path)
        assert self.space is not None
        return self.space.to_vector(state, dtype=torch.float64, device=self.device)

    def into(self, path: str | Path, out: torch.Tensor) -> None:
        """Write the checkpoint's parameter vector into the 1-D tensor ``out`` without a temporary vector."""
        state = self._state(path)
        assert self.space is not None
        if out.numel() != self.space.size:
            raise UserError(f"checkpoint {path} holds other parameters than {self.first} (different architectures); "
                            "select runs of one architecture with --method/--run.")
        for name, sl in self.space.slices.items():
            out[sl].copy_(state[name].reshape(-1))


def _as_point(p: Point | str | Path) -> Point:
    return p if isinstance(p, Point) else Point(Path(p), str(p))


def _blocks(n: int, block: int) -> list[range]:
    return [range(i, min(i + block, n)) for i in range(0, n, block)]


def _fill(buf: torch.Tensor | None, rows: range, size: int, points: Sequence[Point],
          loader: VectorLoader) -> torch.Tensor:
    """Load the vectors of ``rows`` into ``buf`` (``size`` rows, allocated on first use), one at a time."""
    for k, i in enumerate(rows):
        if buf is None:
            first = loader(points[i].path)
            buf = first.new_empty((size, first.numel()))
            buf[k].copy_(first)
            del first
        else:
            loader.into(points[i].path, buf[k])
    assert buf is not None
    return buf


def distance_matrix(points: Sequence[Point | str | Path], block: int = DEFAULT_BLOCK,
                    device: str | torch.device = "cpu", progress: bool = False) -> tuple[list[str], np.ndarray]:
    """Pairwise L2 distances among checkpoints, streamed: ``(labels, D)`` with D an N x N float64 array.

    ``points`` are :class:`Point` objects or checkpoint paths (then labelled by their path). Rows are
    loaded ``block`` vectors at a time and each later block of columns is streamed past them, so
    memory holds a row block and a column block (``2 * block`` vectors) plus the matrix, however
    many points there are; differences are taken exactly in float64 (no
    ``|a|^2 + |b|^2 - 2ab`` cancellation), so D is symmetric with a zero diagonal.
    """
    pts = [_as_point(p) for p in points]
    if not pts:
        raise UserError("there are no checkpoints to compare; select some runs.")
    check_at_least("--block", block, 1)
    labels = [p.label for p in pts]
    if len(set(labels)) != len(labels):
        raise ValueError("point labels must be unique.")
    n = len(pts)
    dist = np.zeros((n, n), dtype=np.float64)
    blocks = _blocks(n, block)
    total = sum(len(b) for b in blocks) + sum(len(c) for i in range(len(blocks)) for c in blocks[i + 1:])
    loader = VectorLoader(device)
    bar = tqdm(total=total, desc="distances", unit="ckpt", disable=not progress, file=sys.stderr)

    size = min(block, n)
    row_buf: torch.Tensor | None = None
    col_buf: torch.Tensor | None = None
    for bi, rows in enumerate(blocks):
        row_buf = _fill(row_buf, rows, size, pts, loader)
        bar.update(len(rows))
        r = row_buf[: len(rows)]
        dist[rows.start:rows.stop, rows.start:rows.stop] = _pairwise(r, r)
        for cols in blocks[bi + 1:]:
            col_buf = _fill(col_buf, cols, size, pts, loader)
            bar.update(len(cols))
            d = _pairwise(r, col_buf[: len(cols)])
            dist[rows.start:rows.stop, cols.start:cols.stop] = d
            dist[cols.start:cols.stop, rows.start:rows.stop] = d.T
    bar.close()
    np.fill_diagonal(dist, 0.0)
    return labels, dist


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Exact Euclidean distances between the rows of ``a`` and ``b``.

    ``cdist`` without the matrix-product shortcut sums squared differences pair by pair: no
    cancellation (identical checkpoints are exactly 0 apart) and no temporary of the vectors' size.
    """
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").cpu().numpy()


def distances_frame(points: Sequence[Point], dist: np.ndarray) -> pd.DataFrame:
    """Tidy table of the matrix: one row per unordered pair of points."""
    ia, ib = np.triu_indices(len(points), k=1)
    return pd.DataFrame({
        "point_a": [points[i].label for i in ia], "point_b": [points[j].label for j in ib],
        "run_a": [points[i].run_id for i in ia], "run_b": [points[j].run_id for j in ib],
        "method_a": [points[i].method for i in ia], "method_b": [points[j].method for j in ib],
        "kind_a": [points[i].kind for i in ia], "kind_b": [points[j].kind for j in ib],
        "distance": dist[ia, ib],
    }, columns=DISTANCE_COLUMNS)


# --- families ------------------------------------------------------------------------------
def solution_pairs(pool: Sequence[Run], selected: Sequence[Run]) -> list[tuple[Run, Run]]:
    """``(run, pruning solution)`` pairs: each run's own solution and, for other prune seeds, the family's."""
    pairs = []
    for run in selected:
        own = pruning_solution(list(pool), run)
        if own is not None:
            pairs.append((run, own))
        if run.method == "prune":
            root = family_solution(pool, run)
            if root is not None and root.run_id != run.run_id:
                pairs.append((run, root))
    return pairs


# --- selection shared with analysis.mds -------------------------------------------------------
def add_point_args(parser: argparse.ArgumentParser) -> None:
    """``--points`` and ``--block``, the options of every CLI built on the distance matrix."""
    parser.add_argument("--points", default="start,end",
                        help="checkpoints of each run, comma-separated: start, end or step numbers")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK,
                        help="vectors per block; memory holds two blocks of vectors, whatever the number of points")


def parse_points(text: str) -> list[str]:
    """The checkpoint names of ``--points`` ('start', 'end' or step numbers)."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for k in kinds:
        if k not in ("start", "end") and not k.isdigit():
            raise UserError(f"--points takes start, end or step numbers separated by commas, not '{k}'.")
    if not kinds:
        raise UserError("--points names no checkpoint; use e.g. --points start,end.")
    return list(dict.fromkeys(kinds))


@dataclass(frozen=True)
class Selection:
    """What a distance CLI compares: the selected runs, their points, and the pruning solutions."""

    runs: list[Run]
    points: list[Point]
    pairs: list[tuple[Run, Run]]


def select_points(cmd: Command) -> Selection:
    """Runs and points from the CLI arguments; pruning-solution ends are added as 'prune-end' points."""
    kinds = parse_points(cmd.args.points)
    check_at_least("--block", cmd.args.block, 1)
    selected = cmd.selected(method=DEFAULT_METHODS)
    pool = cmd.pool()
    pairs = solution_pairs(pool, selected)
    references = {sol.run_id: sol for _, sol in pairs}
    check_same_architecture(list(selected) + list(references.values()))
    points: list[Point] = []
    for run in selected:
        for kind in kinds:
            p = Point.of_run(run, kind)
            if p.path.is_file():
                points.append(p)
            else:
                print(f"warning: {run.run_id} has no checkpoint '{kind}'; skipping it", file=sys.stderr)
    labels = {p.label for p in points}
    for sol in references.values():
        p = Point.of_run(sol, "end")
        if p.label not in labels:
            points.append(p)
            labels.add(p.label)
    if len(points) < 2:
        raise UserError("fewer than two checkpoints match the selection; select more runs or --points.")
    return Selection(list(selected), points, pairs)


def to_pruning_frame(sel: Selection, labels: Sequence[str], dist: np.ndarray) -> pd.DataFrame:
    """Each selected point's distance to its pruning solution(s), one row per (point, solution)."""
    index = {label: i for i, label in enumerate(labels)}
    rows = []
    for run, sol in sel.pairs:
        j = index.get(f"{sol.run_id}:end")
        if j is None:
            continue
        for p in sel.points:
            if p.run_id == run.run_id and p.label in index:
                rows.append({"run_id": run.run_id, "method": run.method, "seed": run.seed, "point": p.name,
                             "kind": p.kind, "pruning_run": sol.run_id, "distance": float(dist[index[p.label], j])})
    return pd.DataFrame(rows, columns=TO_PRUNING_COLUMNS)


def plot_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows a summary shows: derived runs against their solution, prune runs against the family's.

    Prune runs of other seeds are the "different pruning solutions"; the family's own end is left
    out (its distance to itself is zero).
    """
    prune = frame["method"] == "prune"
    others = frame[prune & (frame["run_id"] != frame["pruning_run"])]
    roots = set(others["pruning_run"]) if len(others) else set(frame[prune]["pruning_run"])
    keep = ~prune | frame["pruning_run"].isin(roots)
    self_end = prune & (frame["run_id"] == frame["pruning_run"]) & (frame["kind"] == "end")
    return frame[keep & ~self_end]


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std, count) distance to the pruning solution by method and checkpoint."""
    rows = plot_rows(frame)
    if rows.empty:
        return pd.DataFrame(columns=["method", "kind", "mean", "std", "n"])
    out = rows.groupby(["method", "kind"])["distance"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"count": "n"})
    rank = {m: i for i, m in enumerate(order_methods(out["method"]))}
    return out.sort_values(["method", "kind"], key=lambda s: s.map(rank) if s.name == "method" else s)


def plot_to_pruning(frame: pd.DataFrame, path: Path) -> list[Path]:
    """Strip plot with mean bars: distance to the pruning solution by method, start (hollow) and end (filled)."""
    rows = plot_rows(frame)
    methods = order_methods(rows["method"])
    kinds = list(dict.fromkeys(sorted(rows["kind"], key=lambda k: (k != "start", k != "end", k))))
    fig, ax = new_figure(figsize=(1.2 + 1.1 * max(len(methods), 1), 3.6))
    width = 0.8 / max(len(kinds), 1)
    for i, method in enumerate(methods):
        color = method_color(method)
        for k, kind in enumerate(kinds):
            d = rows[(rows["method"] == method) & (rows["kind"] == kind)]["distance"].to_numpy()
            if len(d) == 0:
                continue
            x = i - 0.4 + width * (k + 0.5)
            filled = kind != "start"
            ax.bar(x, d.mean(), width=width * 0.9, color=color, alpha=0.25 if filled else 0.08,
                   edgecolor=color, linewidth=1)
            jitter = np.linspace(-width * 0.25, width * 0.25, len(d)) if len(d) > 1 else np.zeros(1)
            ax.scatter(x + jitter, d, s=22, zorder=3, edgecolors=color, linewidths=1.2,
                       facecolors=color if filled else "none")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(["pruning\nsolutions" if m == "prune" else m for m in methods])
    ax.set_ylabel("L2 distance to the pruning solution")
    handles = [ax.scatter([], [], s=22, edgecolors="k", facecolors="none" if kind == "start" else "k", label=kind)
               for kind in kinds]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Distance to the pruning solution (start: hollow, end: filled)")
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.distances``."""
    parser = analysis_parser("distances", "Pairwise L2 distances between the start and end checkpoints of runs "
                             "(all parameters), and each point's distance to its family's pruning solution.")
    add_point_args(parser)
    return parser


def compute(cmd: Command) -> tuple[Selection, list[str], np.ndarray]:
    """Select the points of the CLI arguments and stream their distance matrix."""
    sel = select_points(cmd)
    labels, dist = distance_matrix(sel.points, block=cmd.args.block, device=cmd.device, progress=not cmd.args.quiet)
    return sel, labels, dist


def format_summary(table: pd.DataFrame) -> str:
    """The distance-to-pruning summary as aligned text (one line per method: mean at each checkpoint)."""
    if table.empty:
        return "(no run has a pruning solution among the selected runs)"
    wide = table.pivot(index="method", columns="kind", values="mean")
    kinds = sorted(wide.columns, key=lambda k: (k != "start", k == "end", k))
    wide = wide.loc[order_methods(wide.index), kinds]
    wide["runs"] = table.groupby("method")["n"].max()
    return wide.to_string(float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "-")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the distances CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    sel, labels, dist = compute(cmd)
    to_pruning = to_pruning_frame(sel, labels, dist)
    figures = {} if to_pruning.empty else {"distance_to_pruning.png": lambda path: plot_to_pruning(to_pruning, path)}
    cmd.write({"distances.csv": distances_frame(sel.points, dist), "distance_to_pruning.csv": to_pruning}, figures,
              report="mean L2 distance to the pruning solution:\n" + format_summary(summary_table(to_pruning)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
