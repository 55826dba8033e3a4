"""Signal propagation at initialization: spread of the logits against sparsity per init; CLI: ``python -m analysis.signal``.

Evci et al. (2022), Section 4.1 / Figure 3: with the dense initialization (He et al.'s variance
2 / fan_in of the *dense* layer, then masked) the output of a sparse network shrinks as sparsity
grows, since each unit sums fewer inputs; Liu et al.'s scaling (dense std / sqrt(layer density))
corrects it on average per layer, and the sparse initialization (variance from each unit's own
active fan-in) keeps it at the dense network's level, unit by unit.

For every init (``dense``, ``liu``, ``sparse``), every sparsity (plus the dense network, sparsity 0)
and every repeat, a fresh model gets a random mask (``Masks.random``, ``--distribution``, default
``erk`` as in the presets) and an initialization (``sparse_training.init.initialize``); the repeat
index seeds both, so within a repeat the three inits share the mask and the Gaussian draws and at
sparsity 0 they coincide exactly. The model (in eval mode) is fed two batches:

- ``gaussian``: ``--batch`` (default 512) inputs of i.i.d. unit Gaussians of the dataset's input
  shape, drawn anew for each repeat;
- ``data``: the first ``--batch`` test examples of the dataset (standardized as in training) in a
  fixed shuffled order, the same batch for every repeat.

``output_std`` is the standard deviation of all the batch's logits (pre-softmax outputs, every
example and class pooled, ddof = 0).

Outputs (in ``--out``, default ``runs/_analysis``): ``signal.csv`` (model, init, input, sparsity,
repeat, output_std) and ``signal.png`` (a panel per input: output std against sparsity per init,
mean +- std over repeats, log scale).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.cli import Command, bare_parser, check_at_least
from analysis.plotting import new_figure, save_figure
from analysis.runs import add_output_args
from sparse_training.data import load_dataset
from sparse_training.distributions import DISTRIBUTIONS, check_sparsity
from sparse_training.errors import UserError, cli_entry
from sparse_training.init import SCHEMES, initialize
from sparse_training.masks import Masks
from sparse_training.models import DEFAULT_INPUT, MODELS, build_model

DEFAULT_SPARSITIES = "0.5,0.8,0.9,0.95,0.98"
INPUTS = ("gaussian", "data")
INIT_COLORS = {"dense": "#ff7f0e", "liu": "#1f77b4", "sparse": "#2ca02c"}
COLUMNS = ["model", "init", "input", "sparsity", "repeat", "output_std"]
# Seeds of repeat r: masks and init draw from separate streams, and neither from any training run's.
MASK_SEED, INIT_SEED, INPUT_SEED, DATA_ORDER_SEED = 7_000_001, 7_000_002, 7_000_003, 7_000_004


def default_dataset(model: str) -> str:
    """The dataset a model's signal is measured on by default: mnist1d for mnist1d-* models, cifar10 for
    the CIFAR nets, else mnist."""
    if model.startswith("mnist1d"):
        return "mnist1d"
    if model in ("vgg16", "resnet18"):
        return "cifar10"
    return "mnist"


def parse_sparsities(text: str) -> list[float]:
    """Comma-separated sparsities in [0, 1), sorted, with 0 (the dense reference) added."""
    values = []
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        try:
            s = float(token)
        except ValueError:
            raise UserError(f"--sparsities takes numbers in [0, 1) separated by commas, not '{token}'.") from None
        values.append(check_sparsity(s))
    if not values:
        raise UserError("--sparsities names no sparsity; use e.g. --sparsities 0.5,0.9,0.98.")
    return sorted({0.0, *values})


def parse_names(text: str, known: Sequence[str], option: str) -> list[str]:
    """A comma list of names, each one of ``known``."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n not in known:
            raise UserError(f"{option} takes {', '.join(known)} separated by commas; '{n}' is none of them.")
    if not names:
        raise UserError(f"{option} names nothing; choose from {', '.join(known)}.")
    return list(dict.fromkeys(names))


