"""Presets: small graphs of runs (a run may name a parent that must finish first)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import TrainConfig
from .errors import UserError
from .masks import Masks
from .methods import build_for, model_options


@dataclass(frozen=True)
class RunSpec:
    """One run of a preset: its id, its config, and the run ids it depends on."""

    run_id: str
    config: TrainConfig
    parent: str | None = None
    depends_on: tuple[str, ...] = field(default=())


# Shared settings of a preset's runs: every method of a preset is trained the same way.
_PAPER_LENET5 = dict(model="lenet5", dataset="mnist", sparsity=0.95, distribution="erk",
                     batch_size=32, epochs=15, optimizer="momentum", lr=0.02, weight_decay=5e-4)
_PAPER_MLP = dict(model="lenet300", dataset="mnist", sparsity=0.98, distribution="erk",
                  batch_size=32, epochs=15, optimizer="momentum", lr=0.02, weight_decay=5e-4)
_MNIST1D = dict(model="mnist1d-mlp", dataset="mnist1d", sparsity=0.9, distribution="erk",
                batch_size=32, epochs=30, optimizer="momentum", lr=0.02, weight_decay=5e-4)
_SMOKE = dict(model="mlp", dataset="digits", hidden=32, depth=2, sparsity=0.9, distribution="erk",
              batch_size=32, steps=150, optimizer="momentum", lr=0.05, weight_decay=5e-4,
              update_every=20, prune_every=10, log_every=15, checkpoint_every=50)

# Evci et al.'s own protocol (google-research/rigl, rigl/rigl_tf2: configs/*.gin for LeNet-5,
# mlp_configs/*.gin for LeNet-300-100; train.py, utils.py, mask_updaters.py, init_utils.py), on full
# MNIST. The source of each setting:
_EVCI_LENET5 = dict(
    model="lenet5", dataset="mnist", full_data=True,  # networks.lenet5 (6, 16, 120, 84), ReLU, no BatchNorm
    sparsity=0.95, distribution="uniform",            # prune.gin final_sparsity; tfmot prunes every
    first_layer_dense=False,                          #   Conv2D/Dense to the same sparsity, first/last too
    batch_size=128, steps=11719,                      # *.gin: total_steps 11719 = 6e4/128*25, batch 128
    optimizer="momentum", momentum=0.9, lr=0.05,      # optimizer.name/learning_rate/momentum
    schedule="cosine",                                # utils.get_optimizer: CosineDecay(lr, total_steps) to 0
    weight_decay=1e-3, weight_decay_on="weights",     # network.weight_decay 5e-4 is Keras l2(5e-4) on kernels:
                                                      #   loss += 5e-4*sum(w^2), i.e. gradient 1e-3*w
    init="glorot", init_dist="uniform",               # Keras Dense/Conv2D default kernel init (glorot_uniform)
    init_gain="one", init_mode="fanin",               # scratch+/rigl+: unit_scaled_init 'fanin_normal', scale 1
    prune_begin_step=3000, prune_end_step=7000,       # prune.gin begin_step/end_step/frequency;
    prune_every=100, prune_scope="layer",             #   tfmot PolynomialDecay (power 3) per layer
    update_every=100, drop_fraction=0.3,              # rigl.gin update_freq / init_drop_fraction
    drop_schedule="lr", update_end=1.0,               # schedule_alg 'lr': 0.3*lr(t)/lr(0); last_update_step -1
    grow_batch="fixed",                               # growth gradient on val2 = the 2nd block of 1,000 images
    log_every=200, metrics_batch=1000,                # training.log_freq 200; val_batch_size 1000
    metrics_examples="first", metrics_mode="train",   # val_x = first 1,000 training images, training=True,
                                                      #   is_regularized=False (cross-entropy only)
    small_dense_sizes="3,3,27,20",                    # small_dense.gin lenet5.hidden_sizes
    sparse_kernels=True,                              # ours, not the paper's: on a CPU the convolutions of a
                                                      #   layer at <= 10% density compute only its active taps
                                                      #   (0.59-0.64x the dense convolutions' time); results
                                                      #   equal the dense path's up to float rounding
)
_EVCI_MLP = dict(_EVCI_LENET5, model="lenet300",      # networks.mlp (300, 100)
                 sparse_kernels=False,                # the sparse kernels are LeNet-5's convolutions only
                 sparsity=0.98, lr=0.2,               # mlp_configs/prune.gin, learning_rate 0.2
                 weight_decay=2e-4,                   # network.weight_decay 1e-4 (Keras l2) -> gradient 2e-4*w
                 update_every=500,                    # mlp_configs/rigl.gin update_freq 500
                 small_dense_sizes="8,8")             # mlp_configs/small_dense.gin mlp.hidden_sizes
# scratch+ / rigl+ start from the sparsity-aware init (rigl_tf2 weight_init_method 'unit_scaled');
# every other run from glorot-uniform
_EVCI_PER_METHOD = {m: dict(init="sparse", init_dist="normal") for m in ("scratch+", "rigl+")}

FAMILY_METHODS = ("lottery", "scratch", "scratch+", "rigl", "rigl+")


def family_graph(base: dict, seeds: int, per_method: dict[str, dict] | None = None,
                 dense_per_seed: bool = False) -> list[RunSpec]:
    """Evci et al.'s layout: a prune run per seed (the different pruning solutions); lottery, scratch,
    scratch+, rigl and rigl+ runs per seed derived from the seed-0 pruning solution; one dense and
    one same-capacity small-dense run (``dense_per_seed``: one of each per seed, so claims over dense
    runs have as many as the sparse ones). ``per_method`` adds settings for single methods."""
    specs: list[RunSpec] = []
    per_method = per_method or {}

    def add(method: str, seed: int, parent: str | None = None) -> None:
        cfg = TrainConfig(**{**base, **per_method.get(method, {}), "method": method, "seed": seed})
        specs.append(RunSpec(cfg.default_run_id(with_hash=False), cfg, parent, (parent,) if parent else ()))

    for s in range(seeds):
        add("prune", s)
    root = specs[0].run_id
    for method in FAMILY_METHODS:
        for s in range(seeds):
            add(method, s, root)
    for s in range(seeds if dense_per_seed else 1):
        add("dense", s)
        add("small-dense", s)
    return specs


STABILITY_REWINDS = (0, 50, 100, 250, 500)


def stability_settings(base: dict) -> dict:
    """A family preset's settings shortened for the stability experiment: 1,000 steps, fewer metric rows.

    A pruning window given in absolute steps (evci-*: 3,000-7,000) would lie past the shortened run, whose
    prune parent would then never prune; the window falls back to its fractions of training instead."""
    return {**base, "steps": 1000, "log_every": 250, "prune_begin_step": None, "prune_end_step": None}


# Stability to SGD noise (Frankle et al. 2020) at laptop cost: LeNet-5 as paper-lenet5 but 1,000 steps
# (8 epochs), one parent per family (seed 0).
_STABILITY = stability_settings(_PAPER_LENET5)


def stability_graph(base: dict, copies: int, rewinds: tuple[int, ...] = STABILITY_REWINDS) -> list[RunSpec]:
    """Frankle et al. (2020)'s instability analysis as a run graph.

    A prune run and a dense run (seed 0) keep their checkpoints at the ``rewinds`` steps; for every
    rewind step k, ``copies`` lottery tickets (the prune run's end mask, its weights at step k) and
    ``copies`` dense networks (the dense run's weights at step k; a ``lottery`` run whose parent is
    dense keeps the dense, all-True mask) are trained on with different data orders (seeds 1, 2, ...;
    nothing else of a lottery run depends on its seed). ``analysis.stability`` measures the barrier
    between the copies' ends against k.
    """
    if copies < 2:
        raise UserError("the stability preset needs at least 2 copies per rewind step (--seeds 2).")
    save = ",".join(str(k) for k in rewinds if k > 0)
    parents = {"lottery": ("stability-prune-seed0", "prune"), "dense": ("stability-dense-seed0", "dense")}
    specs = [RunSpec(run_id, TrainConfig(**{**base, "method": method, "seed": 0, "save_steps": save}))
             for run_id, method in parents.values()]
    for family, (parent, _) in parents.items():
        for k in rewinds:
            for s in range(1, copies + 1):
                cfg = TrainConfig(**{**base, "method": "lottery", "seed": s, "rewind": k})
                specs.append(RunSpec(f"stability-{family}-k{k}-seed{s}", cfg, parent, (parent,)))
    return specs


# Tessera et al.'s regularization settings: each name -> the training flags it sets (none: no
# weight decay, no augmentation, no skips, no BatchNorm; "bn+x" is BatchNorm together with x).
REGULARIZATIONS: dict[str, dict] = {
    "none": {}, "l2": {"weight_decay": 5e-4}, "augment": {"augment": "shift+flip"}, "skip": {"skip": True},
    "bn": {"batchnorm": True}, "bn+l2": {"batchnorm": True, "weight_decay": 5e-4},
    "bn+augment": {"batchnorm": True, "augment": "shift+flip"}, "bn+skip": {"batchnorm": True, "skip": True},
}


@dataclass(frozen=True)
class Design:
    """What every same-capacity design names: its run-id prefix, the settings all its runs share (``base``),
    the input shape, and the optimizers, regularizations (keys of ``REGULARIZATIONS``) and activations it
    varies. Its :meth:`cells` say which pairs it trains (:meth:`graph`, :func:`pair_specs`)."""

    prefix: str
    base: dict
    input_shape: tuple[int, ...]
    optimizers: tuple[str, ...]
    regularizations: tuple[str, ...]
    activations: tuple[str, ...]

    def cells(self) -> list[dict]:
        raise NotImplementedError

    def graph(self, seeds: int) -> list[RunSpec]:
        """A dense-narrow / sparse-wide pair per cell and seed."""
        return pair_specs(self.prefix, self.base, self.input_shape, self.cells(), seeds)


@dataclass(frozen=True)
class PairDesign(Design):
    """Which same-capacity cells a preset trains: Tessera et al.'s optimizer x regularization table,
    the activation x optimizer table and a depth x capacity sweep, each around one base cell.

    ``fractions`` are dense widths as a fraction of the sparse-wide width (``hidden``).
    """

    depths: tuple[int, ...]
    fractions: tuple[float, ...]
    base_cell: dict  # optimizer, regularization, activation, depth, fraction of the base cell

    def cells(self) -> list[dict]:
        """The distinct cells of the three tables, in order (a cell two tables share appears once)."""
        b = self.base_cell
        out = [dict(b, optimizer=o, regularization=r) for o in self.optimizers for r in self.regularizations]
        out += [dict(b, optimizer=o, activation=a) for a in self.activations for o in self.optimizers]
        out += [dict(b, depth=d, fraction=f) for d in self.depths for f in self.fractions]
        return unique_cells(out)


def unique_cells(cells: list[dict]) -> list[dict]:
    """``cells`` in order, each cell once (tables of a design may share cells)."""
    seen: set[tuple] = set()
    unique = []
    for c in cells:
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def cell_tag(cell: dict) -> str:
    """``momentum-bn+l2-relu-d2-w0.25``: a cell's part of its runs' ids (``-lr0.1`` / ``-e32`` added when
    the cell sets its own learning rate / number of epochs)."""
    tag = f"{cell['optimizer']}-{cell['regularization']}-{cell['activation']}-d{cell['depth']}-w{cell['fraction']:g}"
    tag += f"-lr{cell['lr']:g}" if cell.get("lr") is not None else ""
    return tag + (f"-e{cell['epochs']}" if cell.get("epochs") is not None else "")


def _pair_sparsity(probe: TrainConfig, input_shape: tuple[int, ...], fraction: float) -> float:
    """The sparsity of a sparse-wide network whose active weights equal a width-``fraction`` dense network's:
    counted on the meta device (no memory, no init: the 3,076-wide grid builds in seconds), once per
    architecture (the settings :func:`model_options` builds it from)."""
    arch = (probe.model, tuple(sorted(model_options(probe).items())), input_shape, fraction)
    if arch not in _SPARSITY:
        import torch

        with torch.device("meta"):
            wide = build_for(probe, input_shape, 10)
            narrow = build_for(probe, input_shape, 10, width=fraction)
        _SPARSITY[arch] = round(1 - Masks.dense(narrow).numel() / Masks.dense(wide).numel(), 4)
    return _SPARSITY[arch]


_SPARSITY: dict[tuple, float] = {}


def pair_specs(prefix: str, base: dict, input_shape: tuple[int, ...], cells: list[dict], seeds: int) -> list[RunSpec]:
    """Tessera et al.'s same-capacity sparse-vs-dense pairs (SC-SDC), one pair per cell and seed.

    The dense-narrow MLP has hidden width ``fraction * hidden``; the sparse-wide one has width
    ``hidden`` and a fixed random mask whose per-layer active counts equal the narrow network's
    layer sizes (``match_width``), its active weights drawn from the narrow network's init
    distribution. Both see the same data order (same seed). A cell may also set ``lr`` and ``epochs``
    (None: the base's).
    """
    specs: list[RunSpec] = []
    for cell in cells:
        settings = {**base, **REGULARIZATIONS[cell["regularization"]], "optimizer": cell["optimizer"],
                    "activation": cell["activation"], "depth": cell["depth"]}
        settings.update({k: cell[k] for k in ("lr", "epochs") if cell.get(k) is not None})
        sparsity = _pair_sparsity(TrainConfig(**settings), tuple(input_shape), cell["fraction"])
        tag = cell_tag(cell)
        for s in range(seeds):
            dense = TrainConfig(**{**settings, "method": "dense", "width": cell["fraction"], "seed": s})
            sparse = TrainConfig(**{**settings, "method": "scratch", "sparsity": sparsity,
                                    "match_width": cell["fraction"], "seed": s})
            specs.append(RunSpec(f"{prefix}-{tag}-dense-narrow-seed{s}", dense))
            specs.append(RunSpec(f"{prefix}-{tag}-sparse-wide-seed{s}", sparse))
    return specs


# The quick version on digits (vectors: no augmentation), a few seconds per run.
SCSDC = PairDesign(
    prefix="scsdc",
    base=dict(model="mlp", dataset="digits", hidden=64, batch_size=32, epochs=20, distribution="erk",
              weight_decay=0.0, log_points=10),
    input_shape=(64,), optimizers=("sgd", "momentum", "adam"), regularizations=("none", "l2", "bn", "bn+l2"),
    activations=("relu", "swish", "prelu", "sigmoid"), depths=(1, 3), fractions=(0.25, 0.5),
    base_cell=dict(optimizer="momentum", regularization="none", activation="relu", depth=3, fraction=0.25),
)

# Full Fashion-MNIST, sized for 2 CPU cores in under an hour (README: "Reproducing Tessera et al.").
TESSERA_FMNIST = PairDesign(
    prefix="tessera",
    base=dict(model="mlp", dataset="fashion-mnist", full_data=True, hidden=256, batch_size=128, epochs=2,
              distribution="erk", weight_decay=0.0, log_points=10),
    input_shape=(1, 28, 28), optimizers=("sgd", "momentum", "adagrad", "adam", "rmsprop"),
    regularizations=tuple(REGULARIZATIONS),
    activations=("relu", "prelu", "elu", "swish", "srelu", "sigmoid"), depths=(1, 2, 4), fractions=(0.1, 0.25, 0.5),
    base_cell=dict(optimizer="momentum", regularization="none", activation="relu", depth=2, fraction=0.25),
)


@dataclass(frozen=True)
class LengthDesign(Design):
    """SC-SDC pairs at a ladder of training lengths: the optimizer x regularization cells at every length,
    and at the longest one the extra activations (for ``activation_optimizers``, without regularization)
    and the other learning rates (``other_lrs``: optimizer -> learning rate, every regularization)."""

    lengths: tuple[int, ...]
    activation_optimizers: tuple[str, ...]
    other_lrs: dict
    base_cell: dict  # activation, depth, fraction

    def cells(self) -> list[dict]:
        """Every cell, each with its ``epochs`` (and ``lr`` where it is not the optimizer's default)."""
        b, longest = self.base_cell, max(self.lengths)
        out = [dict(b, optimizer=o, regularization=r, epochs=e)
               for e in self.lengths for o in self.optimizers for r in self.regularizations]
        out += [dict(b, optimizer=o, regularization="none", activation=a, epochs=longest)
                for a in self.activations for o in self.activation_optimizers]
        out += [dict(b, optimizer=o, regularization=r, lr=lr, epochs=longest)
                for o, lr in self.other_lrs.items() for r in self.regularizations]
        return out


# SC-SDC verdicts against training length on full Fashion-MNIST, sized for under 90 minutes of 2 idle cores
# (docs/guide/reproducing.md: "Tessera et al. at longer training"). Width 128, not tessera-fmnist's 256: the
# 32-epoch cells at 8 seeds would not fit otherwise (a run's cost is about proportional to its wide layers).
TESSERA_LENGTH = LengthDesign(
    prefix="tlen",
    base=dict(TESSERA_FMNIST.base, hidden=128),
    input_shape=(1, 28, 28), optimizers=("sgd", "momentum", "adam", "rmsprop"), regularizations=("none", "bn"),
    lengths=(2, 8, 32), activations=("swish", "prelu"), activation_optimizers=("momentum", "adam"),
    other_lrs={"adam": 0.1, "rmsprop": 0.1},  # the paper's other rate, for the EWMA optimizers only
    base_cell=dict(activation="relu", depth=2, fraction=0.25),
)


@dataclass(frozen=True)
class GridDesign(Design):
    """The full factorial of Tessera et al.'s grid: at every learning rate, depth and dense width (as a
    fraction of the sparse width), the optimizer x regularization table (ReLU) and the activation x
    optimizer table (no regularization)."""

    depths: tuple[int, ...]
    fractions: tuple[float, ...]
    lrs: tuple[float, ...]

    def cells(self) -> list[dict]:
        """Every cell once, each with its ``lr``."""
        out = []
        for lr in self.lrs:
            for d in self.depths:
                for f in self.fractions:
                    at = dict(depth=d, fraction=f, lr=lr)
                    out += [dict(at, optimizer=o, regularization=r, activation="relu")
                            for o in self.optimizers for r in self.regularizations]
                    out += [dict(at, optimizer=o, regularization="none", activation=a)
                            for a in self.activations for o in self.optimizers]
        return unique_cells(out)


# Tessera et al.'s own grid and protocol, for a GPU cluster (through the suite's SLURM launcher): sparse
# width 3,076 against dense widths 308-2,768 (0.1-0.9 of it), 1/2/4 hidden layers, 500 epochs, learning
# rates 0.001 and 0.1, their optimizer, regularization and activation tables. `--dry-run` prints its
# size and a compute estimate from one step per architecture timed on the present device.
TESSERA_PAPER = GridDesign(
    prefix="tpaper",
    base=dict(TESSERA_FMNIST.base, hidden=3076, epochs=500),
    input_shape=(1, 28, 28), optimizers=TESSERA_FMNIST.optimizers, regularizations=tuple(REGULARIZATIONS),
    activations=TESSERA_FMNIST.activations, depths=(1, 2, 4),
    fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), lrs=(0.001, 0.1),
)

# Its quick version on digits, for tests and a first look: seconds per run.
SCSDC_LENGTH = LengthDesign(
    prefix="scsdc-len", base=SCSDC.base, input_shape=(64,), optimizers=("momentum", "adam"),
    regularizations=("none", "bn"), lengths=(2, 6), activations=("swish",), activation_optimizers=("momentum",),
    other_lrs={"adam": 0.1}, base_cell=dict(activation="relu", depth=3, fraction=0.25),
)

PRESETS = {
    "smoke": ("seconds; for tests: tiny MLP on digits, the paper layout", lambda n: family_graph(_SMOKE, n), 2),
    "paper-lenet5": ("LeNet-5 on the embedded MNIST at 95% sparsity (Evci et al.)",
                     lambda n: family_graph(_PAPER_LENET5, n), 5),
    "paper-mlp": ("LeNet-300-100 on MNIST at 98% sparsity", lambda n: family_graph(_PAPER_MLP, n), 5),
    "evci-lenet5": ("LeNet-5 on full MNIST at 95%, every setting as in Evci et al.'s code (needs `make data`)",
                    lambda n: family_graph(_EVCI_LENET5, n, _EVCI_PER_METHOD, dense_per_seed=True), 10),
    "evci-mlp": ("LeNet-300-100 on full MNIST at 98%, every setting as in Evci et al.'s code (needs `make data`)",
                 lambda n: family_graph(_EVCI_MLP, n, _EVCI_PER_METHOD, dense_per_seed=True), 10),
    "mnist1d": ("MLP on MNIST-1D at 90% sparsity", lambda n: family_graph(_MNIST1D, n), 5),  # 5: a paired rank test needs n >= 5 to reach p < 0.05
    "scsdc": ("quick version of tessera-fmnist: same-capacity sparse-wide vs dense-narrow MLP pairs on digits",
              SCSDC.graph, 5),
    "tessera-fmnist": ("Tessera et al.'s same-capacity sparse-vs-dense study on full Fashion-MNIST "
                       "(needs its IDX files: make data)", TESSERA_FMNIST.graph, 5),
    "scsdc-length": ("quick version of tessera-length on digits: momentum/Adam x {none, bn} pairs at 2 and 6 epochs",
                     SCSDC_LENGTH.graph, 5),
    "tessera-length": ("tessera-fmnist's SGD/momentum/Adam/RMSProp x {none, bn} pairs at 2, 8 and 32 epochs, "
                       "Swish/PReLU for momentum/Adam and Adam/RMSProp at lr 0.1 at 32, width 128 (needs make data)",
                       TESSERA_LENGTH.graph, 8),
    "tessera-paper": ("Tessera et al.'s full grid and protocol (sparse width 3,076, dense 308-2,768, 1/2/4 layers, "
                      "500 epochs, lr 0.001 and 0.1): for a GPU cluster; --dry-run estimates its compute",
                      TESSERA_PAPER.graph, 5),
    "stability": ("stability to SGD noise (Frankle et al. 2020): LeNet-5 lottery tickets and dense networks "
                  "rewound to steps 0-500 of one parent, 2 data orders each (--seeds = copies)",
                  lambda n: stability_graph(_STABILITY, n), 2),
}


def parse_overrides(items: list[str] | None) -> dict:
    """``["dataset=fashion-mnist", "epochs=30"]`` -> typed TrainConfig overrides; bad ones are UserErrors."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise UserError(f"--set takes KEY=VALUE with KEY a training flag (e.g. dataset=fashion-mnist), not '{item}'.")
        if key in ("method", "seed", "parent"):
            raise UserError(f"--set cannot change '{key}': the preset defines it.")
        kind = str(fields[key].type)
        try:
            if "bool" in kind:
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif "int" in kind:
                out[key] = int(value)
            elif "float" in kind:
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise UserError(f"--set {key} needs a number, not '{value}'.") from None
    return out


def preset_runs(name: str, seeds: int | None = None, overrides: dict | None = None) -> list[RunSpec]:
    """The run graph of a preset (``seeds`` overrides its default seed count; ``overrides`` change the
    training settings of every run, e.g. ``{"dataset": "fashion-mnist"}``)."""
    import dataclasses

    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}.")
    _, build, default = PRESETS[name]
    n = default if seeds is None else int(seeds)
    if n < 1:
        raise UserError("--seeds must be at least 1.")
    specs = build(n)
    if not overrides:
        return specs
    renamed = {s.run_id: renamed_id(s, overrides) for s in specs}
    if len(set(renamed.values())) != len(renamed):
        raise UserError("--set gives two runs of the preset the same id; change fewer settings at once.")
    return [RunSpec(renamed[s.run_id], dataclasses.replace(s.config, **overrides),
                    renamed.get(s.parent) if s.parent else None, tuple(renamed[d] for d in s.depends_on))
            for s in specs]


ID_FIELDS = ("model", "dataset", "sparsity", "method", "seed")  # the settings a default run id spells out


def renamed_id(spec: RunSpec, overrides: dict) -> str:
    """The id of a preset run under ``--set`` overrides; it never equals an id of other settings.

    A default-named run gets the id of its new settings; when an override changes a setting the id does
    not spell out (epochs, lr, ...), a short hash of those overrides is appended, so the run cannot land
    in the directory of the preset's own run (or of other overrides). Other runs always get the hash.
    """
    import dataclasses

    cfg = dataclasses.replace(spec.config, **overrides)
    if cfg.identity() == spec.config.identity():
        return spec.run_id  # the overrides restate the preset's settings: the same run
    spelled = ID_FIELDS if cfg.is_sparse() else tuple(f for f in ID_FIELDS if f != "sparsity")  # small-dense
    hidden = {k: v for k, v in overrides.items() if k not in spelled and getattr(spec.config, k) != v}
    if spec.run_id != spec.config.default_run_id(with_hash=False):
        return f"{spec.run_id}-{_tag(overrides)}"
    base = cfg.default_run_id(with_hash=False)
    return f"{base}-{_tag(hidden)}" if hidden else base


def _tag(overrides: dict) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:6]


def preset_settings(name: str) -> dict:
    """The shared training settings of a family preset (empty for the same-capacity ones)."""
    return {"smoke": _SMOKE, "paper-lenet5": _PAPER_LENET5, "paper-mlp": _PAPER_MLP,
            "mnist1d": _MNIST1D, "evci-lenet5": _EVCI_LENET5, "evci-mlp": _EVCI_MLP,
            "stability": _STABILITY}.get(name, {})
