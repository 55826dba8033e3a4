"""Low-loss Bezier curves between solutions against the straight line; CLI: ``python -m analysis.curve runs/``.

Evci et al. (2022) find a loss barrier on the straight line between a scratch or RigL solution and
the pruning solution and conclude they lie in different basins. Garipov et al. (2018) and Draxler
et al. (2018) showed that independently trained dense networks, separated by such barriers on the
line, are usually joined by simple *curved* paths of low loss. This CLI asks the same of sparse
solutions: a quadratic Bezier curve ``phi(t) = (1-t)^2 w0 + 2t(1-t) theta + t^2 w1`` between two
checkpoints, its bend ``theta`` trained by SGD on the training loss at random ``t ~ U(0, 1)``
(``landscape.curves.train_bezier``), in the active coordinates of the union of the endpoints'
masks (the curve may use a weight either endpoint uses, no other).

Default curves: from the end of every selected scratch, scratch+, rigl, rigl+ and set run (and
lottery, with ``--method lottery``) to its pruning solution's end; ``--from RUN_ID:POINT --to
RUN_ID:POINT`` (repeatable, paired) for any others. The loss along the curve and along the line is
measured on ``--points`` evenly spaced ``t`` in [0, 1] over ``--split`` (default train; ``--examples
N``: the first N of the trainer's fixed permutation); the bend is trained on the whole training set.

Barriers (``landscape.curves``): ``barrier`` is the height above the chord between the endpoint
losses (Entezari et al. 2022); ``barrier_frankle`` is the maximum minus the endpoints' mean loss
(Frankle et al. 2020's definition, there applied to the error).

Outputs (in ``<runs>/_analysis`` or ``--out``):

- ``curve.csv``: one row per (path, kind, t): path_id, run_id, method, seed, from_point, to_point,
  kind (line|curve), t, loss, accuracy, split;
- ``curve_summary.csv``: one row per path: endpoint losses, line_barrier, curve_barrier,
  line_barrier_frankle, curve_barrier_frankle, line_max_loss, curve_max_loss, line_min_acc,
  curve_min_acc, bend_offset (|theta - midpoint| / |w1 - w0|), final_train_loss (mean of the last
  10% of bend-training steps);
- ``curve.png``: loss along line (dashed) and curve (solid) per path, coloured by method.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser, check_at_least
from analysis.interpolate import (
    END_PATH,
    PathSpec,
    add_path_args,
    check_paired,
    custom_paths,
    default_paths,
    path_runs,
    split_data,
)
from analysis.plotting import method_color, new_figure, save_figure
from analysis.runs import Run, check_same_architecture, union_masks
from landscape.curves import barrier_above_chord, barrier_max_minus_mean, evaluate_curve, train_bezier
from landscape.interpolate import interpolate
from landscape.params import ParamSpace
from sparse_training.errors import UserError, cli_entry

CURVE_METHODS = ("scratch", "scratch+", "rigl", "rigl+", "set")
CURVE_COLUMNS = ["path_id", "run_id", "method", "seed", "from_point", "to_point", "kind", "t", "loss", "accuracy",
                 "split"]
SUMMARY_COLUMNS = ["path_id", "run_id", "method", "seed", "from", "to", "split", "loss_at_0", "loss_at_1",
                   "line_barrier", "curve_barrier", "line_barrier_frankle", "curve_barrier_frankle",
                   "line_max_loss", "curve_max_loss", "line_min_acc", "curve_min_acc", "bend_offset",
                   "final_train_loss"]


def select_curves(cmd: Command) -> tuple[list[PathSpec], list[Run]]:
    """The curves the arguments ask for and the runs they touch (architectures checked)."""
    args = cmd.args
    check_paired(args, "curve")
    pool = cmd.pool()
    if args.from_points:
        paths = custom_paths(args.from_points, args.to_points, pool)
    else:
        selected = cmd.selected()
        wanted = set(args.method) if args.method else set(CURVE_METHODS)
        selected = [r for r in selected if r.method in wanted]
        if not selected:
            raise UserError("no selected run is a scratch, scratch+, rigl, rigl+ or set run (or of --method); "
                            "use --from/--to for other curves.")
        paths = [p for p in default_paths(selected, pool) if p.kind == END_PATH]
    runs = path_runs(paths, pool)
    check_same_architecture(runs)
    return paths, runs


def check_args(args: argparse.Namespace) -> None:
    """Range checks, before any work."""
    check_at_least("--points", args.points, 2)
    check_at_least("--steps", args.steps, 1)
    check_at_least("--batch-size", args.batch_size, 1)
    if not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}.")


def curve_for(path: PathSpec, by_id: dict[str, Run], data, train_data, ts: np.ndarray, args: argparse.Namespace,
              device, bar) -> tuple[pd.DataFrame, dict]:
    """Train one curve; its rows of ``curve.csv`` and its summary row."""
    ca = by_id[path.a.run_id].checkpoint(path.a.which, path.a.phase)
    cb = by_id[path.b.run_id].checkpoint(path.b.which, path.b.phase)
    model = path.run.build()
    try:
        model.load_state_dict(ca["model"])
        space = ParamSpace(model, union_masks([ca, cb]))
        va, vb = space.to_vector(ca["model"]), space.to_vector(cb["model"])
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"cannot join {path.a.label} and {path.b.label}: the checkpoints do not fit one "
                        f"architecture ({str(exc).splitlines()[0]}).") from None
    model = model.to(device)
    curve = train_bezier(model, va, vb, train_data, space, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, seed=args.curve_seed, device=device, progress=lambda *_: bar.update(1))
    recal = train_data if args.recalibrate_bn else None
    line = interpolate(model, va, vb, data, alphas=ts, space=space, recalibrate_bn=args.recalibrate_bn,
                       recalibration_data=recal, device=device)
    bent = evaluate_curve(model, curve, data, ts, recalibrate_bn=args.recalibrate_bn, recalibration_data=recal,
                          device=device)
    frames = []
    for kind, res in (("line", line), ("curve", bent)):
        frames.append(pd.DataFrame({"path_id": path.path_id, "run_id": path.run.run_id, "method": path.run.method,
                                    "seed": path.run.seed, "from_point": path.a.label, "to_point": path.b.label,
                                    "kind": kind, "t": ts, "loss": res.loss, "accuracy": res.accuracy,
                                    "split": args.split}))
    span = float(torch.linalg.vector_norm((vb - va).double()))
    offset = float(torch.linalg.vector_norm((curve.bend - 0.5 * (curve.start + curve.end)).double().cpu())) / span
    tail = curve.history[-max(1, len(curve.history) // 10):]
    summary = {"path_id": path.path_id, "run_id": path.run.run_id, "method": path.run.method,
               "seed": path.run.seed, "from": path.a.label, "to": path.b.label, "split": args.split,
               "loss_at_0": line.loss[0], "loss_at_1": line.loss[-1],
               "line_barrier": barrier_above_chord(ts, line.loss), "curve_barrier": barrier_above_chord(ts, bent.loss),
               "line_barrier_frankle": barrier_max_minus_mean(ts, line.loss),
               "curve_barrier_frankle": barrier_max_minus_mean(ts, bent.loss),
               "line_max_loss": float(line.loss.max()), "curve_max_loss": float(bent.loss.max()),
               "line_min_acc": float(line.accuracy.min()), "curve_min_acc": float(bent.accuracy.min()),
               "bend_offset": offset, "final_train_loss": float(np.mean(tail))}
    return pd.concat(frames, ignore_index=True), summary


def compute(cmd: Command) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every curve of the arguments: the rows of ``curve.csv`` and ``curve_summary.csv``."""
    args = cmd.args
    check_args(args)
    paths, runs = select_curves(cmd)
    device = cmd.device
    dataset = runs[0].dataset(args.data_dir)
    data = split_data(dataset, args.split, args.examples)
    train_data = split_data(dataset, "train")
    ts = np.linspace(0.0, 1.0, args.points)
    by_id = {r.run_id: r for r in runs}
    frames, rows = [], []
    with tqdm(total=len(paths) * args.steps, desc="curves", unit="step", disable=args.quiet, file=sys.stderr) as bar:
        for path in paths:
            frame, row = curve_for(path, by_id, data, train_data, ts, args, device, bar)
            frames.append(frame)
            rows.append(row)
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS], pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def plot_curves(curves: pd.DataFrame, path, split: str) -> list:
    """Loss against t: line dashed, trained curve solid, one colour per method."""
    fig, ax = new_figure(figsize=(5.6, 3.8))
    seen: dict[str, object] = {}
    for _, g in curves.groupby("path_id", sort=False):
        method = g["method"].iloc[0]
        color = method_color(method)
        line, bent = g[g["kind"] == "line"], g[g["kind"] == "curve"]
        ax.plot(line["t"], line["loss"], ls="--", color=color, lw=1, alpha=0.7)
        (h,) = ax.plot(bent["t"], bent["loss"], ls="-", color=color, lw=1.4)
        seen.setdefault(method, h)
    ax.set_xlabel("t (0: --from / run's end, 1: --to / pruning solution)")
    ax.set_ylabel(f"{split} loss")
    ax.set_yscale("log")
    ax.set_title("dashed: straight line; solid: trained Bezier curve", fontsize=9)
    ax.legend(list(seen.values()), list(seen))
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.curve``."""
    parser = analysis_parser(
        "curve", "Quadratic Bezier curves with a trained bend between solutions (Garipov et al. 2018), by "
                 "default each scratch/scratch+/rigl/rigl+/set end to its pruning solution; loss along the curve "
                 "against the straight line and both barriers.")
    add_path_args(parser, "curve")
    parser.add_argument("--steps", type=int, default=600, help="SGD steps training each bend")
    parser.add_argument("--batch-size", type=int, default=128, help="mini-batch of the bend's training")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate (cosine decay, momentum 0.9)")
    parser.add_argument("--curve-seed", type=int, default=0, help="seed of the sampled t and batches")
    parser.add_argument("--points", type=int, default=21, help="evenly spaced t in [0, 1] where the loss is measured")
    parser.add_argument("--split", default="train", choices=("train", "test"), help="data the loss is measured on")
    parser.add_argument("--examples", type=int, default=None,
                        help="measure on a fixed subset of this many examples of the split (default: all)")
    parser.add_argument("--recalibrate-bn", action="store_true",
                        help="recompute BatchNorm statistics from the training inputs at every point")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the curve CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    curves, summary = compute(cmd)
    split = cmd.args.split
    cols = ["method", "seed", "line_barrier", "curve_barrier", "line_barrier_frankle", "curve_barrier_frankle"]
    cmd.write({"curve.csv": curves, "curve_summary.csv": summary},
              {"curve.png": lambda path: plot_curves(curves, path, split)},
              report=f"barriers ({split} loss; line vs trained Bezier curve):\n"
                     + summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
