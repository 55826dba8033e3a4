"""Loading runs for notebooks and analysis CLIs: ``load_runs`` (a table) and ``Run`` objects.

Example::

    from analysis.runs import load_runs, select_runs
    table = load_runs("runs/")                 # one row per run
    lottery = select_runs("runs/", method="lottery")
    model = lottery[0].model("end")            # nn.Module with weights; masks in model.masks

Checkpoints of other code (a directory with ``manifest.csv``, see :mod:`analysis.manifest`) load the
same way, given the factory of their model::

    runs = select_runs("their_ckpts/", model_factory="mymodel:build", dataset="mnist")
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from functools import cached_property
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from torch import nn

from analysis.manifest import MANIFEST_NAME, Entry, Manifest, open_manifest
from sparse_training.config import TrainConfig
from sparse_training.data import Dataset, load_dataset
from sparse_training.errors import UserError
from sparse_training.masks import Masks
from sparse_training.methods import build_for
from sparse_training.rundir import RunDir

TABLE_COLUMNS = ["run_id", "method", "model", "dataset", "sparsity", "seed", "parent", "state",
                 "train_acc", "test_acc", "did_not_train", "path"]
UNTRAINED_MARGIN = 0.05  # a run whose final training accuracy is within this of chance "did not train"


class Run:
    """One run directory, read lazily: ``.config``, ``.metrics``, ``.checkpoint()``, ``.model()``."""

    def __init__(self, path: str | Path):
        self.dir = RunDir(path)
        self.path = self.dir.path
        self.config: dict = self.dir.read_config()
        self.status: dict = self.dir.read_status()

    # --- identity ------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return self.config.get("method", "?")

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def sparsity(self) -> float:
        return float(self.config.get("sparsity", 0.0)) if self.method not in ("dense", "small-dense") else 0.0

    @property
    def parent(self) -> str | None:
        return self.config.get("parent_run_id")

    @property
    def state(self) -> str:
        return self.status.get("state", "missing")

    @property
    def complete(self) -> bool:
        return self.dir.is_complete()

    @property
    def architecture(self) -> tuple:
        """What must agree for two runs' parameters to be comparable."""
        c = self.config
        sizes = (c.get("small_dense_sizes") or None) if c.get("method") == "small-dense" else None
        return (c.get("model"), c.get("dataset"), c.get("width"), c.get("small_dense_width"), sizes,
                c.get("activation"), c.get("batchnorm"), c.get("depth"), c.get("hidden"))

    # --- contents ------------------------------------------------------------------
    @cached_property
    def metrics(self) -> pd.DataFrame:
        """metrics.csv as a DataFrame (empty when absent)."""
        return self.dir.read_metrics()

    @property
    def final_test_acc(self) -> float:
        m = self.metrics
        if len(m) == 0 or "test_acc" not in m:
            return float("nan")
        return float(m["test_acc"].iloc[-1])

    @property
    def final_train_acc(self) -> float:
        """Training accuracy of the last logged training row (on the trainer's fixed metrics batch)."""
        m = self.metrics
        if len(m) == 0 or "train_acc" not in m:
            return float("nan")
        if "phase" in m:
            m = m[m["phase"].fillna("train") == "train"]
        return float(m["train_acc"].iloc[-1]) if len(m) else float("nan")

    @property
    def chance(self) -> float:
        """Accuracy of guessing: 1 / number of classes."""
        return 1.0 / int(self.config.get("num_classes", 10) or 10)

    @property
    def did_not_train(self) -> bool:
        """True when the run's final training accuracy is within 5 points of chance (e.g. stuck dead ReLUs)."""
        acc = self.final_train_acc
        return bool(acc == acc and acc < self.chance + UNTRAINED_MARGIN)

    def checkpoint(self, which: str | int = "end", phase: str = "") -> dict:
        """A checkpoint dict (``weights_only=True``): 'start', 'end' or a step (with phase 'pre'/'post')."""
        return self.dir.load(which, phase)

    def update_steps(self) -> list[int]:
        """Steps with pre/post mask-update checkpoints (RigL/SET)."""
        pre = {s for s, _ in self.dir.step_checkpoints("pre")}
        post = {s for s, _ in self.dir.step_checkpoints("post")}
        return sorted(pre & post)

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config)

    def build(self) -> nn.Module:
        """The run's architecture with fresh weights."""
        width = self.config.get("small_dense_width")
        shape = tuple(self.config.get("input_shape") or ()) or None
        return build_for(self.train_config(), shape, int(self.config.get("num_classes", 10)), width=width)

    def model(self, which: str | int = "end", phase: str = "", device: str | torch.device = "cpu") -> nn.Module:
        """The built model holding a checkpoint's weights, in eval mode; its masks in ``model.masks``."""
        ckpt = self.checkpoint(which, phase)
        model = self.build()
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise UserError(f"checkpoint {which} of {self.run_id} does not fit its configured model.") from None
        model.masks = Masks(ckpt["masks"])  # type: ignore[attr-defined]
        return model.to(device).eval()

    def dataset(self, data_dir: str | None = None) -> Dataset:
        """The run's dataset (same split as in training)."""
        return load_dataset(self.config["dataset"], data_dir=data_dir)

    def row(self) -> dict:
        return {"run_id": self.run_id, "method": self.method, "model": self.config.get("model"),
                "dataset": self.config.get("dataset"), "sparsity": self.sparsity, "seed": self.seed,
                "parent": self.parent, "state": self.state, "train_acc": self.final_train_acc,
                "test_acc": self.final_test_acc, "did_not_train": self.did_not_train, "path": str(self.path)}

    def __repr__(self) -> str:
        acc = self.final_test_acc
        return (f"Run({self.run_id!r}, method={self.method}, sparsity={self.sparsity:g}, seed={self.seed}, "
                f"state={self.state}, test_acc={acc:.4f})")


