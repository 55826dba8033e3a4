"""How much compute a preset needs: one training step per distinct architecture, timed on this device.

``python -m sparse_training.suite --preset tessera-paper --dry-run`` prints the estimate (other presets with
``--estimate``). A step is the trainer's: forward, cross-entropy, backward, masking of the gradients, the
optimizer step and masking of the weights, on a random batch of the run's size and input shape. A run's
estimate is its number of steps times its architecture's step time; logging (11 metric rows for the
Tessera presets) and data loading are left out, so the figure is a lower bound of the training itself.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .errors import UserError

# Full-size training sets a preset may name (the estimate needs no data on disk).
TRAIN_SIZES = {"mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000}
INPUT_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
# What sets the cost of a step: the network's shape. A masked sparse network computes densely, so a
# sparse-wide run costs what a dense one of its full width does whatever its sparsity; the optimizer,
# learning rate, seed and length do not change a step's cost much (the first run's optimizer is timed).
ARCH_FIELDS = ("model", "units", "depth", "batchnorm", "skip", "activation", "batch_size", "dataset", "network")


def run_steps(cfg: TrainConfig) -> int:
    """Training steps of a run: ``--steps``, else epochs x ceil(train size / batch)."""
    if cfg.steps:
        return int(cfg.steps)
    if cfg.dataset not in TRAIN_SIZES or not cfg.full_data:
        raise UserError(f"no compute estimate for runs on '{cfg.dataset}' without full data; the estimate knows "
                        f"{', '.join(TRAIN_SIZES)} (full data).")
    return int(cfg.epochs) * math.ceil(TRAIN_SIZES[cfg.dataset] / cfg.batch_size)


def time_step(cfg: TrainConfig, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of one training step of ``cfg``'s network (after one warm-up step) on ``device``."""
    from .methods import prepare_start
    from .trainer import make_optimizer

    shape = INPUT_SHAPES.get(cfg.dataset)
    if shape is None:
        raise UserError(f"no input shape known for '{cfg.dataset}'; the estimate knows {', '.join(INPUT_SHAPES)}.")
    model, masks, _ = prepare_start(dataclasses.replace(cfg, parent=None), shape, 10)
    model.to(device).train()
    masks.to(device)
    optimizer = make_optimizer(cfg, model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((cfg.batch_size, *shape), generator=g).to(device)
    y = torch.randint(0, 10, (cfg.batch_size,), generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        masks.mask_grads(model)
        optimizer.step()
        masks.apply(model)
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def arch_key(cfg: TrainConfig) -> tuple:
    """The settings of a run that set the cost of one of its steps (see ``ARCH_FIELDS``); ``units`` is the
    hidden width the network computes with (``hidden`` x ``width`` for a narrower dense run)."""
    sparse = cfg.is_sparse()
    units = cfg.hidden if sparse or not cfg.width else round(cfg.hidden * cfg.width)
    shape = {"units": units, "network": "sparse" if sparse else "dense"}
    return tuple(shape[f] if f in shape else getattr(cfg, f) for f in ARCH_FIELDS)


def estimate(configs: Sequence[TrainConfig], device: torch.device,
             timer: Callable[[TrainConfig, torch.device], float] = time_step, progress: bool = True) -> pd.DataFrame:
    """One row per distinct architecture: its runs, their steps, the timed step and the device-seconds."""
    from tqdm.auto import tqdm

    groups: dict[tuple, list[TrainConfig]] = {}
    for c in configs:
        groups.setdefault(arch_key(c), []).append(c)
    rows = []
    for key, cfgs in tqdm(groups.items(), desc="timing one step per architecture", unit="arch", disable=not progress):
        step = timer(cfgs[0], device)
        steps = sum(run_steps(c) for c in cfgs)
        rows.append({**dict(zip(ARCH_FIELDS, key)), "runs": len(cfgs), "steps": steps, "step_seconds": step,
                     "device_seconds": steps * step})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame, device: torch.device) -> str:
    """The estimate in a few lines: runs, steps, device-hours, and the costliest architectures."""
    total = table["device_seconds"].sum()
    top = table.sort_values("device_seconds", ascending=False).head(3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({torch.get_num_threads()} threads)"
    lines = [f"compute estimate on {name}: {int(table['runs'].sum()):,} runs, {int(table['steps'].sum()):,} training "
             f"steps, {len(table)} architectures timed; about {total / 3600:,.1f} device-hours "
             f"({total / 86400:,.1f} device-days) of training steps, logging and data loading not counted"]
    for r in top.itertuples():
        lines.append(f"  costliest: {r.network} depth {r.depth} width {r.units} "
                     f"{'bn ' if r.batchnorm else ''}{r.activation}: {r.runs} runs x "
                     f"{r.steps // max(r.runs, 1):,} steps x {1000 * r.step_seconds:.2f} ms = {r.device_seconds / 3600:,.1f} h")
    return "\n".join(lines)
