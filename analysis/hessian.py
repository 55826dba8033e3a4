"""Extreme Hessian eigenvalues of checkpoints by Lanczos in the active subspace; CLI: ``python -m analysis.hessian runs/``.

Evci et al. (2022), Section 4.2 / Figure 5: a RigL mask update adds new active coordinates (grown
at zero) along which the loss curves downward, so the Hessian gains negative eigenvalues; training
then removes them again. This CLI measures that directly.

For each selected checkpoint, the Hessian of the mean cross-entropy over a fixed subset of the
training set (``--examples``, default 1000: the first N of the trainer's fixed permutation, so the
default is the very batch metrics.csv's gradient norms are measured on) is taken with respect to the
checkpoint's *active* coordinates only (weights where its mask is True, plus all biases; model in
eval mode) with ``landscape.hessian.HessianOperator``, and ``landscape.lanczos.lanczos`` (full
reorthogonalization, seed 0) finds the ``--k`` largest and ``--k`` smallest eigenvalues together.
An eigenvalue counts as converged when its residual ``||H v - lambda v||`` is below
``--tol * max(|lambda|, ||T||)`` (``||T||`` the largest Ritz value in magnitude), so eigenvalues
near zero converge too; the ``converged`` column says which did.

Under ``torchrun --nproc-per-node N -m analysis.hessian runs/`` the examples are split over the N
processes (one GPU each with NCCL, else gloo on CPUs); every Hessian-vector product is all-reduced,
so the eigenvalues are those of the whole subset, and rank 0 writes the outputs.

Checkpoints: by default, runs with pre/post mask-update checkpoints (RigL, RigL+, SET) give the pair
around every update; other runs give start and end. ``--which`` replaces that for every run with a
comma list of ``start``, ``end``, ``updates``, step numbers (periodic checkpoints) or ``STEP:pre`` /
``STEP:post``.

Precision: ``--dtype float32`` is the default. On a CPU, LeNet-5's Hessian-vector product over
1,000 MNIST images takes about 0.5 s in float32 and about 6 s in float64 (convolutions have no fast
float64 kernel), and the extreme eigenvalues agree to four digits; pass ``--dtype float64`` for
small MLPs or exact comparisons.

Outputs (in ``<runs>/_analysis`` or ``--out``):

- ``hessian.csv``: one row per eigenvalue: run_id, method, seed, step, phase (start|end|pre|post|
  periodic), kind (top|bottom), index (0 = most extreme), eigenvalue, residual, converged;
- ``hessian_updates.csv``: one row per mask update (pre and post side by side): largest and
  smallest eigenvalue, number of negative eigenvalues among the ``k`` smallest, with ``--slq``
  the SLQ estimate of the fraction of negative eigenvalues, and the Lanczos residual
  ``||H v - lambda v||`` of the smallest eigenvalue (``min_residual_pre``/``_post``: its convergence);
- ``hessian_density.csv`` (with ``--slq``): the smoothed spectral density of each checkpoint;
- ``hessian.png``: largest and smallest eigenvalue against step, one line per run, updates marked.

With ``--per-layer`` each layer's diagonal block of the Hessian is analysed instead of the whole
matrix (``landscape.hessian.layer_operators``: the layer's active weights and its bias, the other
layers held fixed; blocks of at most 64 coordinates are formed and solved exactly, larger ones by
Lanczos), asked in PyHessian #10 and hessian-eigenthings #19. It writes ``hessian_layers.csv`` (one
row per checkpoint, layer and eigenvalue, with the block's size), ``hessian_layers_updates.csv``
(per mask update and layer: smallest and largest block eigenvalue pre and post) and
``hessian_layers.png``, and leaves the full-Hessian outputs alone. For ReLU networks (and max
pooling) the output is piecewise linear in any one layer's weights, so each diagonal block is a
Gauss-Newton matrix and positive semi-definite: negative curvature can only come from the blocks
that couple layers, which the per-layer spectra make visible.

An eigenvalue is *negative* when below ``-neg_tol * lambda_max`` (``--neg-tol``, default 1e-4), so
rounding noise around zero is not counted.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser, check_at_least
from analysis.interpolate import PointSpec
from analysis.plotting import method_color, new_figure, order_methods, save_figure
from analysis.runs import Run, checkpoint_step
from landscape.exact import dense_matrix
from landscape.hessian import HessianOperator, layer_operators
from landscape.lanczos import lanczos, spectral_density
from sparse_training import distributed as ddp
from sparse_training.data import Dataset
from sparse_training.errors import UserError, cli_entry
from sparse_training.metrics import metric_indices

PHASE_ORDER = {"start": 0, "periodic": 1, "pre": 2, "post": 3, "end": 4}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
EIGEN_COLUMNS = ["run_id", "method", "seed", "step", "phase", "kind", "index", "eigenvalue", "residual", "converged"]
LAYER_COLUMNS = ["run_id", "method", "seed", "step", "phase", "layer", "size", "kind", "index", "eigenvalue",
                 "residual", "converged"]
DENSE_BLOCK = 64  # blocks up to this size are formed densely (size products) and solved exactly
UPDATE_COLUMNS = ["run_id", "method", "seed", "step", "top_pre", "top_post", "min_pre", "min_post",
                  "n_negative_pre", "n_negative_post", "neg_mass_pre", "neg_mass_post",
                  "min_residual_pre", "min_residual_post"]


@dataclass(frozen=True)
class Target:
    """A checkpoint whose spectrum is taken: a run and the point in it (``which`` and ``phase``)."""

    run: Run
    point: PointSpec

    @property
    def step(self) -> int:
        return checkpoint_step(self.run, self.point.which)

    @property
    def label(self) -> str:
        """'start', 'end', 'pre', 'post' or 'periodic' (a plain step checkpoint)."""
        which = self.point.which
        return str(which) if which in ("start", "end") else self.point.phase or "periodic"


def parse_which(text: str) -> list[str]:
    """The tokens of ``--which``: start, end, updates, STEP, STEP:pre, STEP:post."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise UserError("--which names no checkpoint; use e.g. --which start,end or --which updates.")
    for t in tokens:
        step, _, phase = t.partition(":")
        if t in ("start", "end", "updates") or (step.isdigit() and phase in ("", "pre", "post")):
            continue
        raise UserError(f"--which takes start, end, updates, STEP or STEP:pre|post separated by commas, not '{t}'.")
    return list(dict.fromkeys(tokens))


