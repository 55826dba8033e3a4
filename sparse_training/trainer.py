"""The training loop: fixed and small; masks, mask updaters, metrics and checkpoints plug into it."""
from __future__ import annotations

import functools
import math
import os
import platform
import tempfile
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from landscape.evaluate import evaluate

from . import distributed as ddp
from .augment import augment_batch, check_augment
from .config import AUGMENT_NAMES, OPTIMIZER_NAMES, TrainConfig, parse_save_steps, parse_sizes
from .data import Dataset, load_dataset, require_full_dataset, resolve_data_dir
from .distributions import check_sparsity
from .errors import UserError
from .io import atomic_torch_save
from .masks import Masks, maskable_names
from .methods import check_match_width, check_model_options, get_method, parent_path, prepare_start, seed_for
from .metrics import fixed_batches, gradient_flow, masked_gradient, param_distance
from .models import fused_relu_pools, sparse_kernels
from .rundir import RunDir, check_run_id
from .updaters import MaskUpdater, make_updater


# The metrics rows' gradient is summed over chunks of this many examples on a CPU (where the model is
# batch-independent): a LeNet-5 gradient over the 1,000-image metrics batch is ~1.3x faster so, and rows
# are a fifth of a faithful-protocol run. RigL's growth gradient (it steers training) is taken whole.
METRICS_CHUNK = 125


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without one is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu.")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda.")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """One of sgd, momentum, adam, adamw, rmsprop, adagrad with the config's lr and weight decay
    (an L2 term in the gradient for all but adamw, whose decay is decoupled from the adaptive step)."""
    lr, wd, params = cfg.resolved_lr(), cfg.weight_decay, list(model.parameters())
    if cfg.weight_decay_on == "weights" and wd:
        # Keras' kernel_regularizer: conv/linear weights decay, biases and norm parameters do not
        names = set(maskable_names(model))
        decayed = [p for n, p in model.named_parameters() if n in names]
        others = [p for n, p in model.named_parameters() if n not in names]
        params = [{"params": decayed}, {"params": others, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise UserError(f"unknown optimizer '{cfg.optimizer}'; choose one of {', '.join(OPTIMIZER_NAMES)}.")


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate at ``step``: cosine decay to zero over ``total`` steps, or constant."""
    base = cfg.resolved_lr()
    if cfg.schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def validate(cfg: TrainConfig) -> None:
    """Check names and ranges before any work; each problem is one UserError sentence."""
    from .data import DATASETS
    from .models import MODELS

    get_method(cfg.method)
    if cfg.model not in MODELS:
        raise UserError(f"unknown model '{cfg.model}'; choose one of {', '.join(MODELS)}.")
    check_model_options(cfg)
    check_match_width(cfg)
    if cfg.sparse_kernels and cfg.model != "lenet5":  # it would be silently ignored
        raise UserError(f"--sparse-kernels applies to lenet5's convolutions only; model '{cfg.model}' would "
                        "train exactly as without it; drop the flag.")
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown dataset '{cfg.dataset}'; choose one of {', '.join(DATASETS)}.")
    if cfg.optimizer not in OPTIMIZER_NAMES:
        raise UserError(f"unknown optimizer '{cfg.optimizer}'; choose one of {', '.join(OPTIMIZER_NAMES)}.")
    check_sparsity(cfg.sparsity)
    if cfg.is_sparse() and cfg.sparsity == 0.0:
        raise UserError(f"method '{cfg.method}' needs --sparsity above 0.")
    for name in ("batch_size", "epochs", "metrics_batch"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1.")
    if cfg.steps is not None and cfg.steps < 1:
        raise UserError("--steps must be at least 1.")
    if cfg.augment not in AUGMENT_NAMES:
        raise UserError(f"unknown augmentation '{cfg.augment}'; choose one of {', '.join(AUGMENT_NAMES)}.")
    if cfg.augment != "none" and cfg.dataset in ("digits", "mnist1d"):  # known before loading: vectors
        raise UserError(f"--augment {cfg.augment} needs image data; dataset '{cfg.dataset}' gives vectors.")
    for name in ("shift_pixels", "log_points", "log_every"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be at least 0.")
    if not 0.0 <= cfg.drop_fraction <= 1.0:
        raise UserError("--drop-fraction must lie in [0, 1].")
    if not 0.0 <= cfg.prune_start < cfg.prune_end <= 1.0:
        raise UserError("--prune-start and --prune-end must satisfy 0 <= start < end <= 1.")
    if cfg.method == "prune" and cfg.prune_scope == "global" and cfg.distribution != TrainConfig().distribution:
        # a global magnitude ranking sets every layer's density itself; a distribution would be ignored
        raise UserError(f"--prune-scope global ranks all layers together, so it sets the per-layer densities itself "
                        f"and --distribution {cfg.distribution} would be ignored; drop it or use --prune-scope layer.")
    begin, end = cfg.prune_begin_step, cfg.prune_end_step
    if (begin is not None and begin < 0) or (end is not None and end < 1) or (
            begin is not None and end is not None and begin >= end):
        raise UserError("--prune-begin-step and --prune-end-step must satisfy 0 <= begin < end.")
    if cfg.small_dense_sizes:
        parse_sizes(cfg.small_dense_sizes)
    if cfg.lr is not None and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UserError("--lr must be a positive number.")
    parse_save_steps(cfg.save_steps)


def versions() -> dict[str, str]:
    """Versions of the software that produced a run."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("sparse-gradflow")
    except PackageNotFoundError:
        own = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "sparse-gradflow": own}


@dataclass
class Trainer:
    """Runs one training run into a run directory. Build it with :func:`setup_run`."""

    cfg: TrainConfig
    run: RunDir
    model: nn.Module
    masks: Masks
    data: Dataset
    device: torch.device
    optimizer: torch.optim.Optimizer
    updater: MaskUpdater | None
    start_params: dict[str, torch.Tensor]
    step: int = 0
    rows: list[dict] = field(default_factory=list)
    quiet: bool = False
    log_seconds: float = 0.0  # wall time spent measuring and writing metrics rows (not training)
    dist: ddp.DistInfo | None = None  # set under torchrun: data-parallel over the process group
    _epoch_perm: tuple[int, torch.Tensor] | None = field(default=None, init=False, repr=False)  # (epoch, its permutation)

    def __post_init__(self) -> None:
        d = self.device
        # the datasets stay in host memory; batches are moved to the device as they are used
        self.x_train, self.y_train = self.data.x_train, self.data.y_train
        self.x_test, self.y_test = self.data.x_test, self.data.y_test
        metric, grow = fixed_batches(len(self.x_train), self.cfg.metrics_batch, self.cfg.metrics_examples)
        self.metric_x, self.metric_y = self.x_train[metric].to(d), self.y_train[metric].to(d)
        self.grow_x, self.grow_y = self.x_train[grow].to(d), self.y_train[grow].to(d)
        self.is_main = self.dist is None or self.dist.is_main
        self.net = ddp.wrap(self.model, self.dist, d)  # what training steps call (DDP or the model)
        self.n = len(self.x_train)
        self.steps_per_epoch = math.ceil(self.n / self.cfg.batch_size)
        self.total = self.cfg.steps or self.cfg.epochs * self.steps_per_epoch
        self.log_every = self.cfg.log_every or max(1, self.steps_per_epoch // 2)
        n = self.cfg.log_points
        self.log_steps = {round(k * self.total / n) for k in range(n + 1)} if n else set()
        self.ckpt_every = self.cfg.checkpoint_every or self.steps_per_epoch
        self.save_steps = parse_save_steps(self.cfg.save_steps)
        self.enforce = self.masks.sparsity() > 0 or self.updater is not None
        self.maskable = list(self.masks)

    # --- measurements ----------------------------------------------------------------
    def sparse_block(self):
        """The block in which convolutions may skip masked weights (``--sparse-kernels``): only where the
        masked gradient is what is wanted (training steps, masked rows, evaluation), never RigL's growth."""
        use = self.cfg.sparse_kernels and self.enforce
        return sparse_kernels(self.model, self.masks if use else None)

    def measure(self, phase: str = "train") -> dict:
        """One metrics row. Rows around mask updates measure gradient flow only (no test pass)."""
        with self.sparse_block():
            grads, loss, acc = masked_gradient(self.model, self.masks, self.metric_x, self.metric_y,
                                               train_mode=self.cfg.metrics_mode == "train",
                                               chunk=METRICS_CHUNK if self.device.type == "cpu" else None)
            if phase == "train":
                # rank 0 alone measures, over the whole test split (not a shard); 250 keeps LeNet-5 in cache
                test = evaluate(self.model, (self.x_test, self.y_test), batch_size=250, distributed=False)
                test_loss, test_acc = test.loss, test.accuracy
            else:
                test_loss = test_acc = float("nan")
        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "phase": phase,
               "lr": lr_at(self.cfg, self.step, self.total), "train_loss": loss, "train_acc": acc,
               "test_loss": test_loss, "test_acc": test_acc, "sparsity": self.masks.sparsity()}
        row.update(gradient_flow(grads, self.masks, self.maskable))
        row["dist_to_start"] = param_distance(self.model, self.start_params)
        return row

    def log(self, phase: str = "train") -> dict:
        t0 = time.perf_counter()
        row = self.measure(phase)
        self.rows.append(row)
        self.run.write_metrics(pd.DataFrame(self.rows))
        self.log_seconds += time.perf_counter() - t0
        return row

    def grow_indices(self, step: int) -> torch.Tensor | None:
        """Training indices of RigL's growth batch at ``step``: fresh ones drawn from the run's own
        'grow' seed stream at each update (``--grow-batch fresh``), or None for the fixed batch."""
        if self.cfg.grow_batch == "fixed":
            return None
        g = torch.Generator().manual_seed(seed_for(self.cfg.seed, "grow") * 100_003 + step)
        return torch.randperm(self.n, generator=g)[:min(self.cfg.metrics_batch, self.n)]

    def dense_grow_grads(self) -> dict[str, torch.Tensor]:
        """Dense gradients (no mask) on the growth batch of the current step, for RigL."""
        idx = self.grow_indices(self.step)
        x, y = (self.grow_x, self.grow_y) if idx is None else (self.x_train[idx].to(self.device), self.y_train[idx].to(self.device))
        grads, _, _ = masked_gradient(self.model, None, x, y)
        return grads

    # --- checkpoints -----------------------------------------------------------------
    def snapshot(self, with_state: bool) -> dict:
        ckpt = {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "masks": self.masks.as_dict(), "step": self.step,
                "epoch": self.step // self.steps_per_epoch}
        if with_state:  # under DDP every rank must call this (the RNG states are gathered)
            ckpt["optimizer"] = self.optimizer.state_dict()
            ckpt.update(ddp.gather_rng(self.dist, self.device))
        return ckpt

    def save(self, path: Path, ckpt: dict) -> None:
        """Write a checkpoint atomically; under DDP only rank 0 writes."""
        if self.is_main:
            atomic_torch_save(path, ckpt)

    def save_periodic(self) -> None:
        ckpt = self.snapshot(with_state=True)
        if not self.is_main:
            return
        atomic_torch_save(self.run.checkpoint_path(self.step), ckpt)
        periodic = self.run.step_checkpoints("")
        keep = max(1, self.cfg.keep_checkpoints)
        for step, path in periodic[:-keep]:
            if step not in self.save_steps:
                path.unlink(missing_ok=True)

    # --- the loop --------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """Indices of the (global) mini-batch at ``step``: a per-epoch permutation seeded by (seed, epoch)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._epoch_perm is None or self._epoch_perm[0] != epoch:  # drawn once per epoch, not per step
            g = torch.Generator().manual_seed(seed_for(self.cfg.seed, "data") * 10_007 + epoch)
            self._epoch_perm = (epoch, torch.randperm(self.n, generator=g))
        return self._epoch_perm[1][pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size]

    def train_step(self) -> float:
        idx = self.batch_indices(self.step)
        local = ddp.shard(idx, self.dist)  # this rank's slice of the global batch
        x, y = self.x_train[local], self.y_train[local]
        if self.cfg.augment != "none":  # one generator per step: reruns and resumes draw the same
            g = torch.Generator().manual_seed(seed_for(self.cfg.seed, "augment") * 1_000_003 + self.step)
            x = augment_batch(x, self.cfg.augment, self.cfg.shift_pixels, g)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.cfg, self.step, self.total)
        if not self.model.training:  # train() walks every module: 0.5 ms a step on an MLP, so only when needed
            self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with fused_relu_pools(), self.sparse_block():  # faster on a CPU: the pools keep the bits, the
            logits = self.net(x)                        # sparse convolutions (opt-in) the values up to rounding
        if self.dist is None:
            loss = F.cross_entropy(logits, y)
        else:  # DDP averages over ranks: scale the shard's sum so the result is the global-batch mean
            world = self.dist.world_size
            loss = F.cross_entropy(logits, y, reduction="sum") * (world / len(idx))
        if self.dist is not None:  # every rank must see the same verdict on divergence
            loss_value = ddp.all_reduce_sum(loss.detach().clone(), self.dist) / self.dist.world_size
        else:
            loss_value = loss.detach()
        if not torch.isfinite(loss_value):
            raise TrainingDiverged(f"the training loss became {loss_value.item()} at step {self.step}")
        loss.backward()
        if self.enforce:
            self.masks.mask_grads(self.model)
        self.optimizer.step()
        if self.enforce:
            self.masks.apply(self.model)
        self.step += 1
        return loss_value.item()

    def should_log(self, step: int) -> bool:
        """Every ``log_every`` steps and at the end, plus steps 1, 2, 4, ... before that (early flow);
        with ``log_points`` only at its evenly spaced steps."""
        if self.log_steps:
            return step in self.log_steps
        early = step < self.log_every and (step & (step - 1)) == 0
        return early or step % self.log_every == 0 or step == self.total

    def mask_update(self) -> None:
        ckpt = self.snapshot(with_state=False)
        if self.updater.snapshots and self.is_main:
            atomic_torch_save(self.run.checkpoint_path(self.step, "pre"), ckpt)
            self.log("pre_update")
        self.updater.update(self.step, self.model, self.masks, self.optimizer, self.dense_grow_grads)
        ddp.check_identical({n: self.masks[n] for n in self.masks}, self.dist, self.step)
        if self.updater.snapshots and self.is_main:
            atomic_torch_save(self.run.checkpoint_path(self.step, "post"), self.snapshot(with_state=False))
            self.log("post_update")

    def fit(self) -> dict:
        """Train to the end, logging and checkpointing; returns the last metrics row."""
        if self.step == 0 and self.is_main:
            self.log()
        bar = tqdm(total=self.total, initial=self.step, disable=self.quiet or not self.is_main, desc=self.run.run_id,
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        last = self.rows[-1] if self.rows else {}
        try:
            while self.step < self.total:
                loss = self.train_step()
                if self.updater is not None and self.updater.is_update_step(self.step):
                    self.mask_update()
                if self.should_log(self.step) and self.is_main:  # metrics are measured once, on rank 0
                    last = self.log()
                    bar.set_postfix(loss=f"{loss:.3f}", test_acc=f"{last['test_acc']:.4f}")
                if self.step % self.ckpt_every == 0 and self.step < self.total:
                    self.save_periodic()
                elif self.step in self.save_steps:
                    self.save(self.run.checkpoint_path(self.step), self.snapshot(with_state=True))
                bar.update(1)
        finally:
            bar.close()
        self.save(self.run.checkpoint_path("end"), self.snapshot(with_state=False))
        return last


def check_output_dir(out: Path) -> None:
    """Create ``out`` if needed; an unwritable location is a UserError."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")  # unique: runs start concurrently
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write to output directory {out} ({exc.strerror or exc}).") from None


def setup_run(cfg: TrainConfig, out: str | Path, run_id: str | None = None, resume: bool = False,
              device: str = "auto", data_dir: str | None = None, quiet: bool = False) -> Trainer | None:
    """Validate, then create (or reopen for ``--resume``) the run directory and its trainer.

    Returns None when the run is already complete with the same settings. Under torchrun
    (``WORLD_SIZE`` > 1) it joins the process group first; rank 0 alone writes the run directory.
    """
    validate(cfg)
    if cfg.full_data:
        require_full_dataset(cfg.dataset, data_dir)
    info = ddp.init_from_env(device)
    ddp.check_launch(info, cfg)
    is_main = info is None or info.is_main
    run_id = check_run_id(run_id or cfg.default_run_id())
    out = Path(out)
    check_output_dir(out)  # on every rank: an error must stop them all, not leave some waiting
    run = RunDir(out / run_id)
    existed = run.exists()
    ddp.barrier(info)  # every rank has looked before rank 0 creates anything
    if existed:
        saved = TrainConfig.from_dict(run.read_config())
        if _comparable(saved) != _comparable(cfg):
            raise UserError(
                f"{run.path} already holds a run with different settings; choose another --run-id or --out."
            )
        if run.is_complete():
            return None
        if not resume:
            raise UserError(f"{run.path} holds an unfinished run; pass --resume to continue it.")
    dev = ddp.device_for(info, select_device(device))
    data = _cached_dataset(cfg.dataset, *_data_dir_key(data_dir))
    check_augment(cfg.augment, data.input_shape)
    spec = get_method(cfg.method)
    model, masks, extra = prepare_start(cfg, data.input_shape, data.num_classes)
    if "realised_sparsity" in extra:
        print(f"{run_id}: --match-width {cfg.match_width:g} realises sparsity {extra['realised_sparsity']:.4f} "
              f"({masks.num_active()} of {masks.numel()} maskable weights active)")
    model.to(dev)
    masks.to(dev)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(data.x_train) / cfg.batch_size)
    total = cfg.steps or cfg.epochs * steps_per_epoch
    if cfg.method == "prune" and cfg.prune_end_step is not None and cfg.prune_end_step > total:
        # a window past the end would leave the run short of its target sparsity without a word
        raise UserError(f"--prune-end-step {cfg.prune_end_step} lies past the run's {total} steps; the run would "
                        f"never reach --sparsity {cfg.sparsity:g}; lower it or train longer.")
    updater = make_updater(cfg, spec.updater, total, seed_for(cfg.seed, "grow"),
                           lr=lambda step: lr_at(cfg, step, total))

    torch.manual_seed(seed_for(cfg.seed, "dropout"))  # the global RNG (dropout) is seeded per run
    if existed:  # resume from the latest resumable checkpoint (or from start.pt)
        start = run.load("start")
        periodic = run.step_checkpoints("")
        latest = run.load(periodic[-1][0]) if periodic else None
        source = latest if latest is not None and "optimizer" in latest else start
        try:
            model.load_state_dict(source["model"])
        except RuntimeError:
            raise UserError(f"checkpoint in {run.path} does not fit the configured model.") from None
        masks = Masks(source["masks"]).to(dev)
        if "optimizer" in source:
            optimizer.load_state_dict(source["optimizer"])
        ddp.restore_rng(source, info, dev)  # dropout continues where it stopped
        step = int(source["step"])
        metrics = run.read_metrics()
        rows = metrics[metrics["step"] <= step].to_dict("records") if len(metrics) else []
        start_params = {k: v.to(dev) for k, v in start["model"].items()}
    else:
        config = cfg.to_dict()
        config.update(extra, run_id=run_id, data_source=data.source, versions=versions(),
                      input_shape=list(data.input_shape), num_classes=data.num_classes,
                      parent_path=str(parent_path(cfg)) if cfg.parent else None,
                      seeds={"seed": cfg.seed, **{p: seed_for(cfg.seed, p) for p in ("init", "reinit", "mask", "data", "grow", "augment")}},
                      total_steps=total, steps_per_epoch=steps_per_epoch, lr_resolved=cfg.resolved_lr(),
                      created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      world_size=1 if info is None else info.world_size,
                      backend=None if info is None else info.backend)
        config.setdefault("parent_run_id", None)
        start_params = {k: v.detach().clone() for k, v in model.named_parameters()}
        trainer = Trainer(cfg, run, model, masks, data, dev, optimizer, updater, start_params, quiet=quiet,
                          dist=info)
        if is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            # start.pt before config.json: config.json marks the run as existing, so a process killed
            # in between leaves a directory that is started afresh, never one that resumes without start.pt
            atomic_torch_save(run.checkpoint_path("start"), trainer.snapshot(with_state=False))
            run.write_config(config)
            run.write_status("running", 0)
        ddp.barrier(info)
        return trainer
    trainer = Trainer(cfg, run, model, masks, data, dev, optimizer, updater, start_params,
                      step=step, rows=rows, quiet=quiet, dist=info)
    if is_main:
        run.write_metrics(pd.DataFrame(rows))
        run.write_status("running", step)
    ddp.barrier(info)
    return trainer


def _data_dir_key(data_dir: str | None) -> tuple[str | None, int]:
    """The resolved data directory and its modification time: a file added, replaced or removed
    there changes the key, so the cache below never serves stale data."""
    root = resolve_data_dir(data_dir)
    try:
        return (str(root.resolve()), root.stat().st_mtime_ns) if root is not None else (None, 0)
    except OSError:
        return str(root), -1


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, data_dir: str | None, _mtime: int) -> Dataset:
    """A suite worker process trains many runs on one dataset, and loading full Fashion-MNIST takes
    ~1.5 s, so a process keeps the last two it loaded (runs only read them)."""
    return load_dataset(name, data_dir=data_dir)


def _comparable(cfg: TrainConfig) -> dict:
    d = cfg.identity()
    d["parent"] = str(Path(cfg.parent).resolve()) if cfg.parent else None
    return d


def run_training(cfg: TrainConfig, out: str | Path, run_id: str | None = None, resume: bool = False,
                 device: str = "auto", data_dir: str | None = None, quiet: bool = False) -> RunDir:
    """Train one run end to end. A NaN/inf loss marks it failed and raises a UserError."""
    trainer = setup_run(cfg, out, run_id, resume, device, data_dir, quiet)
    run = RunDir(Path(out) / (run_id or cfg.default_run_id()))
    if trainer is None:
        print(f"{run.path} is already complete; nothing to do.")
        return run
    t0 = time.perf_counter()
    try:
        last = trainer.fit()
    except TrainingDiverged as exc:
        if trainer.is_main:
            run.write_status("failed", trainer.step, reason=str(exc))
        raise UserError(f"{exc}; the run is marked failed and its last good checkpoint is kept.") from None
    except BaseException as exc:
        if trainer.is_main:
            run.write_status("failed", trainer.step, reason=f"{type(exc).__name__}: {exc}")
        raise
    if not trainer.is_main:
        return run
    run.write_status("complete", trainer.step, test_acc=last.get("test_acc"), test_loss=last.get("test_loss"),
                     seconds=round(time.perf_counter() - t0, 3), log_seconds=round(trainer.log_seconds, 3))
    return run
