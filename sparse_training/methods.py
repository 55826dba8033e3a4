"""Methods as compositions: where the mask comes from x how weights start x which mask updater runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import TrainConfig, parse_sizes
from .errors import UserError
from .init import initialize
from .masks import Masks, maskable_names
from .models import build_model, count_parameters
from .rundir import RunDir


@dataclass(frozen=True)
class MethodSpec:
    """How a method starts and what (if anything) changes its mask during training."""

    name: str
    mask: str      # "none" | "dense-then-prune" | "parent" (required) | "parent-or-random"
    weights: str   # "init" | "parent-rewind"
    init: str      # default init scheme when --init auto
    updater: str | None  # None | "prune" | "rigl" | "set"


METHODS: dict[str, MethodSpec] = {
    "dense": MethodSpec("dense", "none", "init", "dense", None),
    "small-dense": MethodSpec("small-dense", "none", "init", "dense", None),
    "prune": MethodSpec("prune", "dense-then-prune", "init", "dense", "prune"),
    "lottery": MethodSpec("lottery", "parent", "parent-rewind", "dense", None),
    "scratch": MethodSpec("scratch", "parent-or-random", "init", "dense", None),
    "scratch+": MethodSpec("scratch+", "parent-or-random", "init", "sparse", None),
    "rigl": MethodSpec("rigl", "parent-or-random", "init", "dense", "rigl"),
    "rigl+": MethodSpec("rigl+", "parent-or-random", "init", "sparse", "rigl"),
    "set": MethodSpec("set", "parent-or-random", "init", "dense", "set"),
}


def get_method(name: str) -> MethodSpec:
    """Look up a method by name; an unknown one is a UserError."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}.") from None


def seed_for(seed: int, purpose: str) -> int:
    """A stable per-purpose seed, so init, mask, data order and growth draw from separate streams."""
    offsets = {"init": 1, "mask": 2, "data": 3, "grow": 4, "shuffle": 5, "reinit": 6, "dropout": 7, "augment": 8}
    return int(seed) * 1_000_003 + offsets[purpose]


BATCHNORM_OPTIONAL = ("mlp", "lenet300", "mnist1d-mlp")  # models where --batchnorm switches BatchNorm on
OPTIONAL_ARCH_FIELDS = ("depth", "hidden", "skip", "batchnorm")  # config fields only some models read


# --match-width fixes the sparsity; --sparsity must agree to this many decimals (4, as presets round it).
MATCH_WIDTH_TOLERANCE = 5e-4


def check_match_width(cfg: TrainConfig) -> None:
    """Refuse --match-width where it would be ignored: methods with no random mask, or with --parent."""
    if cfg.match_width is None:
        return
    if not cfg.match_width > 0:
        raise UserError(f"--match-width must be a positive width multiplier, got {cfg.match_width}.")
    if get_method(cfg.method).mask != "parent-or-random" or cfg.parent:
        raise UserError("--match-width applies to scratch, scratch+, rigl, rigl+ and set runs without --parent "
                        f"(it draws their mask); method '{cfg.method}'{' with --parent' if cfg.parent else ''} "
                        "would ignore it.")


def check_model_options(cfg: TrainConfig) -> None:
    """Refuse architecture flags the config's model would ignore: those set away from their default
    that :func:`model_options` does not pass to the model (one UserError sentence)."""
    defaults, used = TrainConfig(), model_options(cfg)
    for name in OPTIONAL_ARCH_FIELDS:
        if getattr(cfg, name) != getattr(defaults, name) and name not in used:
            if name == "batchnorm":
                raise UserError(f"--batchnorm applies to {', '.join(BATCHNORM_OPTIONAL)} only; model "
                                f"'{cfg.model}' has it fixed (vgg16 always has BatchNorm, the others none).")
            raise UserError(f"--{name} applies to the mlp model only; model '{cfg.model}' has a fixed shape.")


def model_options(cfg: TrainConfig) -> dict:
    """Architecture keyword arguments for :func:`build_model` from a config."""
    opts = {"width": cfg.width, "activation": cfg.activation}
    if cfg.model in BATCHNORM_OPTIONAL:
        opts["batchnorm"] = cfg.batchnorm
    if cfg.model == "mlp":
        opts.update(depth=cfg.depth, hidden=cfg.hidden, skip=cfg.skip)
    return opts