def targets_of(run: Run, which: Sequence[str] | None) -> list[Target]:
    """The checkpoints of ``run`` to analyse (see the module docstring for the default)."""
    if which is None:
        which = ["updates"] if run.update_steps() else ["start", "end"]
    points: list[PointSpec] = []
    for token in which:
        if token == "updates":
            for step in run.update_steps():
                points += [PointSpec(run.run_id, step, "pre"), PointSpec(run.run_id, step, "post")]
        elif token in ("start", "end"):
            points.append(PointSpec(run.run_id, token))
        else:
            step, _, phase = token.partition(":")
            points.append(PointSpec(run.run_id, int(step), phase))
    keep = []
    for p in points:
        if run.dir.checkpoint_path(p.which, p.phase).is_file():
            keep.append(Target(run, p))
        else:
            print(f"warning: {run.run_id} has no checkpoint {p.which}{':' + p.phase if p.phase else ''}; skipping it",
                  file=sys.stderr)
    return keep


def hessian_data(dataset: Dataset, examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed training subset the Hessian is taken over: the first ``examples`` of the trainer's permutation."""
    if examples < 1:
        raise UserError(f"--examples must be at least 1, got {examples}.")
    idx = metric_indices(len(dataset.x_train), examples)
    return dataset.x_train[idx], dataset.y_train[idx]


@dataclass(frozen=True)
class Spectrum:
    """What one checkpoint gives: the k largest and k smallest eigenvalues and, optionally, an SLQ density."""

    top: np.ndarray  # descending
    top_residual: np.ndarray
    top_converged: np.ndarray
    bottom: np.ndarray  # ascending
    bottom_residual: np.ndarray
    bottom_converged: np.ndarray
    matvecs: int
    size: int
    density: pd.DataFrame | None = None
    negative_mass: float = float("nan")


def checkpoint_spectrum(model: torch.nn.Module, masks: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor],
                        k: int = 5, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        tol: float = 1e-4, max_iter: int | None = None, slq: bool = False,
                        slq_probes: int = 10, slq_steps: int = 80, neg_tol: float = 1e-4) -> Spectrum:
    """Top-k and bottom-k Hessian eigenvalues of ``model`` over ``data`` in the active subspace of ``masks``."""
    op = HessianOperator(model, F.cross_entropy, data, masks, dtype=dtype, device=device)
    k = min(k, op.size // 2) if op.size >= 2 else 1
    res = lanczos(op, k, "both", tol=tol, max_iter=max_iter, seed=0, return_eigenvectors=False)
    vals, resid, conv = res.eigenvalues.numpy(), res.residuals.numpy(), res.converged.numpy()
    # "both" lists the k largest (descending) first and the k smallest last (still descending)
    top, bottom = slice(0, k), slice(len(vals) - k, len(vals))
    density, neg_mass = None, float("nan")
    matvecs = res.matvecs
    if slq:
        sd = spectral_density(op, num_probes=slq_probes, num_steps=slq_steps, seed=0)
        density = sd.to_frame()
        threshold = -neg_tol * max(float(vals[0]), 0.0)
        neg_mass = float(np.sum(sd.weights * (sd.nodes < threshold)) / sd.weights.shape[0])
        matvecs += sd.matvecs
    return Spectrum(top=vals[top], top_residual=resid[top], top_converged=conv[top],
                    bottom=vals[bottom][::-1].copy(), bottom_residual=resid[bottom][::-1].copy(),
                    bottom_converged=conv[bottom][::-1].copy(), matvecs=matvecs, size=op.size,
                    density=density, negative_mass=neg_mass)


def layer_spectra(model: torch.nn.Module, masks: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor],
                  k: int = 1, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                  tol: float = 1e-4, max_iter: int | None = None) -> pd.DataFrame:
    """Extreme eigenvalues of each layer's diagonal Hessian block in its active coordinates.

    One row per (layer, kind, index) with columns layer, size, kind (top|bottom), index, eigenvalue,
    residual, converged. Blocks of at most ``DENSE_BLOCK`` coordinates are formed and solved exactly;
    larger ones by Lanczos (``k`` at each end, seed 0) as for the full Hessian.
    """
    rows = []
    for layer, op in layer_operators(model, F.cross_entropy, data, masks, dtype=dtype, device=device).items():
        kk = max(1, min(k, op.size // 2))
        if op.size <= DENSE_BLOCK:
            vals = torch.linalg.eigvalsh(dense_matrix(op).double()).cpu().numpy()
            top, bottom = vals[::-1][:kk], vals[:kk]
            parts = (("top", top, np.zeros(kk), np.ones(kk, bool)), ("bottom", bottom, np.zeros(kk), np.ones(kk, bool)))
        else:
            res = lanczos(op, kk, "both", tol=tol, max_iter=max_iter, seed=0, return_eigenvectors=False)
            v, r, c = res.eigenvalues.numpy(), res.residuals.numpy(), res.converged.numpy()
            n = len(v)
            parts = (("top", v[:kk], r[:kk], c[:kk]),
                     ("bottom", v[n - kk:][::-1], r[n - kk:][::-1], c[n - kk:][::-1]))
        for kind, vals_, resid, conv in parts:
            for i, (val, rr, cc) in enumerate(zip(vals_, resid, conv)):
                rows.append({"layer": layer, "size": op.size, "kind": kind, "index": i, "eigenvalue": float(val),
                             "residual": float(rr), "converged": bool(cc)})
    return pd.DataFrame(rows, columns=LAYER_COLUMNS[5:])


def layer_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run, mask update and layer: smallest and largest block eigenvalue before and after the update."""
    first = layers[(layers["index"] == 0) & layers["phase"].isin(["pre", "post"])]
    wide = first.pivot_table(index=["run_id", "method", "seed", "step", "layer"], columns=["kind", "phase"],
                             values="eigenvalue").reset_index()
    if wide.empty:
        return pd.DataFrame(columns=["run_id", "method", "seed", "step", "layer", "min_pre", "min_post", "top_pre",
                                     "top_post"])
    wide.columns = ["_".join(c for c in col if c).replace("bottom", "min") for col in wide.columns]
    return wide.dropna()


def plot_layers(layers: pd.DataFrame, path) -> list:
    """Per layer, the smallest and the largest block eigenvalue by phase (mean over checkpoints)."""
    first = layers[layers["index"] == 0].copy()
    order = list(dict.fromkeys(first["layer"]))
    phases = sorted(set(first["phase"]), key=lambda p: PHASE_ORDER.get(p, 9))
    colors = {"pre": "#bbbbbb", "post": "#9467bd", "start": "#1f77b4", "end": "#d62728", "periodic": "#2ca02c"}
    fig, axes = new_figure(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(phases))
    for ax, (kind, title) in zip(axes, (("bottom", "smallest eigenvalue of the layer's block"),
                                        ("top", "largest eigenvalue of the layer's block"))):
        sub = first[first["kind"] == kind]
        for j, phase in enumerate(phases):
            means = sub[sub["phase"] == phase].groupby("layer")["eigenvalue"].mean().reindex(order)
            ax.bar(np.arange(len(order)) + (j - (len(phases) - 1) / 2) * width, means.to_numpy(), width,
                   label=phase, color=colors.get(phase, "#17becf"))
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set_xticks(np.arange(len(order)), order)
        ax.set_title(title, fontsize=9)
        ax.legend()
    axes[0].set_ylabel("Hessian eigenvalue (mean over checkpoints)")
    return save_figure(fig, path)


def spectrum_rows(target: Target, spec: Spectrum) -> list[dict]:
    """Rows of ``hessian.csv`` for one checkpoint."""
    base = {"run_id": target.run.run_id, "method": target.run.method, "seed": target.run.seed,
            "step": target.step, "phase": target.label}
    rows = []
    for kind, vals, resid, conv in (("top", spec.top, spec.top_residual, spec.top_converged),
                                    ("bottom", spec.bottom, spec.bottom_residual, spec.bottom_converged)):
        for i, (v, r, c) in enumerate(zip(vals, resid, conv)):
            rows.append({**base, "kind": kind, "index": i, "eigenvalue": float(v), "residual": float(r),
                         "converged": bool(c)})
    return rows


def count_negative(bottom: np.ndarray, top: float, neg_tol: float = 1e-4) -> int:
    """How many of ``bottom`` lie below ``-neg_tol * max(top, 0)``."""
    return int(np.sum(np.asarray(bottom) < -neg_tol * max(top, 0.0)))


def update_table(eigen: pd.DataFrame, neg_mass: dict[tuple[str, int, str], float] | None = None,
                 neg_tol: float = 1e-4) -> pd.DataFrame:
    """Pre and post of every mask update side by side (runs with pre/post checkpoints only)."""
    neg_mass = neg_mass or {}
    rows = []
    sel = eigen[eigen["phase"].isin(["pre", "post"])]
    for (run_id, step), g in sel.groupby(["run_id", "step"], sort=False):
        side = {}
        for phase in ("pre", "post"):
            p = g[g["phase"] == phase]
            if p.empty:
                break
            top = float(p[(p["kind"] == "top") & (p["index"] == 0)]["eigenvalue"].iloc[0])
            low = p[p["kind"] == "bottom"].sort_values("index")
            bottom = low["eigenvalue"].to_numpy()
            side[phase] = (top, float(bottom[0]), count_negative(bottom, top, neg_tol),
                           neg_mass.get((run_id, int(step), phase), float("nan")), float(low["residual"].iloc[0]))
        if len(side) < 2:
            continue
        first = g.iloc[0]
        rows.append({"run_id": run_id, "method": first["method"], "seed": first["seed"], "step": int(step),
                     "top_pre": side["pre"][0], "top_post": side["post"][0],
                     "min_pre": side["pre"][1], "min_post": side["post"][1],
                     "n_negative_pre": side["pre"][2], "n_negative_post": side["post"][2],
                     "neg_mass_pre": side["pre"][3], "neg_mass_post": side["post"][3],
                     "min_residual_pre": side["pre"][4], "min_residual_post": side["post"][4]})
    return pd.DataFrame(rows, columns=UPDATE_COLUMNS)


def more_negative(updates: pd.DataFrame, neg_tol: float = 1e-4) -> pd.Series:
    """Per mask update: did it make the smallest eigenvalue more negative?

    True when the smallest eigenvalue decreased across the update *and* ends negative, i.e. below
    ``-neg_tol * max(lambda_max after, 0)`` (the same tolerance that counts negative eigenvalues), so a
    change within rounding noise of zero does not count.
    """
    return (updates["min_post"] < updates["min_pre"]) & (updates["min_post"] < -neg_tol * updates["top_post"].clip(lower=0))


def summarize_updates(updates: pd.DataFrame, k: int, neg_tol: float = 1e-4) -> str:
    """In words, per method: how many mask updates added negative curvature (Evci et al.'s claim)."""
    if updates.empty:
        return "no mask-update checkpoints among the selected runs (RigL/RigL+/SET runs write them)."
    lines = [f"mask updates (pre -> post); 'negative' means below -{neg_tol:g} * lambda_max:"]
    for method, g in updates.groupby("method", sort=False):
        n = len(g)
        more = int((g["n_negative_post"] > g["n_negative_pre"]).sum())
        fewer = int((g["n_negative_post"] < g["n_negative_pre"]).sum())
        deeper = int(more_negative(g, neg_tol).sum())
        top_up = int((g["top_post"] > g["top_pre"]).sum())
        line = (f"  {method}: {n} updates over {g['run_id'].nunique()} runs; negative eigenvalues among the {k} smallest "
                f"increased in {more}, decreased in {fewer}; the most negative eigenvalue grew in magnitude in "
                f"{deeper}; the largest eigenvalue grew in {top_up}; mean min eigenvalue {g['min_pre'].mean():.4g} "
                f"-> {g['min_post'].mean():.4g}")
        if g["neg_mass_pre"].notna().any():
            up = int((g["neg_mass_post"] > g["neg_mass_pre"]).sum())
            line += (f"; SLQ fraction of negative eigenvalues rose in {up} ({g['neg_mass_pre'].mean():.4f} -> "
                     f"{g['neg_mass_post'].mean():.4f})")
        lines.append(line + ".")
    return "\n".join(lines)


# --- picture ----------------------------------------------------------------------------------
def plot_eigenvalues(eigen: pd.DataFrame, path) -> list:
    """Largest and smallest eigenvalue against step; a line per run; pre hollow, post filled."""
    fig, axes = new_figure(1, 2, figsize=(10, 3.8), sharex=True)
    updates = sorted(set(eigen.loc[eigen["phase"].isin(["pre", "post"]), "step"]))
    for ax, (kind, title) in zip(axes, (("top", "largest eigenvalue"), ("bottom", "smallest eigenvalue"))):
        sub = eigen[(eigen["kind"] == kind) & (eigen["index"] == 0)].copy()
        sub["order"] = sub["phase"].map(PHASE_ORDER)
        seen: dict[str, object] = {}
        for _, g in sub.groupby("run_id", sort=False):
            g = g.sort_values(["step", "order"])
            method = g["method"].iloc[0]
            color = method_color(method)
            (line,) = ax.plot(g["step"], g["eigenvalue"], color=color, lw=1, alpha=0.8)
            seen.setdefault(method, line)
            pre, post = g[g["phase"] == "pre"], g[g["phase"] == "post"]
            ax.scatter(pre["step"], pre["eigenvalue"], s=14, facecolors="none", edgecolors=color, zorder=3)
            ax.scatter(post["step"], post["eigenvalue"], s=14, color=color, zorder=3)
            rest = g[~g["phase"].isin(["pre", "post"])]
            ax.scatter(rest["step"], rest["eigenvalue"], s=14, marker="s", color=color, zorder=3)
        for s in updates:
            ax.axvline(s, color="0.75", lw=0.6, ls=":")
        if kind == "bottom":
            ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_xlabel("step (dotted: mask updates; hollow: pre, filled: post)")
        ax.set_title(title)
        order = order_methods(seen)
        ax.legend([seen[m] for m in order], order)
    axes[0].set_ylabel("Hessian eigenvalue")
    return save_figure(fig, path)


# --- CLI ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.hessian``."""
    parser = analysis_parser(
        "hessian", "Largest and smallest Hessian eigenvalues (Lanczos, active coordinates only, fixed training "
                   "subset) of checkpoints: around every RigL/SET mask update, else at start and end.")
    parser.add_argument("--k", type=int, default=5, help="eigenvalues wanted at each end of the spectrum")
    parser.add_argument("--which", default=None,
                        help="checkpoints of every run, comma-separated: start, end, updates, STEP, STEP:pre, "
                             "STEP:post (default: updates for runs that have them, else start,end)")
    parser.add_argument("--examples", type=int, default=1000,
                        help="training examples the loss is averaged over (a fixed subset: the metrics batch)")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="precision of the products")
    parser.add_argument("--tol", type=float, default=1e-4, help="Lanczos residual tolerance, relative to max(|lambda|, ||T||)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="most Hessian-vector products per checkpoint (default: min(n, max(300, 10k)))")
    parser.add_argument("--neg-tol", type=float, default=1e-4,
                        help="an eigenvalue is negative when below -neg_tol * lambda_max")
    parser.add_argument("--per-layer", action="store_true",
                        help="instead of the full Hessian, each layer's diagonal block in its active coordinates "
                             "(writes hessian_layers.csv, hessian_layers_updates.csv, hessian_layers.png)")
    parser.add_argument("--slq", action="store_true", help="also estimate the spectral density by SLQ")
    parser.add_argument("--slq-probes", type=int, default=10, help="SLQ probe vectors")
    parser.add_argument("--slq-steps", type=int, default=80, help="Lanczos steps per SLQ probe")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Range checks, before any work."""
    check_at_least("--k", args.k, 1)
    check_at_least("--examples", args.examples, 1)
    if not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}.")
    if args.max_iter is not None and args.max_iter < 2 * args.k:
        raise UserError(f"--max-iter must be at least 2k = {2 * args.k}, got {args.max_iter}.")
    if args.neg_tol < 0:
        raise UserError(f"--neg-tol must not be negative, got {args.neg_tol}.")
    if args.slq_probes < 1 or args.slq_steps < 1:
        raise UserError("--slq-probes and --slq-steps must be at least 1.")


@dataclass
class Results:
    """Everything one invocation computes."""

    eigen: pd.DataFrame
    updates: pd.DataFrame
    density: pd.DataFrame | None
    seconds: float
    matvecs: int
    layers: pd.DataFrame | None = None  # with --per-layer: rows of hessian_layers.csv


def compute(cmd: Command) -> Results:
    """Select checkpoints and compute their spectra."""
    args = cmd.args
    check_args(args)
    which = parse_which(args.which) if args.which else None
    runs = cmd.selected()
    targets = [t for r in runs for t in targets_of(r, which)]
    if not targets:
        raise UserError("none of the selected runs has the checkpoints asked for; check --which.")
    info = ddp.init_from_env(args.device)  # under torchrun: shard the examples, all-reduce products
    device = ddp.device_for(info, cmd.device)
    data_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rows, densities, neg_mass = [], [], {}
    layer_frames: list[pd.DataFrame] = []
    matvecs = 0
    t0 = time.perf_counter()
    quiet = args.quiet or (info is not None and not info.is_main)
    for target in tqdm(targets, desc="hessian", unit="ckpt", disable=quiet, file=sys.stderr):
        run = target.run
        name = run.config.get("dataset", "?")
        if name not in data_cache:
            x, y = hessian_data(run.dataset(args.data_dir), args.examples)
            part = ddp.shard(torch.arange(len(x)), info)  # this rank's share (all of it alone)
            data_cache[name] = (x[part], y[part])
        model = run.model(target.point.which, target.point.phase, device=device)
        masks = model.masks.as_dict()  # type: ignore[attr-defined]
        if args.per_layer:
            block = layer_spectra(model, masks, data_cache[name], args.k, dtype=DTYPES[args.dtype], device=device,
                                  tol=args.tol, max_iter=args.max_iter)
            for i, (col, value) in enumerate((("run_id", run.run_id), ("method", run.method), ("seed", run.seed),
                                              ("step", target.step), ("phase", target.label))):
                block.insert(i, col, value)
            layer_frames.append(block)
            continue
        spec = checkpoint_spectrum(model, masks, data_cache[name], args.k, dtype=DTYPES[args.dtype], device=device,
                                   tol=args.tol, max_iter=args.max_iter, slq=args.slq, slq_probes=args.slq_probes,
                                   slq_steps=args.slq_steps, neg_tol=args.neg_tol)
        matvecs += spec.matvecs
        rows += spectrum_rows(target, spec)
        if spec.density is not None:
            d = spec.density.copy()
            for col, value in (("run_id", run.run_id), ("method", run.method), ("seed", run.seed),
                               ("step", target.step), ("phase", target.label)):
                d.insert(len(d.columns) - 2, col, value)
            densities.append(d)
            neg_mass[(run.run_id, target.step, target.label)] = spec.negative_mass
    eigen = pd.DataFrame(rows, columns=EIGEN_COLUMNS)
    updates = update_table(eigen, neg_mass, args.neg_tol)
    density = pd.concat(densities, ignore_index=True) if densities else None
    layers = pd.concat(layer_frames, ignore_index=True)[LAYER_COLUMNS] if layer_frames else None
    return Results(eigen, updates, density, time.perf_counter() - t0, matvecs, layers)


def layers_report(res: Results, summary: pd.DataFrame) -> str:
    """A sentence per layer on what mask updates did to the curvature of its block (--per-layer)."""
    n_ckpt = len(res.layers.groupby(["run_id", "step", "phase"]))
    lines = [f"per-layer Hessian blocks of {n_ckpt} checkpoints in {res.seconds:.1f} s."]
    for layer, g in summary.groupby("layer", sort=False):
        deeper = int((g["min_post"] < g["min_pre"]).sum())
        lines.append(f"  {layer}: smallest block eigenvalue fell in {deeper} of {len(g)} mask updates "
                     f"(mean {g['min_pre'].mean():.4g} -> {g['min_post'].mean():.4g}).")
    return "\n".join(lines)


def report(res: Results, args: argparse.Namespace) -> str:
    """How many checkpoints and products, how many eigenvalues did not converge, and what updates did."""
    n_ckpt = len(res.eigen.groupby(["run_id", "step", "phase"]))
    unconverged = int((~res.eigen["converged"].astype(bool)).sum())
    return (f"{n_ckpt} checkpoints, {res.matvecs} Hessian-vector products ({args.dtype}) in {res.seconds:.1f} s; "
            f"{unconverged} of {len(res.eigen)} eigenvalues did not meet --tol {args.tol:g}.\n"
            + summarize_updates(res.updates, args.k, args.neg_tol))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the Hessian CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    res = compute(cmd)
    if dist.is_initialized() and dist.get_rank() != 0:  # under torchrun rank 0 writes
        return 0
    if res.layers is not None:  # --per-layer: its own outputs, the full-Hessian ones left alone
        summary = layer_summary(res.layers)
        cmd.write({"hessian_layers.csv": res.layers, "hessian_layers_updates.csv": summary},
                  {"hessian_layers.png": lambda path: plot_layers(res.layers, path)}, report=layers_report(res, summary))
        return 0
    files = {"hessian.csv": res.eigen, "hessian_updates.csv": res.updates}
    if res.density is not None:
        files["hessian_density.csv"] = res.density
    cmd.write(files, {"hessian.png": lambda path: plot_eigenvalues(res.eigen, path)}, report=report(res, cmd.args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