class ExternalDir:
    """The checkpoints of one external run, with the lookups of a RunDir (``checkpoint_path``, ``load``)."""

    def __init__(self, manifest: Manifest, entries: list[Entry]):
        self.manifest = manifest
        self.entries = {(e.which, e.phase): e for e in entries}
        self.path = manifest.root

    def _entry(self, which: str | int, phase: str = "") -> Entry | None:
        key = which if which in ("start", "end") else int(which)
        return self.entries.get((key, phase))

    def checkpoint_path(self, which: str | int, phase: str = "") -> Path:
        """The checkpoint file (a path that does not exist when the manifest has no such point)."""
        e = self._entry(which, phase)
        if e is None:
            return self.path / f".absent-{which}{'-' + phase if phase else ''}"
        return e.file

    def load(self, which: str | int, phase: str = "") -> dict:
        """The checkpoint as ``{"model", "masks", "step"}`` (``weights_only=True``)."""
        e = self._entry(which, phase)
        if e is None:
            raise UserError(f"the manifest of {self.path} has no checkpoint {which}{':' + phase if phase else ''} "
                            "for this run.")
        return self.manifest.checkpoint(e)

    def step_checkpoints(self, phase: str | None = "") -> list[tuple[int, Path]]:
        """Sorted ``(step, path)`` of the run's step checkpoints of ``phase`` (None: all)."""
        return sorted((w, e.file) for (w, ph), e in self.entries.items()
                      if isinstance(w, int) and (phase is None or ph == phase))


class ExternalRun(Run):
    """A run made of checkpoints listed in a manifest (other code's training); the same interface as Run."""

    def __init__(self, manifest: Manifest, entries: list[Entry]):
        first = entries[0]
        self.manifest = manifest
        self.dir = ExternalDir(manifest, entries)  # type: ignore[assignment]
        self.path = manifest.root / first.run_id
        self._run_id = first.run_id
        steps = [w for w, _ in self.dir.entries if isinstance(w, int)]
        self.config = {"method": first.method, "seed": first.seed, "parent_run_id": first.parent,
                       "model": manifest.model_factory, "dataset": manifest.dataset or manifest.data_factory,
                       "external": True}
        has_end = ("end", "") in self.dir.entries
        self.status = {"state": "complete" if has_end else "incomplete",
                       "reason": None if has_end else "no end checkpoint in the manifest",
                       "step": max(steps, default=0)}

    @property
    def run_id(self) -> str:
        return self._run_id

    @cached_property
    def sparsity(self) -> float:  # type: ignore[override]
        """Fraction of maskable weights off the mask at the end (or the last checkpoint)."""
        which, phase = ("end", "") if ("end", "") in self.dir.entries else max(
            self.dir.entries, key=lambda k: (k[0] != "start", k[0] if isinstance(k[0], int) else -1))
        return round(Masks(self.checkpoint(which, phase)["masks"]).sparsity(), 6)

    @property
    def complete(self) -> bool:
        return self.status["state"] == "complete"

    @property
    def architecture(self) -> tuple:
        return ("external", self.manifest.model_factory)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """External runs have no metrics.csv: an empty table."""
        return pd.DataFrame()

    def train_config(self) -> TrainConfig:
        raise UserError(f"{self.run_id} comes from a manifest of other code; it has no training config.")

    def build(self) -> nn.Module:
        """A fresh model from the manifest's model factory."""
        return self.manifest.build()

    def dataset(self, data_dir: str | None = None) -> Dataset:
        """The data of ``--dataset`` / ``--data-factory`` (``data_dir`` is taken when the manifest was opened)."""
        return self.manifest.data()