SIZED_MODELS = ("lenet5", "lenet300")  # models whose hidden sizes --small-dense-sizes can set


def build_for(cfg: TrainConfig, input_shape, num_classes: int, width: float | None = None) -> nn.Module:
    """Build the config's model (optionally at another width).

    A small-dense run with ``--small-dense-sizes`` gets exactly those hidden sizes (``width`` is
    then ignored), so analyses rebuild it from its config alone.
    """
    opts = model_options(cfg)
    if cfg.method == "small-dense" and cfg.small_dense_sizes:
        if cfg.model not in SIZED_MODELS:
            raise UserError(f"--small-dense-sizes applies to {', '.join(SIZED_MODELS)} only, not '{cfg.model}'.")
        opts["sizes"] = parse_sizes(cfg.small_dense_sizes)
    elif width is not None:
        opts["width"] = width
    return build_model(cfg.model, input_shape, num_classes, **opts)


def sparse_active_count(cfg: TrainConfig, input_shape, num_classes: int) -> int:
    """Parameters a sparse network of this config keeps: active maskable weights plus all others."""
    model = build_model(cfg.model, input_shape, num_classes, **model_options(cfg))
    masks = Masks.random(model, cfg.sparsity, cfg.distribution, cfg.first_layer_dense, seed=0)
    return count_parameters(model) - masks.numel() + masks.num_active()


def small_dense_width(cfg: TrainConfig, input_shape, num_classes: int) -> tuple[float, int, int]:
    """Width multiplier whose dense parameter count best matches the sparse network's active count.

    Returns ``(width, dense_count, target_count)``. The count grows with width, so bisection finds
    the crossing; the nearer of its two neighbours wins.
    """
    target = sparse_active_count(cfg, input_shape, num_classes)

    def count(w: float) -> int:
        return count_parameters(build_for(cfg, input_shape, num_classes, width=w))

    lo, hi = 1e-3, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda w: abs(count(w) - target))
    return best, count(best), target


def load_parent(cfg: TrainConfig) -> tuple[RunDir, dict]:
    """The parent run and its config; it must exist, be complete and share model and dataset."""
    if not cfg.parent:
        raise UserError(f"method '{cfg.method}' needs --parent RUN_DIR (a finished prune run).")
    parent = RunDir(cfg.parent)
    pconf = parent.read_config()
    if not parent.is_complete():
        raise UserError(f"parent run {parent.path} is not complete; finish it first.")
    for key in ("model", "dataset", "width", "activation", "batchnorm", "depth", "hidden", "skip"):
        if key in pconf and pconf.get(key) != getattr(cfg, key):
            raise UserError(
                f"parent run {parent.path} has {key}={pconf.get(key)!r} but this run has {getattr(cfg, key)!r}; architectures must match."
            )
    return parent, pconf


def shuffled(masks: Masks, seed: int) -> Masks:
    """Each layer's mask randomly permuted (same count per layer)."""
    g = torch.Generator().manual_seed(seed_for(seed, "shuffle"))
    out = {}
    for name, m in masks.items():
        flat = m.reshape(-1)
        out[name] = flat[torch.randperm(flat.numel(), generator=g)].reshape(m.shape)
    return Masks(out)


