"""Loss barriers before and after weight matching (mask-aware); CLI: ``python -m analysis.align runs/``.

Is the loss barrier between a scratch run's end and its pruning solution a permutation artefact?
Entezari et al. (2022) conjecture that SGD solutions are linearly connected once the permutation
symmetry of hidden units is accounted for; Ainsworth et al. (2022, "Git Re-Basin") find the
permutation by weight matching. Here each selected run's end (by default lottery, scratch and the
prune runs of other seeds) is permuted to match its pruning solution (the family's seed-0 prune run,
:func:`analysis.runs.family_solution`) with :func:`landscape.align.weight_matching`, and loss and
error are measured along the straight line before and after.

The permutation carries the mask: the permuted run has the permuted mask, as sparse as before layer
by layer. The line from the run (alpha = 0) to the pruning solution (alpha = 1) then lies in the union
of the two masks: a weight outside both is zero at both ends and so all along, and interpolating the
checkpoints' masked weights (``landscape.interpolate.interpolate``, BatchNorm statistics included,
recomputed at every point with ``--recalibrate-bn``) is the path. Both lines share their endpoints (the
permuted run computes the run's function), so the aligned line's inner alphas only are evaluated.

Loss and error (1 - accuracy) are measured in eval mode on ``--split`` (default train, as
``analysis.interpolate``) over ``--examples`` (default 1,000: the trainer's fixed metrics batch), at
``--points`` alphas on [-0.2, 1.2] (default 29, step 0.05, as ``analysis.interpolate``).

Barriers (``landscape.curves``, as ``analysis.stability``): ``loss_barrier`` = height of the loss
above the chord between the endpoints (Entezari et al.; the barrier of ``analysis.interpolate``),
``loss_barrier_frankle`` = max loss minus the endpoints' mean (Frankle et al. 2020), and the same two
of the error: ``error_barrier`` (max minus mean, Frankle et al.'s instability) and
``error_barrier_chord``. ``l2`` is the distance over all parameters (masked weights are zeros, never
BatchNorm statistics), as ``analysis.distances``.

Specs: ``landscape.align`` is model-agnostic (it may not import the model classes), so the specs of
the toolkit's models live here: LeNet-5, MLPs with BatchNorm, skip connections and per-unit
activations, the MNIST-1D CNN, VGG-16 and ResNet-18, and ``nn.Sequential`` chains of Linear/Conv/
BatchNorm layers get theirs from :func:`spec_for`. For another model, say ``mynet.py``'s::

    from landscape.align import PermutationSpec

    def spec(model):   # hidden -> out; a BatchNorm "bn" after "hidden" would join the producers
        return PermutationSpec.from_units(model.state_dict(), {"hidden": (["hidden"], ["out"])})

run ``python -m analysis.align CKPTS --model-factory mynet:build --dataset digits --spec mynet:spec``.
Every spec is checked first: a random permutation of the pruning solution must leave its outputs
unchanged (up to float rounding), else the command stops.

Outputs (in ``<runs>/_analysis`` or ``--out``):

- ``align.csv``: one row per (run, unaligned|aligned): run_id, method, seed, reference, aligned, split,
  loss_barrier, loss_barrier_frankle, error_barrier, error_barrier_chord, l2, union_active (weights
  active in the union of the two masks: the path's support), union_density, run_loss,
  reference_loss, run_error, reference_error, units_moved (hidden units the permutation moves, dead
  ones included: a unit without active inputs or outputs moves freely), did_not_train (the run's final
  training accuracy is within 5 points of chance: its barriers say nothing; the printed means leave
  such runs out);
- ``align_curves.csv``: one row per (run, alignment, alpha): run_id, method, seed, reference, aligned,
  alpha, loss, error, split;
- ``align.png``: loss and error along the lines, a column per method, dashed before and solid after.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from analysis.cli import analysis_parser, write_outputs
from analysis.interpolate import alpha_grid, split_data
from analysis.manifest import resolve_callable
from analysis.plotting import method_color, method_rank, new_figure, order_methods, save_figure
from analysis.runs import (
    Run,
    RunSource,
    check_same_architecture,
    family_solution,
    output_dir,
    resolve_device,
    selectors,
    union_masks,
)
from landscape.align import PermutationSpec, apply_permutation, chain_spec, spec_error, weight_matching
from landscape.curves import barrier_above_chord, barrier_max_minus_mean
from landscape.interpolate import interpolate
from landscape.params import ParamSpace, is_buffer_name
from sparse_training.errors import UserError, cli_entry
from sparse_training.models import MLP, MNIST1DCNN, VGG16, LeNet5, ResNet18

DEFAULT_METHODS = ("prune", "lottery", "scratch")
DEFAULT_EXAMPLES = 1000
SPEC_TOLERANCE = 1e-4  # relative output change a right spec stays under (float32 rounding is ~1e-6)
CURVE_COLUMNS = ["run_id", "method", "seed", "reference", "aligned", "alpha", "loss", "error", "split"]
SUMMARY_COLUMNS = ["run_id", "method", "seed", "reference", "aligned", "split", "loss_barrier",
                   "loss_barrier_frankle", "error_barrier", "error_barrier_chord", "l2", "union_active",
                   "union_density", "run_loss", "reference_loss", "run_error", "reference_error", "units_moved",
                   "did_not_train"]


# --- specs of the toolkit's models ------------------------------------------------------------------
def _has_entries(state: dict, module: str) -> bool:
    return any(k.startswith(f"{module}.") and "." not in k[len(module) + 1:] for k in state)


def mlp_spec(model: MLP) -> PermutationSpec:
    """An MLP's spec: each hidden layer's units with its BatchNorm and per-unit activation (SReLU).

    With skip connections a layer whose input and output widths agree adds its input to its output,
    so its units are those of the stream it adds to: one permutation for the run of such layers (none
    when the stream is the network's input, which is never permuted).
    """
    state = model.state_dict()
    streams: list[list[int]] = []  # hidden layers sharing one stream of units
    stream_of: list[int | None] = []
    for i, layer in enumerate(model.layers):
        if model.skip and layer.in_features == layer.out_features:
            s = stream_of[i - 1] if i > 0 else None
        else:
            s = len(streams)
            streams.append([])
        stream_of.append(s)
        if s is not None:
            streams[s].append(i)
    readers = [f"layers.{i + 1}" for i in range(len(model.layers) - 1)] + ["head"]
    units = {}
    for members in streams:
        producers = [m for i in members for m in (f"layers.{i}", f"norms.{i}", f"acts.{i}") if _has_entries(state, m)]
        units[f"layers.{members[0]}"] = (producers, [readers[i] for i in members])
    return PermutationSpec.from_units(state, units)


def vgg16_spec(model: VGG16) -> PermutationSpec:
    """VGG-16's spec: a chain of its 13 convolutions (each with its BatchNorm) and the classifier."""
    groups: list[list[str]] = []
    for i, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            groups.append([f"features.{i}"])
        elif isinstance(m, nn.BatchNorm2d):
            groups[-1].append(f"features.{i}")
    return chain_spec(model.state_dict(), [*groups, "classifier"])


def resnet18_spec(model: ResNet18) -> PermutationSpec:
    """ResNet-18's spec: a permutation per block's inner channels, and one per residual stream.

    A stream starts at the stem (conv1, bn1) and at every block with a projection shortcut; a block
    with an identity shortcut adds its conv2/bn2 outputs to the stream it reads, so they share the
    stream's permutation. Every block reading a stream (conv1, a projection shortcut's conv) and the
    final linear layer consume it.
    """
    units: dict[str, tuple[list[str], list[str]]] = {"stem": (["conv1", "bn1"], [])}
    stream = "stem"
    for i, block in enumerate(model.layers):
        p = f"layers.{i}"
        units[f"{p}.conv1"] = ([f"{p}.conv1", f"{p}.bn1"], [f"{p}.conv2"])
        units[stream][1].append(f"{p}.conv1")
        if isinstance(block.shortcut, nn.Sequential):
            units[stream][1].append(f"{p}.shortcut.0")
            stream = p
            units[stream] = ([f"{p}.conv2", f"{p}.bn2", f"{p}.shortcut.0", f"{p}.shortcut.1"], [])
        else:
            units[stream][0].extend([f"{p}.conv2", f"{p}.bn2"])
    units[stream][1].append("fc")
    return PermutationSpec.from_units(model.state_dict(), units)


def sequential_spec(model: nn.Sequential) -> PermutationSpec:
    """An ``nn.Sequential`` chain: each Linear/Conv layer and the BatchNorm after it; other children
    (activations, pools, flatten) must hold no parameters."""
    groups: list[list[str]] = []
    for name, m in model.named_children():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            groups.append([name])
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and groups:
            groups[-1].append(name)
        elif any(True for _ in m.parameters()):
            raise UserError(f"cannot tell how the units of {type(m).__name__} (child {name}) permute; pass "
                            "--spec MODULE:FUNCTION returning a landscape.align.PermutationSpec.")
    return chain_spec(model.state_dict(), groups)


def spec_for(model: nn.Module) -> PermutationSpec:
    """The permutation spec of one of the toolkit's models, or of an ``nn.Sequential`` chain."""
    state = model.state_dict()
    if isinstance(model, LeNet5):
        return chain_spec(state, ["conv1", "conv2", "fc1", "fc2", "fc3"])
    if isinstance(model, MNIST1DCNN):
        return chain_spec(state, ["conv1", "conv2", "conv3", "head"])
    if isinstance(model, MLP):
        return mlp_spec(model)
    if isinstance(model, VGG16):
        return vgg16_spec(model)
    if isinstance(model, ResNet18):
        return resnet18_spec(model)
    if isinstance(model, nn.Sequential):
        return sequential_spec(model)
    raise UserError(f"there is no permutation spec for {type(model).__name__}; pass --spec MODULE:FUNCTION "
                    "returning a landscape.align.PermutationSpec for it (see python -m analysis.align --help).")


def spec_from_args(args: argparse.Namespace, model: nn.Module) -> PermutationSpec:
    """``--spec``'s callable applied to the model, else :func:`spec_for`."""
    if not args.spec:
        try:
            return spec_for(model)
        except ValueError as exc:  # e.g. an nn.Sequential with a single layer
            raise UserError(f"cannot build the permutation spec of {type(model).__name__} "
                            f"({str(exc).splitlines()[0].rstrip('.')}); pass --spec MODULE:FUNCTION.") from None
    fn = resolve_callable(args.spec, "--spec")
    try:
        spec = fn(model)
    except Exception as exc:  # a user's function may fail in any way
        raise UserError(f"--spec '{args.spec}' failed when called ({type(exc).__name__}: {exc}).") from None
    if not isinstance(spec, PermutationSpec):
        raise UserError(f"--spec '{args.spec}' returned a {type(spec).__name__}, not a "
                        "landscape.align.PermutationSpec.")
    return spec


def check_spec(model: nn.Module, spec: PermutationSpec, x: torch.Tensor) -> None:
    """Refuse a spec under which a random permutation changes the model's outputs on ``x``."""
    try:
        err = spec_error(model, spec, x)
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0].rstrip(".")
        raise UserError(f"the permutation spec does not fit the model ({reason}).") from None
    if not err <= SPEC_TOLERANCE:
        raise UserError(f"a random permutation by the spec changes the model's outputs (by {err:.2g} of their "
                        "size), so the spec misses a coupling of units; fix it or pass another --spec.")