def external_runs(manifest: Manifest) -> list[ExternalRun]:
    """One ExternalRun per run id of an opened manifest, in manifest order."""
    by_run: dict[str, list[Entry]] = {}
    for e in manifest.entries:
        by_run.setdefault(e.run_id, []).append(e)
    return [ExternalRun(manifest, entries) for entries in by_run.values()]


def is_manifest_dir(root: str | Path) -> bool:
    """Whether ``root`` holds checkpoints of other code (a ``manifest.csv``)."""
    return (Path(root) / MANIFEST_NAME).is_file()


def open_runs(root: str | Path, model_factory: str | None = None, dataset: str | None = None,
              data_factory: str | None = None, data_dir: str | None = None) -> list[Run]:
    """Every run under ``root``, unfiltered: the one loading path of all analyses.

    A runs directory of this toolkit gives a Run per run directory (unreadable ones are skipped with a
    warning); a directory with ``manifest.csv`` gives an ExternalRun per run of the manifest, whose
    model comes from ``model_factory`` and data from ``dataset`` or ``data_factory`` (all checked here).
    """
    root = Path(root)
    if is_manifest_dir(root):
        return list(external_runs(open_manifest(root, model_factory, dataset, data_factory, data_dir)))
    if model_factory or data_factory:
        raise UserError(f"--model-factory and --data-factory are for checkpoints of other code; {root} has no "
                        f"{MANIFEST_NAME} (write one with python -m analysis.manifest).")
    out: list[Run] = []
    for d in _run_dirs(root):
        try:
            out.append(Run(d))
        except UserError as exc:
            warnings.warn(f"skipping {d.name}: {exc}", stacklevel=3)
    return out


def _run_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"runs directory {root} does not exist.")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")
                  and (p / "config.json").is_file())
    if not dirs:
        raise UserError(f"{root} holds no runs (no sub-directory with a config.json); train some first.")
    return dirs


def select_runs(root: str | Path, method: str | Iterable[str] | None = None, seed: int | Iterable[int] | None = None,
                run: str | None = None, complete_only: bool = True, warn: bool = True,
                model_factory: str | None = None, dataset: str | None = None, data_factory: str | None = None,
                data_dir: str | None = None) -> list[Run]:
    """Runs under ``root`` matching the selectors; incomplete or failed ones are skipped with a warning.

    ``method`` and ``seed`` take a value or a collection; ``run`` is a regular expression on the run id.
    ``root`` may also be a directory of other code's checkpoints with a ``manifest.csv``; then
    ``model_factory`` (``package.module:function``) builds their model and ``dataset`` or
    ``data_factory`` gives their data (see :func:`open_runs`).
    Raises a UserError when the directory is empty or unrelated, or when nothing matches.
    """
    source = RunSource(root, model_factory, dataset, data_factory, data_dir)
    return source.select(method, seed, run, complete_only=complete_only, warn=warn)


