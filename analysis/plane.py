"""Loss on the plane through three checkpoints, with the runs' projected trajectories; CLI: ``python -m analysis.plane runs/``.

Li et al. (2018), "Visualizing the Loss Landscape of Neural Nets", and Garipov et al. (2018, their
plane figures) look at the loss on a 2-D plane of parameter space. Here the plane passes through
three checkpoints ``a``, ``b``, ``c``: by default the lottery ticket's end (``a``), the scratch run's
end (``b``) and the pruning solution (``c``) of one seed's family (the lowest seed with all three, or
``--seed``; ``--method`` and ``--run`` do not apply); ``--points RUN:POINT`` three times chooses any others (POINT: ``start``, ``end``, a
step, or ``STEP:pre`` / ``STEP:post``).

Coordinates (``landscape.interpolate.plane``): ``a`` at (0, 0), ``b`` at (1, 0), ``c`` above the
a-b axis; both axes orthogonal and in units of ``|b - a|``, measured in the active coordinates of
the union of the three masks (every weight one of them uses, and the biases). A grid point is the
affine combination of the three checkpoints, so it is zero wherever all three are. The loss is the
mean cross-entropy in eval mode over ``--split`` (default train; ``--examples N`` takes the first N
of the trainer's fixed permutation); ``--recalibrate-bn`` recomputes BatchNorm statistics at every
point. Every checkpoint the three runs kept (start, periodic steps, mask-update pairs, end) is
projected onto the plane: the trajectory as the plane sees it, with its distance off the plane.

Outputs (in ``<runs>/_analysis`` or ``--out``):

- ``plane.csv``: one row per grid point: alpha, beta, loss, accuracy, split, a, b, c (the labels);
- ``plane_points.csv``: one row per projected checkpoint: kind (anchor|trajectory), role (a|b|c),
  run_id, method, point, step, alpha, beta, off_plane (distance to the plane, units of ``|b - a|``);
- ``plane.png``: contour of the loss with the three points and the trajectories.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser, check_at_least
from analysis.interpolate import PointSpec, parse_point, split_data
from analysis.plotting import method_color, new_figure, save_figure
from analysis.runs import Run, check_same_architecture, checkpoint_step, family_solution, union_masks
from landscape.interpolate import plane, project_to_plane
from landscape.params import ParamSpace
from sparse_training.errors import UserError, cli_entry

GRID_COLUMNS = ["alpha", "beta", "loss", "accuracy", "split", "a", "b", "c"]
POINT_COLUMNS = ["kind", "role", "run_id", "method", "point", "step", "alpha", "beta", "off_plane"]
ROLES = ("a", "b", "c")


def resolve_points(texts: list[str], pool: list[Run]) -> list[tuple[PointSpec, Run]]:
    """``RUN_ID:POINT`` strings as (point, run) pairs; an unknown run or missing checkpoint is a UserError."""
    by_id = {r.run_id: r for r in pool}
    out = []
    for text in texts:
        p = parse_point(text)
        if p.run_id not in by_id:
            raise UserError(f"no complete run '{p.run_id}' in the runs directory (named in {p.label}).")
        run = by_id[p.run_id]
        if not run.dir.checkpoint_path(p.which, p.phase).is_file():
            raise UserError(f"run {p.run_id} kept no checkpoint '{p.label.split(':', 1)[1]}' (named in {p.label}).")
        out.append((p, run))
    return out


def default_points(pool: list[Run], seed: int | None) -> list[tuple[PointSpec, Run]]:
    """Lottery end, scratch end and their pruning solution's end for one seed (the lowest with all three)."""
    seeds = sorted({r.seed for r in pool if r.method == "lottery"} & {r.seed for r in pool if r.method == "scratch"})
    if seed is not None:
        seeds = [s for s in seeds if s == seed]
    for s in seeds:
        lottery = next(r for r in pool if r.method == "lottery" and r.seed == s)
        scratch = next(r for r in pool if r.method == "scratch" and r.seed == s)
        solution = family_solution(pool, lottery)
        if solution is not None:
            return [(PointSpec(r.run_id, "end"), r) for r in (lottery, scratch, solution)]
    raise UserError("no seed has a complete lottery run, scratch run and pruning solution; "
                    "give three --points RUN_ID:POINT instead.")