# --- pairs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """A run's end, to be aligned to its pruning solution's end (the reference)."""

    run: Run
    reference: Run


def find_pairs(selected: list[Run], pool: list[Run]) -> list[Pair]:
    """Each selected run with its family's seed-0 pruning solution (not the solution itself)."""
    pairs = []
    for run in selected:
        ref = family_solution(pool, run)
        if ref is None:
            if run.parent:
                print(f"warning: {run.run_id}'s pruning solution {run.parent} is not a complete run here; "
                      "skipping it", file=sys.stderr)
            continue
        if ref.run_id != run.run_id:
            pairs.append(Pair(run, ref))
    if not pairs:
        raise UserError("no selected run has a pruning solution to be aligned to (lottery, scratch or other "
                        "derived runs whose parent prune run is complete, or prune runs of other seeds).")
    return sorted(pairs, key=lambda p: (method_rank(p.run.method), p.run.method, p.run.seed, p.run.run_id))


def _fit(state: dict, like: dict, label: str) -> None:
    """Refuse a checkpoint whose entries are not the model's (another architecture)."""
    if set(state) != set(like) or any(tuple(state[k].shape) != tuple(like[k].shape) for k in like):
        raise UserError(f"checkpoint {label} does not fit the model of the runs; select runs of one architecture.")


