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


STABILITY_REWINDS = (0, 50, 100, 250, 500)


def stability_settings(base: dict) -> dict:
    """A family preset's settings shortened for the stability experiment: 1,000 steps, fewer metric rows."""
    return {**base, "steps": 1000, "log_every": 250}


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


def scsdc_graph(seeds: int) -> list[RunSpec]:
    """Tessera et al.'s same-capacity sparse-vs-dense comparison, one factor at a time.

    Each pair is a dense-narrow MLP (hidden 64 x width 0.25) and a sparse-wide MLP (hidden 64) whose
    per-layer active counts equal the narrow one's layer sizes. Varied: activation (with momentum,
    no BatchNorm), optimizer (with ReLU) and BatchNorm on/off (with ReLU and momentum).
    """
    base = dict(model="mlp", dataset="digits", hidden=64, depth=3, batch_size=32, epochs=20,
                distribution="erk", weight_decay=0.0, log_every=15)
    narrow = 0.25
    settings: list[dict] = []
    for act in ("relu", "swish", "prelu", "elu", "sigmoid"):
        settings.append(dict(activation=act, optimizer="momentum", batchnorm=False))
    for opt in ("sgd", "adam", "rmsprop", "adagrad"):
        settings.append(dict(activation="relu", optimizer=opt, batchnorm=False))
    settings.append(dict(activation="relu", optimizer="momentum", batchnorm=True))
    wide = build_for(TrainConfig(**base), (64,), 10)
    narrow_model = build_for(TrainConfig(**base), (64,), 10, width=narrow)
    sparsity = 1 - Masks.dense(narrow_model).numel() / Masks.dense(wide).numel()
    specs = []
    for st in settings:
        tag = f"{st['activation']}-{st['optimizer']}-{'bn' if st['batchnorm'] else 'nobn'}"
        for s in range(seeds):
            dense = TrainConfig(**{**base, **st, "method": "dense", "width": narrow, "seed": s})
            sparse = TrainConfig(**{**base, **st, "method": "scratch", "sparsity": round(sparsity, 4),
                                    "match_width": narrow, "seed": s})
            specs.append(RunSpec(f"scsdc-{tag}-dense-narrow-seed{s}", dense))
            specs.append(RunSpec(f"scsdc-{tag}-sparse-wide-seed{s}", sparse))
    return specs


PRESETS = {
    "smoke": ("seconds; for tests: tiny MLP on digits, the paper layout", lambda n: family_graph(_SMOKE, n), 2),
    "paper-lenet5": ("LeNet-5 on the embedded MNIST at 95% sparsity (Evci et al.)",
                     lambda n: family_graph(_PAPER_LENET5, n), 5),
    "paper-mlp": ("LeNet-300-100 on MNIST at 98% sparsity", lambda n: family_graph(_PAPER_MLP, n), 5),
    "mnist1d": ("MLP on MNIST-1D at 90% sparsity", lambda n: family_graph(_MNIST1D, n), 3),
    "scsdc": ("Tessera et al.'s same-capacity sparse-wide vs dense-narrow MLP pairs on digits",
              scsdc_graph, 2),
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
    """The shared training settings of a family preset (empty for scsdc)."""
    return {"smoke": _SMOKE, "paper-lenet5": _PAPER_LENET5, "paper-mlp": _PAPER_MLP,
            "mnist1d": _MNIST1D, "stability": _STABILITY}.get(name, {})