def trajectory(run: Run) -> list[tuple[str | int, str]]:
    """Every checkpoint a run kept, in training order: start, steps (pre before post), end."""
    order = {"pre": 0, "": 1, "post": 2}
    steps = []
    for step, path in run.dir.step_checkpoints(None):
        phase = "pre" if path.stem.endswith("_pre") else "post" if path.stem.endswith("_post") else ""
        steps.append((step, phase))
    return [("start", "")] + sorted(steps, key=lambda s: (s[0], order[s[1]])) + [("end", "")]


def compute(cmd: Command) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The loss grid and the projected points."""
    args = cmd.args
    check_at_least("--grid", args.grid, 2)
    if args.margin < 0:
        raise UserError(f"--margin must not be negative, got {args.margin}.")
    pool = cmd.pool()
    if args.points:
        if len(args.points) != 3:
            raise UserError(f"give --points exactly three times (a, b, c), not {len(args.points)}.")
        chosen = resolve_points(args.points, pool)
    else:
        chosen = default_points(pool, args.seed[0] if args.seed else None)
    labels = [p.label for p, _ in chosen]
    if len(set(labels)) < 3:
        raise UserError("the three --points must be different checkpoints.")
    runs = list({r.run_id: r for _, r in chosen}.values())
    check_same_architecture(runs)
    ckpts = [r.checkpoint(p.which, p.phase) for p, r in chosen]
    model = chosen[0][1].build()
    masks = union_masks(ckpts)
    try:
        space = ParamSpace(model, masks)
        states = [c["model"] for c in ckpts]
        device = cmd.device
        dataset = chosen[0][1].dataset(args.data_dir)
        data = split_data(dataset, args.split, args.examples)
        recal = split_data(dataset, "train", args.examples) if args.recalibrate_bn else None
        bar = tqdm(total=args.grid**2, desc="plane", unit="pt", disable=args.quiet, file=sys.stderr)
        result = plane(model, *states, data, grid_size=args.grid, margin=args.margin, space=space,
                       recalibrate_bn=args.recalibrate_bn, recalibration_data=recal, device=device,
                       progress=lambda: bar.update(1))
        bar.close()
    except ValueError as exc:
        raise UserError(f"cannot build the plane through {', '.join(labels)} ({str(exc).splitlines()[0]})") from None
    grid = result.to_frame()
    grid["split"] = args.split
    for role, label in zip(ROLES, labels):
        grid[role] = label
    rows = []
    for role, (p, run), state in zip(ROLES, chosen, states):
        rows.append({"kind": "anchor", "role": role, "run_id": run.run_id, "method": run.method, "point": p.label,
                     "step": checkpoint_step(run, p.which), "state": state})
    if not args.no_trajectories:
        first_role = {}
        for role, (_, run) in zip(ROLES, chosen):
            first_role.setdefault(run.run_id, (role, run))
        for role, run in first_role.values():  # a run spanning two corners is drawn once
            for which, phase in trajectory(run):
                label = PointSpec(run.run_id, which, phase).label
                rows.append({"kind": "trajectory", "role": role, "run_id": run.run_id, "method": run.method,
                             "point": label, "step": checkpoint_step(run, which),
                             "state": run.checkpoint(which, phase)["model"]})
    coords = project_to_plane(space, *states, [r.pop("state") for r in rows])
    points = pd.DataFrame(rows)
    points["alpha"], points["beta"], points["off_plane"] = coords[:, 0], coords[:, 1], coords[:, 2]
    return grid[GRID_COLUMNS], points[POINT_COLUMNS]


def plot_plane(grid: pd.DataFrame, points: pd.DataFrame, path, split: str) -> list:
    """Filled contour of the loss (log-spaced levels), the three points and the projected trajectories."""
    alphas, betas = np.unique(grid["alpha"]), np.unique(grid["beta"])
    loss = grid.pivot(index="beta", columns="alpha", values="loss").loc[betas, alphas].to_numpy()
    fig, ax = new_figure(figsize=(6.2, 5.0))
    lo, hi = max(float(np.nanmin(loss)), 1e-4), float(np.nanmax(loss))
    levels = np.geomspace(lo, max(hi, lo * 1.01), 16)
    cs = ax.contourf(alphas, betas, np.clip(loss, lo, None), levels=levels, cmap="viridis_r",
                     norm=LogNorm(lo, max(hi, lo * 1.01)))
    fig.colorbar(cs, ax=ax, label=f"{split} loss", format="%.3g")
    for _, g in points[points["kind"] == "trajectory"].groupby("role", sort=False):
        ax.plot(g["alpha"], g["beta"], "-o", ms=2.5, lw=1, color=method_color(g["method"].iloc[0]), alpha=0.9)
    for _, r in points[points["kind"] == "anchor"].iterrows():
        ax.scatter([r["alpha"]], [r["beta"]], s=60, color=method_color(r["method"]), edgecolors="white", zorder=4)
        ax.annotate(f"{r['role']}: {r['method']} {r['point'].split(':', 1)[1]}", (r["alpha"], r["beta"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8, color="white")
    ax.set_xlabel("alpha (units of |b - a|)")
    ax.set_ylabel("beta (units of |b - a|)")
    ax.set_aspect("equal")
    ax.set_title("loss on the plane through a, b, c (lines: projected trajectories)", fontsize=9)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.plane``."""
    parser = analysis_parser(
        "plane", "Training loss and accuracy on the plane through three checkpoints (default: one seed's "
                 "lottery end, scratch end and pruning solution), in the active coordinates of their masks' "
                 "union, with the runs' projected trajectories (Li et al. 2018; Garipov et al. 2018).")
    parser.add_argument("--points", action="append", default=None, metavar="RUN_ID:POINT",
                        help="a checkpoint spanning the plane; give it three times (a, b, c). POINT is start, end, "
                             "a step, or STEP:pre / STEP:post")
    parser.add_argument("--grid", type=int, default=21, help="grid points per axis")
    parser.add_argument("--margin", type=float, default=0.2, help="padding around the three points, as a "
                                                                   "fraction of their larger span")
    parser.add_argument("--split", default="train", choices=("train", "test"), help="data the loss is measured on")
    parser.add_argument("--examples", type=int, default=None,
                        help="use a fixed subset of this many examples of the split (default: all)")
    parser.add_argument("--recalibrate-bn", action="store_true",
                        help="recompute BatchNorm statistics from the training inputs at every point")
    parser.add_argument("--no-trajectories", action="store_true", help="do not project the runs' checkpoints")
    return parser


def report(grid: pd.DataFrame, points: pd.DataFrame, split: str) -> str:
    """Where the three points lie and the lowest and highest loss on the grid."""
    anchors = points[points["kind"] == "anchor"]
    best = grid.loc[grid["loss"].idxmin()]
    return ("plane through " + ", ".join(f"{r.role} = {r.point} ({r.method}) at ({r.alpha:.2f}, {r.beta:.2f})"
                                         for r in anchors.itertuples())
            + f"\n{split} loss on the grid: min {grid['loss'].min():.4f} at ({best['alpha']:.2f}, {best['beta']:.2f}), "
              f"max {grid['loss'].max():.4f}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the plane CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    grid, points = compute(cmd)
    split = cmd.args.split
    cmd.write({"plane.csv": grid, "plane_points.csv": points},
              {"plane.png": lambda path: plot_plane(grid, points, path, split)}, report=report(grid, points, split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