class RunSource:
    """A runs directory (or a directory with ``manifest.csv``), read once: the selected runs and the pool.

    The directory is opened on first use and kept, so an analysis that needs both the runs it was asked
    for (:meth:`select`) and the pool their parents and pruning solutions are looked up in
    (:meth:`pool`) reads it, and checks a manifest's checkpoints against their model, once.
    """

    def __init__(self, root: str | Path, model_factory: str | None = None, dataset: str | None = None,
                 data_factory: str | None = None, data_dir: str | None = None):
        self.root = Path(root)
        self.options = {"model_factory": model_factory, "dataset": dataset, "data_factory": data_factory,
                        "data_dir": data_dir}
        self._every: list[Run] | None = None
        self._unsaid: list[warnings.WarningMessage] = []  # warnings of the opening, not shown yet

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunSource:
        """The runs directory of the common CLI arguments, with its manifest options."""
        return cls(args.runs, **source_args(args))

    def every(self, warn: bool = True) -> list[Run]:
        """Every run, unfiltered (:func:`open_runs`, on the first call only).

        ``warn``: show the warnings of the opening (runs skipped as unreadable), once, even when the
        directory was opened by an earlier call without ``warn``.
        """
        if self._every is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._every = open_runs(self.root, **self.options)
            self._unsaid = list(caught)
        if warn:
            for w in self._unsaid:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            self._unsaid = []
        return self._every

    def select(self, method: str | Iterable[str] | None = None, seed: int | Iterable[int] | None = None,
               run: str | None = None, complete_only: bool = True, warn: bool = True) -> list[Run]:
        """The runs matching the selectors (see :func:`select_runs`); a UserError when none does."""
        methods = {method} if isinstance(method, str) else (set(method) if method is not None else None)
        seeds = {int(seed)} if isinstance(seed, int) else (set(int(s) for s in seed) if seed is not None else None)
        try:
            pattern = re.compile(run) if run else None
        except re.error as exc:
            raise UserError(f"--run '{run}' is not a valid regular expression ({exc}).") from None
        out = []
        for r in self.every(warn):
            if methods is not None and r.method not in methods:
                continue
            if seeds is not None and r.seed not in seeds:
                continue
            if pattern is not None and not pattern.search(r.run_id):
                continue
            if complete_only and not r.complete:
                if warn:
                    print(f"warning: skipping {r.run_id} ({r.state}: {r.status.get('reason') or 'not complete'})",
                          file=sys.stderr)
                continue
            out.append(r)
        if not out:
            raise UserError(f"no {'complete ' if complete_only else ''}run under {self.root} matches the selection.")
        return out

    def pool(self, warn: bool = False) -> list[Run]:
        """Every complete run, ignoring the selectors: the pool in which parents and pruning solutions are looked up."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.select(warn=warn)


def load_runs(root: str | Path, complete_only: bool = False, **selectors) -> pd.DataFrame:
    """One row per run: run_id, method, model, dataset, sparsity, seed, parent, state, train_acc, test_acc,
    did_not_train (final training accuracy within 5 points of chance), path."""
    runs = select_runs(root, complete_only=complete_only, warn=False, **selectors)
    return pd.DataFrame([r.row() for r in runs], columns=TABLE_COLUMNS)


def checkpoint_step(run: Run, which: str | int) -> int:
    """The training step of a run's checkpoint ``which``: 0 for 'start', the run's last step for 'end'."""
    if which == "start":
        return 0
    if which == "end":
        return int(run.config.get("total_steps") or run.status.get("step") or 0)
    return int(which)


def check_same_architecture(runs: list[Run]) -> None:
    """Raise a UserError when runs whose parameters will be compared have different architectures."""
    archs = {r.architecture for r in runs}
    if len(archs) > 1:
        names = ", ".join(sorted({f"{a[0]}(width={a[3] or a[2]})" for a in archs}))
        raise UserError(f"the selected runs have different architectures ({names}); select runs of one architecture with --method/--run.")


def pruning_solution(runs: list[Run], run: Run) -> Run | None:
    """The prune run a run derives from: its parent, or itself if it is a prune run."""
    if run.method == "prune":
        return run
    by_id = {r.run_id: r for r in runs}
    return by_id.get(run.parent) if run.parent else None


def family_solution(pool: list[Run], run: Run) -> Run | None:
    """The seed-0 pruning solution of ``run``'s family.

    For a derived run, its parent prune run (``pruning_solution``); for a prune run, the prune run
    of the same architecture and sparsity that other runs derive from (else the lowest seed).
    """
    if run.method != "prune":
        return pruning_solution(list(pool), run)
    prunes = [r for r in pool if r.method == "prune" and r.architecture == run.architecture
              and r.sparsity == run.sparsity]
    parents = {r.parent for r in pool if r.parent}
    return min(prunes or [run], key=lambda r: (r.run_id not in parents, r.seed, r.run_id))


# --- shared CLI pieces -------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The selectors and options every analysis CLI takes."""
    parser.add_argument("runs", help="runs directory")
    parser.add_argument("--method", action="append", default=None,
                        help="only runs of this method (repeatable)")
    parser.add_argument("--seed", type=int, action="append", default=None, help="only runs with this seed (repeatable)")
    parser.add_argument("--run", default=None, help="only runs whose id matches this regular expression")
    add_output_args(parser)
    ext = parser.add_argument_group("checkpoints of other code (a directory with manifest.csv)")
    ext.add_argument("--model-factory", default=None, metavar="MODULE:FUNCTION",
                     help="callable returning the checkpoints' nn.Module (package.module:function or file.py:function)")
    ext.add_argument("--dataset", default=None, help="their dataset, by name (mnist, fashion-mnist, cifar10, mnist1d, digits)")
    ext.add_argument("--data-factory", default=None, metavar="MODULE:FUNCTION",
                     help="callable returning their data: a Dataset or (x_train, y_train, x_test, y_test)")


