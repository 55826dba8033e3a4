"""Presets: small graphs of runs (a run may name a parent that must finish first)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import TrainConfig
from .errors import UserError
from .masks import Masks
from .methods import build_for


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

FAMILY_METHODS = ("lottery", "scratch", "scratch+", "rigl", "rigl+")


def family_graph(base: dict, seeds: int) -> list[RunSpec]:
    """Evci et al.'s layout: a prune run per seed (the different pruning solutions); lottery, scratch,
    scratch+, rigl and rigl+ runs per seed derived from the seed-0 pruning solution; one dense and
    one same-capacity small-dense run."""
    specs: list[RunSpec] = []

    def add(method: str, seed: int, parent: str | None = None) -> None:
        cfg = TrainConfig(**{**base, "method": method, "seed": seed})
        specs.append(RunSpec(cfg.default_run_id(with_hash=False), cfg, parent, (parent,) if parent else ()))

    for s in range(seeds):
        add("prune", s)
    root = specs[0].run_id
    for method in FAMILY_METHODS:
        for s in range(seeds):
            add(method, s, root)
    add("dense", 0)
    add("small-dense", 0)
    return specs


# Tessera et al.'s regularization settings: each name -> the training flags it sets (none: no
# weight decay, no augmentation, no skips, no BatchNorm; "bn+x" is BatchNorm together with x).
REGULARIZATIONS: dict[str, dict] = {
    "none": {}, "l2": {"weight_decay": 5e-4}, "augment": {"augment": "shift+flip"}, "skip": {"skip": True},
    "bn": {"batchnorm": True}, "bn+l2": {"batchnorm": True, "weight_decay": 5e-4},
    "bn+augment": {"batchnorm": True, "augment": "shift+flip"}, "bn+skip": {"batchnorm": True, "skip": True},
}


@dataclass(frozen=True)
class PairDesign:
    """Which same-capacity cells a preset trains: Tessera et al.'s optimizer x regularization table,
    the activation x optimizer table and a depth x capacity sweep, each around one base cell.

    ``fractions`` are dense widths as a fraction of the sparse-wide width (``hidden``).
    """

    prefix: str
    base: dict
    input_shape: tuple[int, ...]
    optimizers: tuple[str, ...]
    regularizations: tuple[str, ...]
    activations: tuple[str, ...]
    depths: tuple[int, ...]
    fractions: tuple[float, ...]
    base_cell: dict  # optimizer, regularization, activation, depth, fraction of the base cell

    def cells(self) -> list[dict]:
        """The distinct cells of the three tables, in order (a cell two tables share appears once)."""
        b = self.base_cell
        out = [dict(b, optimizer=o, regularization=r) for o in self.optimizers for r in self.regularizations]
        out += [dict(b, optimizer=o, activation=a) for a in self.activations for o in self.optimizers]
        out += [dict(b, depth=d, fraction=f) for d in self.depths for f in self.fractions]
        seen: set[tuple] = set()
        unique = []
        for c in out:
            key = tuple(sorted(c.items()))
            if key not in seen:
                seen.add(key)
                unique.append(c)
        return unique


def cell_tag(cell: dict) -> str:
    """``momentum-bn+l2-relu-d2-w0.25``: a cell's part of its runs' ids."""
    return f"{cell['optimizer']}-{cell['regularization']}-{cell['activation']}-d{cell['depth']}-w{cell['fraction']:g}"


def same_capacity_graph(design: PairDesign, seeds: int) -> list[RunSpec]:
    """Tessera et al.'s same-capacity sparse-vs-dense pairs (SC-SDC), one pair per cell and seed.

    The dense-narrow MLP has hidden width ``fraction * hidden``; the sparse-wide one has width
    ``hidden`` and a fixed random mask whose per-layer active counts equal the narrow network's
    layer sizes (``match_width``), its active weights drawn from the narrow network's init
    distribution. Both see the same data order (same seed).
    """
    specs: list[RunSpec] = []
    for cell in design.cells():
        settings = {**design.base, **REGULARIZATIONS[cell["regularization"]], "optimizer": cell["optimizer"],
                    "activation": cell["activation"], "depth": cell["depth"]}
        probe = TrainConfig(**settings)
        wide = build_for(probe, design.input_shape, 10)
        narrow = build_for(probe, design.input_shape, 10, width=cell["fraction"])
        sparsity = round(1 - Masks.dense(narrow).numel() / Masks.dense(wide).numel(), 4)
        tag = cell_tag(cell)
        for s in range(seeds):
            dense = TrainConfig(**{**settings, "method": "dense", "width": cell["fraction"], "seed": s})
            sparse = TrainConfig(**{**settings, "method": "scratch", "sparsity": sparsity,
                                    "match_width": cell["fraction"], "seed": s})
            specs.append(RunSpec(f"{design.prefix}-{tag}-dense-narrow-seed{s}", dense))
            specs.append(RunSpec(f"{design.prefix}-{tag}-sparse-wide-seed{s}", sparse))
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
    base=dict(model="mlp", dataset="fashion-mnist", hidden=256, batch_size=128, epochs=2, distribution="erk",
              weight_decay=0.0, log_points=10),
    input_shape=(1, 28, 28), optimizers=("sgd", "momentum", "adagrad", "adam", "rmsprop"),
    regularizations=tuple(REGULARIZATIONS),
    activations=("relu", "prelu", "elu", "swish", "srelu", "sigmoid"), depths=(1, 2, 4), fractions=(0.1, 0.25, 0.5),
    base_cell=dict(optimizer="momentum", regularization="none", activation="relu", depth=2, fraction=0.25),
)


PRESETS = {
    "smoke": ("seconds; for tests: tiny MLP on digits, the paper layout", lambda n: family_graph(_SMOKE, n), 2),
    "paper-lenet5": ("LeNet-5 on the embedded MNIST at 95% sparsity (Evci et al.)",
                     lambda n: family_graph(_PAPER_LENET5, n), 5),
    "paper-mlp": ("LeNet-300-100 on MNIST at 98% sparsity", lambda n: family_graph(_PAPER_MLP, n), 5),
    "mnist1d": ("MLP on MNIST-1D at 90% sparsity", lambda n: family_graph(_MNIST1D, n), 3),
    "scsdc": ("quick version of tessera-fmnist: same-capacity sparse-wide vs dense-narrow MLP pairs on digits",
              lambda n: same_capacity_graph(SCSDC, n), 5),
    "tessera-fmnist": ("Tessera et al.'s same-capacity sparse-vs-dense study on full Fashion-MNIST "
                       "(needs its IDX files: make data)", lambda n: same_capacity_graph(TESSERA_FMNIST, n), 5),
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
    # re-derive ids so overridden runs never collide with the preset's own
    renamed = {s.run_id: dataclasses.replace(s.config, **overrides).default_run_id(with_hash=False)
               if s.run_id == s.config.default_run_id(with_hash=False) else f"{s.run_id}-{_tag(overrides)}"
               for s in specs}
    return [RunSpec(renamed[s.run_id], dataclasses.replace(s.config, **overrides),
                    renamed.get(s.parent) if s.parent else None, tuple(renamed[d] for d in s.depends_on))
            for s in specs]


def _tag(overrides: dict) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:6]


def preset_settings(name: str) -> dict:
    """The shared training settings of a family preset (empty for the same-capacity ones)."""
    return {"smoke": _SMOKE, "paper-lenet5": _PAPER_LENET5, "paper-mlp": _PAPER_MLP,
            "mnist1d": _MNIST1D}.get(name, {})