def parameter_entries(state: dict) -> dict[str, torch.Tensor]:
    """The parameters of a state_dict (BatchNorm statistics left out): what weight matching compares."""
    return {k: v for k, v in state.items() if v.is_floating_point() and not is_buffer_name(k)}


def _union(masks_a: dict, masks_b: dict) -> tuple[float, float]:
    union = union_masks([{"masks": masks_a}, {"masks": masks_b}])
    if not union:
        return float("nan"), float("nan")
    active = sum(int(m.sum()) for m in union.values())
    return float(active), active / sum(m.numel() for m in union.values())


# --- measuring --------------------------------------------------------------------------------------
def align_checkpoints(model: nn.Module, spec: PermutationSpec, reference: dict, run: dict, data, alphas: np.ndarray,
                      *, recalibration_data=None, device="cpu", seed: int = 0,
                      max_iter: int = 100) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Barriers and curves on the line from ``run`` (alpha 0) to ``reference`` (alpha 1), before and after
    permuting ``run`` to match ``reference``: ``(rows, curves)``, each with an ``aligned`` column.

    ``reference`` and ``run`` are checkpoints (``{"model": state_dict, "masks": {...}}``) of ``model``'s
    architecture. The aligned line has the same endpoints as the unaligned one (the permuted run computes
    the run's function, and the reference is the reference), so only its inner alphas are evaluated and
    its values at 0 and 1 are the unaligned line's. Raises a ValueError (one sentence) for checkpoints
    that do not fit ``spec``.
    """
    ref_masks, run_masks = reference.get("masks") or {}, run.get("masks") or {}
    perms = weight_matching(spec, parameter_entries(reference["model"]), parameter_entries(run["model"]),
                            ref_masks, run_masks, seed=seed, max_iter=max_iter)
    aligned, aligned_masks = apply_permutation(spec, perms, run["model"], run_masks)
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    options = {"recalibrate_bn": recalibration_data is not None, "recalibration_data": recalibration_data,
               "device": device}
    line = interpolate(model, run["model"], reference["model"], data, alphas=alphas, **options)
    inner = ~(np.isclose(alphas, 0.0, rtol=0, atol=1e-9) | np.isclose(alphas, 1.0, rtol=0, atol=1e-9))
    aligned_line = interpolate(model, aligned, reference["model"], data, alphas=alphas[inner], **options)
    aligned_loss, aligned_acc = line.loss.copy(), line.accuracy.copy()
    aligned_loss[inner], aligned_acc[inner] = aligned_line.loss, aligned_line.accuracy
    space = ParamSpace(reference["model"])
    i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1.0)))
    frames, rows = [], []
    for is_aligned, state, masks, loss, acc in ((False, run["model"], run_masks, line.loss, line.accuracy),
                                                (True, aligned, aligned_masks, aligned_loss, aligned_acc)):
        error = 1.0 - acc
        frames.append(pd.DataFrame({"aligned": is_aligned, "alpha": alphas, "loss": loss, "error": error}))
        active, density = _union(ref_masks, masks)
        rows.append({"aligned": is_aligned,
                     "loss_barrier": barrier_above_chord(alphas, loss),
                     "loss_barrier_frankle": barrier_max_minus_mean(alphas, loss),
                     "error_barrier": barrier_max_minus_mean(alphas, error),
                     "error_barrier_chord": barrier_above_chord(alphas, error),
                     "l2": space.distance(state, reference["model"]), "union_active": active,
                     "union_density": density, "run_loss": loss[i0], "reference_loss": loss[i1],
                     "run_error": error[i0], "reference_error": error[i1], "units_moved": moved if is_aligned else 0})
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)


def measure_pair(pair: Pair, model: nn.Module, spec: PermutationSpec, data, alphas: np.ndarray, *, split: str,
                 **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`align_checkpoints` of a pair's ends, as rows of ``align.csv`` and ``align_curves.csv``
    (``options``: recalibration_data, device, seed, max_iter)."""
    like = model.state_dict()
    ref, run = pair.reference.checkpoint("end"), pair.run.checkpoint("end")
    _fit(ref["model"], like, f"{pair.reference.run_id}:end")
    _fit(run["model"], like, f"{pair.run.run_id}:end")
    try:
        rows, curves = align_checkpoints(model, spec, ref, run, data, alphas, **options)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"cannot align {pair.run.run_id} to {pair.reference.run_id} "
                        f"({str(exc).splitlines()[0].rstrip('.')}).") from None
    ident = {"run_id": pair.run.run_id, "method": pair.run.method, "seed": pair.run.seed,
             "reference": pair.reference.run_id}
    rows = rows.assign(**ident, split=split, did_not_train=pair.run.did_not_train)
    curves = curves.assign(**ident, split=split)
    return rows[SUMMARY_COLUMNS], curves[CURVE_COLUMNS]