def add_output_args(parser: argparse.ArgumentParser, out: str | None = None,
                    out_help: str = "output directory (default: <runs>/_analysis)") -> None:
    """``--out``, ``--device``, ``--data-dir`` and ``--quiet``: the options of every analysis CLI."""
    parser.add_argument("--out", default=out, help=out_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--data-dir", default=None, help="directory with full-size datasets")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def output_dir(args: argparse.Namespace) -> Path:
    """The directory an analysis writes to (created): ``--out``, else ``<runs>/_analysis``."""
    out = Path(args.out) if args.out or not hasattr(args, "runs") else Path(args.runs) / "_analysis"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to output directory {out} ({exc.strerror or exc}).") from None
    return out


def source_args(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`select_runs` that say where runs come from (manifest factories)."""
    return {"model_factory": getattr(args, "model_factory", None), "dataset": getattr(args, "dataset", None),
            "data_factory": getattr(args, "data_factory", None), "data_dir": getattr(args, "data_dir", None)}


def selectors(args: argparse.Namespace, **defaults) -> dict:
    """The selectors (method, seed, run) of the common CLI arguments; ``defaults`` fill those not given."""
    return {"method": args.method or defaults.get("method"), "seed": args.seed or defaults.get("seed"),
            "run": args.run}


def runs_from_args(args: argparse.Namespace, **defaults) -> list[Run]:
    """Select runs from the common CLI arguments (``defaults`` fill selectors not given).

    It opens the runs directory itself; a command that also needs :func:`pool_from_args` opens it once
    with :class:`analysis.cli.Command` instead.
    """
    return RunSource.from_args(args).select(**selectors(args, **defaults))


def pool_from_args(args: argparse.Namespace, warn: bool = False) -> list[Run]:
    """Every complete run of the CLI's runs directory (or manifest), ignoring the selectors: the pool
    in which parents and pruning solutions are looked up."""
    return RunSource.from_args(args).pool(warn)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without one is a UserError."""
    from sparse_training.trainer import select_device

    return select_device(name)


def union_masks(checkpoints: Iterable[dict]) -> dict[str, torch.Tensor]:
    """The union (logical or) of the checkpoints' masks: the support of paths, planes and curves between them.

    A parameter masked in one checkpoint and absent (dense) in another is dense in the union.
    """
    ckpts = list(checkpoints)
    names = set.intersection(*(set(c.get("masks") or {}) for c in ckpts)) if ckpts else set()
    out = {}
    for name in sorted(names):
        m = ckpts[0]["masks"][name].bool()
        for c in ckpts[1:]:
            other = c["masks"][name].bool()
            if other.shape != m.shape:
                raise UserError(f"the checkpoints' masks of {name} have different shapes; they are not one architecture.")
            m = m | other
        out[name] = m
    return out