def prepare_start(cfg: TrainConfig, input_shape, num_classes: int) -> tuple[nn.Module, Masks, dict]:
    """Build the model and masks a run starts from, initialized per its method.

    Returns ``(model, masks, extra)`` where ``extra`` goes into config.json (parent id, counts).
    """
    spec = get_method(cfg.method)
    extra: dict = {}
    if cfg.method == "small-dense" and cfg.small_dense_sizes:
        model = build_for(cfg, input_shape, num_classes)
        extra.update(small_dense_params=count_parameters(model),
                     sparse_active_params=sparse_active_count(cfg, input_shape, num_classes))
    elif cfg.method == "small-dense":
        width, dense_count, target = small_dense_width(cfg, input_shape, num_classes)
        model = build_for(cfg, input_shape, num_classes, width=width)
        extra.update(small_dense_width=width, small_dense_params=dense_count,
                     sparse_active_params=target)
    else:
        model = build_for(cfg, input_shape, num_classes)
    init_scheme = spec.init if cfg.init == "auto" else cfg.init

    parent_ckpt = None
    if spec.mask == "parent" or (spec.mask == "parent-or-random" and cfg.parent):
        parent, pconf = load_parent(cfg)
        parent_ckpt = parent.load("end")
        masks = Masks(parent_ckpt["masks"])
        masks.check_compatible(model)
        extra.update(parent_run_id=parent.run_id, parent_method=pconf.get("method"))
        if cfg.shuffle_mask:
            masks = shuffled(masks, cfg.seed)
    elif spec.mask == "parent-or-random" and cfg.match_width:
        narrow = Masks.dense(build_for(cfg, input_shape, num_classes, width=cfg.match_width))
        counts = dict(zip(maskable_names(model), narrow.active_counts().values()))
        masks = Masks.from_counts(model, counts, seed=seed_for(cfg.seed, "mask"))
        realised = masks.sparsity()
        # the counts fix the sparsity; a --sparsity that disagrees would be recorded (and named) wrongly
        if abs(realised - cfg.sparsity) > MATCH_WIDTH_TOLERANCE:
            raise UserError(f"--match-width {cfg.match_width:g} gives {cfg.model} sparsity {realised:.4f} (the layer "
                            f"sizes of the width-{cfg.match_width:g} network as active counts), not --sparsity "
                            f"{cfg.sparsity:g}; pass --sparsity {realised:.4f}.")
        extra.update(matched_dense_params=count_parameters(build_for(cfg, input_shape, num_classes,
                                                                     width=cfg.match_width)),
                     realised_sparsity=realised)
    elif spec.mask == "parent-or-random":
        masks = Masks.random(model, cfg.sparsity, cfg.distribution, cfg.first_layer_dense,
                             seed=seed_for(cfg.seed, "mask"))
    else:
        masks = Masks.dense(model)

    if spec.weights == "parent-rewind":
        source = parent.load("start") if cfg.rewind == 0 else _rewind_checkpoint(parent, cfg.rewind)
        try:
            model.load_state_dict(source["model"])
        except RuntimeError:
            raise UserError(f"parent run {parent.path} has weights of a different architecture.") from None
        masks.apply(model)
        extra.update(rewind_step=cfg.rewind)
    else:
        # Runs that start sparse draw from their own stream: with the dense stream, scratch seed s
        # would start from exactly the weights of prune seed s, i.e. from the lottery ticket.
        stream = "init" if spec.mask in ("none", "dense-then-prune") else "reinit"
        # Tessera et al.: the active weights of a sparse-wide network come from the distribution
        # of its dense-narrow partner's weights, not the wide layer's (smaller) dense-init one.
        reference = build_for(cfg, input_shape, num_classes, width=cfg.match_width) \
            if cfg.match_width and init_scheme == "dense" and spec.mask == "parent-or-random" and not cfg.parent \
            else None
        initialize(model, masks if spec.mask != "none" else None, init_scheme, cfg.init_mode,
                   cfg.init_dist, seed=seed_for(cfg.seed, stream), gain=cfg.init_gain, reference=reference)
        if reference is not None:
            extra.update(init_reference_width=cfg.match_width)
    extra.update(init_scheme=init_scheme if spec.weights == "init" else "parent-rewind",
                 maskable_layers=maskable_names(model),
                 total_params=count_parameters(model), active_maskable=masks.num_active(),
                 maskable_params=masks.numel())
    return model, masks, extra


def _rewind_checkpoint(parent: RunDir, step: int) -> dict:
    path = parent.checkpoint_path(step)
    if not path.is_file():
        kept = [s for s, _ in parent.step_checkpoints()]
        raise UserError(
            f"parent run {parent.path} kept no checkpoint at step {step} (kept: {kept or 'none'}); "
            f"rerun it with --save-steps {step}."
        )
    return parent.load(step)


def parent_path(cfg: TrainConfig) -> Path | None:
    """The parent run directory as a resolved path (or None)."""
    return Path(cfg.parent).resolve() if cfg.parent else None