def output_std(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Standard deviation (ddof 0) of all logits of ``model`` (eval mode, no grad) on the batch ``x``."""
    with torch.no_grad():
        logits = model.eval()(x)
    return float(logits.double().std(correction=0))


def signal_table(model_name: str, sparsities: Sequence[float], inits: Sequence[str], repeats: int,
                 input_shape: tuple[int, ...], *, num_classes: int = 10, data_batch: torch.Tensor | None = None,
                 gaussian: bool = True, distribution: str = "erk", batch: int = 512,
                 device: torch.device | str = "cpu", quiet: bool = True) -> pd.DataFrame:
    """Output std for every (init, input, sparsity, repeat).

    Gaussian batches (``gaussian=True``) of ``batch`` inputs are drawn per repeat; ``data_batch``, when
    given, is the fixed batch of real inputs.
    """
    device = torch.device(device)
    rows = []
    total = repeats * len(sparsities) * len(inits)
    bar = tqdm(total=total, desc="signal", unit="net", disable=quiet, file=sys.stderr)
    for r in range(repeats):
        gauss = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(INPUT_SEED + r))
        batches = {"gaussian": gauss} if gaussian else {}
        if data_batch is not None:
            batches["data"] = data_batch
        batches = {k: v.to(device) for k, v in batches.items()}
        for s in sparsities:
            for init in inits:
                model = build_model(model_name, input_shape, num_classes)
                masks = Masks.random(model, s, distribution, seed=MASK_SEED + r)
                initialize(model, masks, scheme=init, seed=INIT_SEED + r)
                model.to(device)
                for name, x in batches.items():
                    rows.append({"model": model_name, "init": init, "input": name, "sparsity": s, "repeat": r,
                                 "output_std": output_std(model, x)})
                bar.update(1)
    bar.close()
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1), min, max and count of output_std over repeats, per input, init and sparsity."""
    g = table.groupby(["input", "init", "sparsity"], sort=False)["output_std"]
    return g.agg(["mean", "std", "min", "max", "count"]).reset_index().rename(columns={"count": "n"})


def plot_signal(table: pd.DataFrame, path: Path, model_name: str, distribution: str) -> list:
    """A panel per input: output std against sparsity (evenly spaced ticks) per init, mean +- std, log scale.

    Where mean - std would be below the smallest repeat (or zero), the lower bar ends at the smallest repeat.
    """
    summ = summary(table)
    inputs = [i for i in INPUTS if i in set(summ["input"])]
    sparsities = sorted(set(summ["sparsity"]))
    pos = {s: i for i, s in enumerate(sparsities)}
    fig, axes = new_figure(1, len(inputs), figsize=(4.8 * len(inputs), 3.6), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], inputs):
        sub = summ[summ["input"] == name]
        inits = list(dict.fromkeys(sub["init"]))
        for j, init in enumerate(inits):
            g = sub[sub["init"] == init].sort_values("sparsity")
            x = np.array([pos[s] for s in g["sparsity"]]) + (j - (len(inits) - 1) / 2) * 0.06
            std = g["std"].fillna(0.0).to_numpy()
            # on a log axis mean - std may be <= 0: the lower bar stops at the smallest repeat instead
            lower = g["mean"].to_numpy() - np.maximum(g["mean"].to_numpy() - std, g["min"].to_numpy())
            ax.errorbar(x, g["mean"], yerr=np.vstack([lower, std]), color=INIT_COLORS.get(init, "#17becf"),
                        marker="o", ms=4, lw=1.3, capsize=3, label=init)
        ax.set_xticks(range(len(sparsities)))
        ax.set_xticklabels([f"{s:g}" for s in sparsities])
        ax.set_yscale("log")
        ax.set_xlabel(f"sparsity ({distribution})")
        ax.set_title(f"{model_name}: {name} input")
        ax.legend(title="init")
    axes[0][0].set_ylabel("std of the logits at init")
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.signal``."""
    parser = bare_parser(
        "signal", "Standard deviation of the logits at initialization against sparsity for the dense, Liu et al. "
                  "and sparse initializations, on Gaussian and on real inputs (Evci et al. 2022, Fig. 3).")
    parser.add_argument("--model", default="lenet5", help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--sparsities", default=DEFAULT_SPARSITIES,
                        help="comma-separated sparsities in [0, 1); the dense network (0) is always added")
    parser.add_argument("--inits", default=",".join(SCHEMES), help="comma-separated inits")
    parser.add_argument("--repeats", type=int, default=5, help="networks per (init, sparsity); each a new mask and init")
    parser.add_argument("--distribution", default="erk", choices=DISTRIBUTIONS,
                        help="how sparsity is spread over layers (the presets use erk)")
    parser.add_argument("--inputs", default="gaussian,data", help="which inputs: gaussian, data or both")
    parser.add_argument("--dataset", default=None,
                        help="dataset of the real inputs and the input shape (default: mnist1d for mnist1d-* "
                             "models, cifar10 for vgg16/resnet18, else mnist)")
    parser.add_argument("--batch", type=int, default=512, help="inputs per batch")
    add_output_args(parser, out="runs/_analysis", out_help="output directory")
    return parser


def format_summary(table: pd.DataFrame) -> str:
    """Mean +- std of the output std as a sparsity x init table per input."""
    summ = summary(table)
    parts = []
    for name in dict.fromkeys(summ["input"]):
        sub = summ[summ["input"] == name].copy()
        sub["cell"] = [f"{m:.4g} ± {s:.2g}" if not math.isnan(s) else f"{m:.4g}" for m, s in zip(sub["mean"], sub["std"])]
        wide = sub.pivot(index="sparsity", columns="init", values="cell")
        parts.append(f"{name} input (std of the logits, mean ± std over repeats):\n{wide.to_string()}")
    return "\n".join(parts)


def compute(cmd: Command) -> tuple[pd.DataFrame, str]:
    """The rows of ``signal.csv``, and what the inputs were (the dataset, or the input shape)."""
    args = cmd.args
    if args.model not in MODELS:
        raise UserError(f"unknown model '{args.model}'; choose one of {', '.join(MODELS)}.")
    sparsities = parse_sparsities(args.sparsities)
    inits = parse_names(args.inits, SCHEMES, "--inits")
    inputs = parse_names(args.inputs, INPUTS, "--inputs")
    check_at_least("--repeats", args.repeats, 1)
    check_at_least("--batch", args.batch, 2)
    device = cmd.device
    source = args.dataset or default_dataset(args.model)
    shape, num_classes, data_batch = DEFAULT_INPUT[args.model], 10, None
    if "data" in inputs or args.dataset:  # Gaussian input alone needs no data: the model's default shape
        dataset = load_dataset(source, data_dir=args.data_dir)
        shape, num_classes = dataset.input_shape, dataset.num_classes
        order = torch.randperm(len(dataset.x_test), generator=torch.Generator().manual_seed(DATA_ORDER_SEED))
        data_batch = dataset.x_test[order[: args.batch]] if "data" in inputs else None
    build_model(args.model, shape, num_classes)  # a model that does not fit the data fails here, early
    table = signal_table(args.model, sparsities, inits, args.repeats, shape, num_classes=num_classes,
                         data_batch=data_batch, gaussian="gaussian" in inputs, distribution=args.distribution,
                         batch=args.batch, device=device, quiet=args.quiet)
    return table, source if "data" in inputs else f"input shape {shape}"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the signal-propagation CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    table, inputs_text = compute(cmd)
    args = cmd.args
    cmd.write({"signal.csv": table}, {"signal.png": lambda path: plot_signal(table, path, args.model, args.distribution)},
              report=f"{args.model} ({inputs_text}), {args.distribution} masks, {args.repeats} repeats:\n"
                     + format_summary(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
