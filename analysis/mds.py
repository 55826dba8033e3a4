"""2-D MDS maps of runs' start and end checkpoints (Evci et al. 2022, Figure 6); CLI: ``python -m analysis.mds runs/``.

The points and their distance matrix come from :mod:`analysis.distances` (streamed, all
parameters). The map is scikit-learn's metric MDS (SMACOF, started from classical MDS) on the
precomputed distances, or its classical MDS with ``--classical``. Outputs ``mds.csv`` (run_id,
method, seed, point, kind, x, y) and ``mds.png``: one colour and marker per method, hollow
markers for starts and filled ones for ends, a thin arrow from each run's start to its end.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.manifold import MDS, ClassicalMDS

from analysis.cli import Command, analysis_parser
from analysis.distances import Point, add_point_args, compute
from analysis.plotting import method_color, method_rank, new_figure, save_figure
from sparse_training.errors import UserError, cli_entry

MDS_COLUMNS = ["run_id", "method", "seed", "point", "kind", "x", "y"]
MARKERS = {"prune": "o", "lottery": "s", "scratch": "^", "scratch+": "v", "rigl": "D", "rigl+": "P",
           "set": "X", "dense": "*", "small-dense": "h"}


@dataclass(frozen=True)
class Embedding:
    """A 2-D map of a distance matrix and how well it keeps the distances.

    ``stress`` is the raw stress sum_{i<j} (|x_i - x_j| - D_ij)^2; ``normalized_stress`` is
    Kruskal's Stress-1, sqrt(stress / sum_{i<j} D_ij^2) (0 is perfect, 0.1 fair, 0.2 poor).
    """

    xy: np.ndarray
    stress: float
    normalized_stress: float
    method: str


def stress(dist: np.ndarray, xy: np.ndarray) -> tuple[float, float]:
    """Raw stress and Kruskal's Stress-1 of the configuration ``xy`` against the distances ``dist``."""
    iu = np.triu_indices(len(dist), k=1)
    emb = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)[iu]
    target = np.asarray(dist, dtype=np.float64)[iu]
    raw = float(((emb - target) ** 2).sum())
    total = float((target ** 2).sum())
    return raw, (float(np.sqrt(raw / total)) if total > 0 else 0.0)


def embed(dist: np.ndarray, classical: bool = False, random_state: int = 0, n_components: int = 2,
          max_iter: int = 300) -> Embedding:
    """Embed a symmetric distance matrix in ``n_components`` dimensions with scikit-learn's MDS.

    Metric MDS (SMACOF) starts from the classical solution, so it is deterministic given
    ``random_state`` and never worse than the classical map.
    """
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"expected a square distance matrix, got shape {dist.shape}.")
    dist = (dist + dist.T) / 2  # exact symmetry for sklearn's check
    if classical:
        xy = ClassicalMDS(n_components=n_components, metric="precomputed").fit_transform(dist)
    else:
        model = MDS(n_components=n_components, metric_mds=True, metric="precomputed", init="classical_mds",
                    n_init=1, max_iter=max_iter, random_state=random_state, normalized_stress=False)
        xy = model.fit_transform(dist)
    xy = np.nan_to_num(np.asarray(xy, dtype=np.float64))  # classical MDS gives NaN for negative eigenvalues
    raw, normalized = stress(dist, xy)
    return Embedding(xy, raw, normalized, "classical" if classical else "metric")


def mds_frame(points: Sequence[Point], xy: np.ndarray) -> pd.DataFrame:
    """One row per point: run_id, method, seed, point (e.g. 'lottery-start'), kind, x, y."""
    return pd.DataFrame({
        "run_id": [p.run_id for p in points], "method": [p.method for p in points],
        "seed": [p.seed for p in points], "point": [p.name for p in points],
        "kind": [p.kind for p in points], "x": xy[:, 0], "y": xy[:, 1],
    }, columns=MDS_COLUMNS)


def _kind_rank(kind: str) -> tuple[int, int]:
    return (0, 0) if kind == "start" else (2, 0) if kind == "end" else (1, int(kind) if kind.isdigit() else 0)


def plot_mds(frame: pd.DataFrame, path: Path, title: str) -> list[Path]:
    """Figure 6 of Evci et al.: hollow starts, filled ends, one marker per method, arrows start -> end."""
    fig, ax = new_figure(figsize=(6.4, 5.2))
    for _, rows in frame.groupby("run_id", sort=False):
        rows = rows.sort_values("kind", key=lambda s: s.map(_kind_rank))
        if len(rows) < 2:
            continue
        color = method_color(rows["method"].iloc[0])
        xs, ys = rows["x"].to_numpy(), rows["y"].to_numpy()
        for i in range(len(rows) - 1):
            ax.annotate("", xy=(xs[i + 1], ys[i + 1]), xytext=(xs[i], ys[i]),
                        arrowprops=dict(arrowstyle="->", color=color, lw=0.7, alpha=0.6, shrinkA=4, shrinkB=4))
    keys = frame[["method", "kind"]].drop_duplicates()
    keys = sorted(keys.itertuples(index=False), key=lambda k: (method_rank(k.method), _kind_rank(k.kind)))
    for method, kind in keys:
        rows = frame[(frame["method"] == method) & (frame["kind"] == kind)]
        color = method_color(method)
        filled = kind != "start"
        ax.scatter(rows["x"], rows["y"], s=46 if filled else 40, marker=MARKERS.get(method, "o"), zorder=3,
                   edgecolors=color, linewidths=1.4, facecolors=color if filled else "none",
                   label=f"{method}-{kind}")
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.mds``."""
    parser = analysis_parser("mds", "A 2-D MDS map of runs' start and end checkpoints from their L2 distances "
                                    "(Evci et al.'s Figure 6).")
    add_point_args(parser)
    parser.add_argument("--classical", action="store_true", help="classical MDS instead of metric MDS (SMACOF)")
    parser.add_argument("--random-state", type=int, default=0, help="seed of the metric MDS")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the MDS CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    sel, _, dist = compute(cmd)
    if len(sel.points) < 3:
        raise UserError("an MDS map needs at least three checkpoints; select more runs or --points.")
    emb = embed(dist, classical=cmd.args.classical, random_state=cmd.args.random_state)
    frame = mds_frame(sel.points, emb.xy)
    title = f"{emb.method} MDS of {len(sel.points)} checkpoints (Stress-1 {emb.normalized_stress:.3f})"
    cmd.write({"mds.csv": frame}, {"mds.png": lambda path: plot_mds(frame, path, title)},
              report=f"{emb.method} MDS of {len(sel.points)} points: stress {emb.stress:.4g}, "
                     f"normalized stress (Stress-1) {emb.normalized_stress:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