def compute(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every pair of the arguments, measured: the rows of ``align.csv`` and ``align_curves.csv``."""
    alphas = alpha_grid(args.points)
    if args.max_iter < 1:
        raise UserError(f"--max-iter must be at least 1, got {args.max_iter}.")
    source = RunSource.from_args(args)  # a runs directory or manifest, opened once for both
    selected = source.select(**selectors(args, method=DEFAULT_METHODS))
    pool = source.pool()
    pairs = find_pairs(selected, pool)
    runs = list({r.run_id: r for p in pairs for r in (p.reference, p.run)}.values())
    check_same_architecture(runs)
    device = resolve_device(args.device)
    dataset = runs[0].dataset(args.data_dir)
    data = split_data(dataset, args.split, args.examples)
    recal = split_data(dataset, "train", args.examples) if args.recalibrate_bn else None
    model = pairs[0].reference.build()
    spec = spec_from_args(args, model)
    probe = pairs[0].reference.checkpoint("end")["model"]
    _fit(probe, model.state_dict(), f"{pairs[0].reference.run_id}:end")
    model.load_state_dict(probe)
    check_spec(model, spec, data[0][:256])
    rows, curves = [], []
    for pair in tqdm(pairs, desc="pairs", unit="pair", disable=args.quiet, file=sys.stderr):
        pair_rows, pair_curves = measure_pair(pair, model, spec, data, alphas, split=args.split,
                                              recalibration_data=recal, device=device, seed=args.match_seed,
                                              max_iter=args.max_iter)
        rows.append(pair_rows)
        curves.append(pair_curves)
    return pd.concat(rows, ignore_index=True), pd.concat(curves, ignore_index=True)


def before_after(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds, per method, of the barriers and the distance before and after alignment
    (runs that did not train left out)."""
    cols = ["method", "n"] + [f"{m}_{s}" for m in ("loss_barrier", "error_barrier", "l2")
                              for s in ("unaligned", "aligned")]
    trained = summary[~summary["did_not_train"].astype(bool)]
    if trained.empty:
        return pd.DataFrame(columns=cols)
    g = trained.groupby(["method", "aligned"], sort=False)
    means = g[["loss_barrier", "error_barrier", "l2"]].mean().unstack("aligned")
    means.columns = [f"{m}_{'aligned' if a else 'unaligned'}" for m, a in means.columns]
    out = means.reset_index()
    out.insert(1, "n", g.size().unstack("aligned")[False].to_numpy())
    return out[cols].sort_values("method", key=lambda s: s.map(method_rank))


# --- picture ----------------------------------------------------------------------------------------
def plot_align(curves: pd.DataFrame, path, split: str) -> list:
    """Loss (top) and error (bottom) along the lines, a column per method; dashed unaligned, solid aligned."""
    methods = order_methods(curves["method"])
    fig, axes = new_figure(2, len(methods), figsize=(4.2 * len(methods), 6.4), squeeze=False, sharex=True)
    for j, method in enumerate(methods):
        sub = curves[curves["method"] == method]
        for (_, aligned), g in sub.groupby(["run_id", "aligned"], sort=False):
            style = dict(color=method_color(method), lw=1.2, alpha=0.85 if aligned else 0.5,
                         ls="-" if aligned else "--", label="aligned" if aligned else "unaligned")
            axes[0][j].plot(g["alpha"], g["loss"], **style)
            axes[1][j].plot(g["alpha"], 100 * g["error"], **style)
        axes[0][j].set_title(method)
        axes[1][j].set_xlabel("alpha (0: run's end, 1: pruning solution)")
        for ax in axes[:, j]:
            for x in (0.0, 1.0):
                ax.axvline(x, color="0.6", lw=0.8, ls=":")
        handles, labels = axes[0][j].get_legend_handles_labels()
        keep = dict(zip(labels, handles))
        axes[0][j].legend(keep.values(), keep.keys(), loc="upper right")
    axes[0][0].set_ylabel(f"{split} loss")
    axes[1][0].set_ylabel(f"{split} error (%)")
    return save_figure(fig, path)


# --- CLI --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.align``."""
    parser = analysis_parser(
        "align", "Loss and error barriers on the straight line from each run's end to its pruning solution, "
                 "before and after permuting the run's units (weights and mask together) to match the solution "
                 "by weight matching (Ainsworth et al. 2022); by default for lottery, scratch and the prune runs "
                 "of other seeds.")
    parser.add_argument("--split", default="train", choices=("train", "test"), help="data the loss is measured on")
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES,
                        help="a fixed subset of this many examples of the split (the trainer's metrics batch)")
    parser.add_argument("--points", type=int, default=29,
                        help="alphas evenly spaced on [-0.2, 1.2] (0 and 1 are added when missing)")
    parser.add_argument("--recalibrate-bn", action="store_true",
                        help="recompute BatchNorm statistics from the training inputs at every point")
    parser.add_argument("--match-seed", type=int, default=0, help="seed of the order weight matching visits layers in")
    parser.add_argument("--max-iter", type=int, default=100, help="most sweeps of weight matching over the layers")
    parser.add_argument("--spec", default=None, metavar="MODULE:FUNCTION",
                        help="callable taking the model and returning its landscape.align.PermutationSpec "
                             "(default: the toolkit's models and nn.Sequential chains have theirs)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the alignment CLI; returns 0 (bad input exits with code 2)."""
    args = build_parser().parse_args(argv)
    summary, curves = compute(args)
    lines = [f"barriers to the pruning solution before and after weight matching ({args.split} split; mean over seeds):",
             before_after(summary).to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    untrained = sorted(set(summary.loc[summary["did_not_train"].astype(bool), "run_id"]))
    if untrained:
        lines.append(f"left out of the means (did not train: final training accuracy within 5 points of chance): "
                     f"{', '.join(untrained)}")
    write_outputs(output_dir(args), {"align.csv": summary, "align_curves.csv": curves},
                  figures={"align.png": lambda path: plot_align(curves, path, args.split)}, report="\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
