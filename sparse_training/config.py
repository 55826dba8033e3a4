"""Training hyperparameters: one dataclass whose fields are the CLI flags, the saved config and the run id."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


METHOD_NAMES = ("dense", "prune", "lottery", "scratch", "scratch+", "rigl", "rigl+", "set", "small-dense")
OPTIMIZER_NAMES = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.02, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "adagrad": 1e-2}
AUGMENT_NAMES = ("none", "shift", "flip", "shift+flip")


@dataclass
class TrainConfig:
    """Every hyperparameter of one training run. Field names are the CLI flags (``_`` -> ``-``)."""

    # what to train
    model: str = _f("lenet5", "model name (lenet5, lenet300, mlp, mnist1d-mlp, mnist1d-cnn, vgg16, resnet18)")
    dataset: str = _f("mnist", "dataset (mnist, fashion-mnist, cifar10, mnist1d, digits)")
    full_data: bool = _f(False, "refuse to run without the full dataset's files (no bundled-subset fallback)")
    method: str = _f("dense", "training method", METHOD_NAMES)
    sparsity: float = _f(0.95, "target fraction of masked weights in [0, 1) (ignored by dense)")
    distribution: str = _f("erk", "how sparsity is spread over layers", ("uniform", "erk"))
    first_layer_dense: bool = _f(False, "keep the first layer dense (others absorb the budget)")
    parent: str | None = _f(None, "parent run directory: its end mask (and, for lottery, its weights)")
    rewind: int = _f(0, "lottery: rewind to the parent's weights at this step (0 = its start.pt)")
    match_width: float | None = _f(None, "scratch/rigl: per-layer active counts equal the layer sizes of the dense "
                                         "network at this width multiplier (Tessera et al.'s same-capacity pairs)")
    shuffle_mask: bool = _f(False, "scratch/rigl: permute each layer's parent mask at random")
    init: str = _f("auto", "weight init; auto = sparse for scratch+/rigl+, dense otherwise; glorot = Keras "
                           "glorot-uniform (dense fans, gain 1; use with --init-dist uniform), then masked",
                   ("auto", "dense", "liu", "sparse", "glorot"))
    init_mode: str = _f("fanin", "fan used by the init", ("fanin", "fanout", "fanavg"))
    init_dist: str = _f("normal", "distribution of the init", ("normal", "uniform"))
    init_gain: str = _f("activation", "gain of the dense/liu/sparse inits: the hidden activation's (He-style) "
                                      "or one (Keras' variance scale 1.0)", ("activation", "one"))
    # architecture options
    activation: str = _f("relu", "hidden activation", ("relu", "prelu", "swish", "elu", "sigmoid", "tanh", "srelu"))
    batchnorm: bool = _f(False, "BatchNorm after hidden layers (mlp models; vgg16 always has it)")
    width: float = _f(1.0, "multiplier on every hidden width")
    depth: int = _f(3, "mlp: number of hidden layers")
    hidden: int = _f(256, "mlp: hidden width")
    skip: bool = _f(False, "mlp: identity skip connections between equal-width layers")
    # optimisation
    optimizer: str = _f("momentum", "optimizer", OPTIMIZER_NAMES)
    lr: float | None = _f(None, "learning rate (default by optimizer: sgd 0.1, momentum 0.02, "
                                "adam/adamw/rmsprop 1e-3, adagrad 1e-2)")
    momentum: float = _f(0.9, "momentum of the 'momentum' optimizer")
    weight_decay: float = _f(5e-4, "L2 weight decay (coefficient of w in the gradient, as in torch.optim; adamw: "
                                   "decoupled weight decay; 0 = no regularization)")
    weight_decay_on: str = _f("all", "parameters that get weight decay: all, or the conv/linear weights only "
                                     "(not biases, as Keras kernel_regularizer)", ("all", "weights"))
    augment: str = _f("none", "data augmentation of training batches (image data): random shifts of up to "
                              "--shift-pixels, horizontal flips, or both", AUGMENT_NAMES)
    shift_pixels: int = _f(2, "augment: largest shift in pixels, each direction")
    schedule: str = _f("cosine", "learning-rate schedule", ("cosine", "constant"))
    batch_size: int = _f(32, "mini-batch size")
    epochs: int = _f(15, "number of epochs (ignored when --steps is set)")
    steps: int | None = _f(None, "number of optimizer steps (overrides --epochs)")
    seed: int = _f(0, "seed of init, random mask and data order")
    # pruning (method prune)
    prune_start: float = _f(0.1, "prune: start of pruning as a fraction of training")
    prune_end: float = _f(0.6, "prune: end of pruning as a fraction of training")
    prune_every: int = _f(20, "prune: steps between pruning events")
    prune_begin_step: int | None = _f(None, "prune: first pruning step (overrides --prune-start)")
    prune_end_step: int | None = _f(None, "prune: last pruning step (overrides --prune-end)")
    prune_scope: str = _f("layer", "prune: per-layer targets from --distribution, or one global magnitude ranking "
                                   "(which sets the layer densities itself, so it refuses --distribution uniform; "
                                   "it keeps --first-layer-dense)", ("layer", "global"))
    # dynamic sparse training (rigl, rigl+, set)
    update_every: int = _f(100, "rigl/set: steps between mask updates (Delta T)")
    drop_fraction: float = _f(0.3, "rigl/set: initial fraction of active weights dropped per update")
    drop_schedule: str = _f("cosine", "rigl/set: drop fraction decays by cosine to --update-end, or follows "
                                      "the learning rate (alpha * lr(t)/lr(0), rigl_tf2's 'lr' schedule)",
                            ("cosine", "lr"))
    update_end: float = _f(0.75, "rigl/set: stop updating after this fraction of training")
    grow_batch: str = _f("fresh", "rigl: growth gradient on fresh training examples drawn per update from the "
                                  "run's seed, or on one fixed batch (the examples after the metrics batch)",
                         ("fresh", "fixed"))
    # logging and checkpoints
    log_every: int = _f(0, "steps between metric rows (0 = 2 rows per epoch); steps 1, 2, 4, ... below it are logged too")
    log_points: int = _f(0, "log at N+1 evenly spaced steps round(k T / N), k = 0..N, instead of --log-every "
                            "(Tessera et al. average gradient flow over 11 such points: N = 10)")
    checkpoint_every: int = _f(0, "steps between resumable checkpoints (0 = once per epoch)")
    keep_checkpoints: int = _f(1, "how many of the latest resumable checkpoints to keep")
    save_steps: str = _f("", "comma-separated steps whose checkpoints are always kept (e.g. for rewinding)")
    metrics_batch: int = _f(1000, "size of the fixed training batch used for gradient-flow metrics")
    metrics_examples: str = _f("random", "which training examples form the metrics batch: a fixed random draw "
                                         "(same for every run) or the first N", ("random", "first"))
    metrics_mode: str = _f("train", "module mode of gradient-flow rows (matters with BatchNorm/dropout)",
                           ("train", "eval"))
    sparse_kernels: bool = _f(False, "on a CPU, compute LeNet-5's convolutions over the active weights only in "
                                     "training steps, metrics rows and the test pass, where a layer keeps at most "
                                     "10%% of its weights (compiled loops; the same results up to float rounding, "
                                     "not bit for bit; about 0.6x the step time at 95%% sparsity)")
    small_dense_sizes: str = _f("", "small-dense: explicit hidden sizes, e.g. 3,3,27,20 (lenet5) or 8,8 "
                                    "(lenet300), instead of a width matched by parameter count")

    # fields that do not change what is computed, so they are not part of a run's identity
    NON_IDENTITY = ("save_steps", "keep_checkpoints")

    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR.get(self.optimizer, 0.05))

    def is_sparse(self) -> bool:
        return self.method not in ("dense", "small-dense")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def identity(self) -> dict[str, Any]:
        d = self.to_dict()
        for k in self.NON_IDENTITY:
            d.pop(k, None)
        if self.method == "dense":  # small-dense keeps it: its width is matched to the sparse network's count
            d["sparsity"] = 0.0
        return d

    def default_run_id(self, with_hash: bool = True) -> str:
        """``<model>-<dataset>[-s<sparsity>]-<method>-seed<seed>``, plus (``with_hash``) a short hash of
        any other non-default setting, so equal settings land in the same directory."""
        sparsity = f"-s{self.sparsity:g}" if self.is_sparse() else ""
        base = f"{self.model}-{self.dataset}{sparsity}-{self.method}-seed{self.seed}"
        if not with_hash:
            return base
        defaults = TrainConfig().identity()
        mine = self.identity()
        keys = ("model", "dataset", "method", "sparsity", "seed")
        extra = {k: v for k, v in mine.items() if k not in keys and v != defaults.get(k)}
        if extra:
            digest = hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
            base += f"-{digest}"
        return base


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """Add one flag per dataclass field, with its help text and default."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=f.default, help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float,
                "str | None": str}.get(str(f.type), str)
        parser.add_argument(flag, type=kind, default=f.default, choices=choices,
                            help=f"{help_text} (default: {f.default})")


def config_from_args(args: argparse.Namespace, cls=TrainConfig) -> TrainConfig:
    """Build the dataclass from parsed arguments."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parse_save_steps(text: str) -> set[int]:
    """Parse '100,200' into {100, 200}; a malformed list is a UserError."""
    try:
        return {int(s) for s in text.split(",") if s.strip()}
    except ValueError:
        raise UserError(f"--save-steps must be comma-separated integers, not '{text}'.") from None


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse '3,3,27,20' into (3, 3, 27, 20); a malformed or non-positive list is a UserError."""
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UserError(f"--small-dense-sizes must be comma-separated positive integers, not '{text}'.")
    return sizes
