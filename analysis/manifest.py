"""Checkpoints written by other code: ``manifest.csv``, model and data factories; CLI ``python -m analysis.manifest DIR``.

A directory of external checkpoints holds ``manifest.csv``, one row per checkpoint file:

====== ======== =====================================================================================
column required meaning
====== ======== =====================================================================================
file   yes      checkpoint path, relative to the directory: a plain state_dict, or a dict whose
                ``model`` or ``state_dict`` entry is one (loaded with ``weights_only=True``)
method yes      the method that made it (``prune``, ``lottery``, ``scratch``, ``rigl``, ... or your own)
seed   yes      an integer
point  yes      ``start``, ``end``, a step number, or ``STEP:pre`` / ``STEP:post``
mask   no       a file holding ``{param_name: bool tensor}`` (or a dict with a ``masks`` entry);
                without it the mask is "the weights that are not zero"
parent no       the run this one derives from (a lottery ticket's prune run), by run id
run    no       the run id (default ``METHOD-seedSEED``); rows with one run id form one run
====== ======== =====================================================================================

The model comes from ``--model-factory package.module:function`` (or ``path/to/file.py:function``), a
callable with no arguments that returns the ``nn.Module``; data from ``--dataset NAME`` or
``--data-factory module:function`` (returning a :class:`sparse_training.data.Dataset` or the tuple
``(x_train, y_train, x_test, y_test)``). :func:`open_manifest` checks everything before any analysis
runs: unknown columns, missing files, parents that are not in the manifest, and every checkpoint's
parameter names and shapes against the factory's model.

``python -m analysis.manifest DIR --method prune --seed-from-name 'seed(\\d+)'`` writes the manifest of
a folder of ``.pt`` files.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from sparse_training.data import Dataset, load_dataset
from sparse_training.errors import UserError, cli_entry
from sparse_training.io import load_weights_only, atomic_write_csv, load_state_dict
from sparse_training.masks import maskable_names
from sparse_training.rundir import check_run_id

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS = ("file", "method", "seed", "point")
OPTIONAL_COLUMNS = ("mask", "parent", "run")
POINT_RE = re.compile(r"^(start|end|\d+|\d+:pre|\d+:post)$")


# --- factories ---------------------------------------------------------------------------------
def resolve_callable(spec: str, flag: str) -> Callable:
    """The callable named by ``package.module:function`` or ``path/to/file.py:function``.

    A module is imported as usual (the current directory is on the path under ``python -m``); a
    ``.py`` path is loaded from that file. Anything that does not resolve is a UserError naming ``flag``.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{flag} '{spec}' is not of the form package.module:function.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UserError(f"{flag} '{spec}': the file {path} does not exist.")
            loader_spec = importlib.util.spec_from_file_location(f"_factory_{path.stem}", path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as exc:  # a user's module may fail in any way while importing
        raise UserError(f"{flag} '{spec}': cannot import {module_name} ({type(exc).__name__}: {exc}).") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{flag} '{spec}': {module_name} has no callable named {attr}.")
    return fn


def call_model_factory(factory: Callable, spec: str) -> nn.Module:
    """A fresh model from the factory; anything but an ``nn.Module`` is a UserError."""
    try:
        model = factory()
    except Exception as exc:
        raise UserError(f"--model-factory '{spec}' failed when called ({type(exc).__name__}: {exc}).") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model-factory '{spec}' returned a {type(model).__name__}, not a torch nn.Module.")
    return model


def call_data_factory(spec: str) -> Dataset:
    """The dataset a ``--data-factory`` returns (a Dataset, or ``(x_train, y_train, x_test, y_test)``)."""
    fn = resolve_callable(spec, "--data-factory")
    try:
        data = fn()
    except Exception as exc:
        raise UserError(f"--data-factory '{spec}' failed when called ({type(exc).__name__}: {exc}).") from None
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 4 and all(isinstance(t, torch.Tensor) for t in data):
        x_train, y_train, x_test, y_test = data
        classes = int(max(y_train.max(), y_test.max()).item()) + 1
        return Dataset(spec, x_train, y_train.long(), x_test, y_test.long(), classes, f"data factory {spec}")
    raise UserError(f"--data-factory '{spec}' must return a sparse_training.data.Dataset or the tensors "
                    "(x_train, y_train, x_test, y_test).")


# --- the manifest --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One checkpoint of the manifest (paths absolute); ``which`` is 'start', 'end' or a step."""

    run_id: str
    method: str
    seed: int
    which: str | int
    phase: str
    file: Path
    mask: Path | None
    parent: str | None


def _parse_point(text: str, where: str) -> tuple[str | int, str]:
    if not POINT_RE.match(text):
        raise UserError(f"{where}: point '{text}' is not start, end, a step number, or STEP:pre / STEP:post.")
    if text in ("start", "end"):
        return text, ""
    step, _, phase = text.partition(":")
    return int(step), phase


def read_manifest(root: str | Path) -> list[Entry]:
    """The rows of ``root/manifest.csv``, checked (columns, values, files, parents); a UserError otherwise."""
    root = Path(root)
    path = root / MANIFEST_NAME
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{root} holds no {MANIFEST_NAME}.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable CSV file ({type(exc).__name__}).") from None
    return manifest_entries(frame, root, path)


def manifest_entries(frame: pd.DataFrame, root: Path, path: Path) -> list[Entry]:
    """Check the rows of a manifest table (files relative to ``root``; ``path`` names it in messages)."""
    frame = frame.copy()
    frame.columns = [c.strip() for c in frame.columns]
    unknown = [c for c in frame.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise UserError(f"{path} has unknown column(s) {', '.join(unknown)}; the columns are "
                        f"{', '.join(REQUIRED_COLUMNS)} and optionally {', '.join(OPTIONAL_COLUMNS)}.")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}.")
    if len(frame) == 0:
        raise UserError(f"{path} lists no checkpoint.")
    entries: list[Entry] = []
    seen: dict[tuple[str, str], int] = {}
    runs: dict[str, tuple[str, int, str | None]] = {}
    for i, row in enumerate(frame.to_dict("records"), start=2):  # line 1 is the header
        where = f"{path} line {i}"
        row = {k: str(v).strip() for k, v in row.items()}
        method = row["method"]
        if not method:
            raise UserError(f"{where}: the method is empty.")
        try:
            seed = int(row["seed"])
        except ValueError:
            raise UserError(f"{where}: seed '{row['seed']}' is not an integer.") from None
        which, phase = _parse_point(row["point"], where)
        run_id = row.get("run") or f"{method}-seed{seed}"
        try:
            check_run_id(run_id)
        except UserError:
            raise UserError(f"{where}: run id '{run_id}' may use only lowercase letters, digits and . _ + - "
                            "(set the run column, or use such a method name).") from None
        parent = row.get("parent") or None
        if runs.setdefault(run_id, (method, seed, parent)) != (method, seed, parent):
            raise UserError(f"{where}: run {run_id} appears with another method, seed or parent on an earlier line.")
        key = (run_id, row["point"])
        if key in seen:
            raise UserError(f"{where}: run {run_id} has point {row['point']} already on line {seen[key]}.")
        seen[key] = i
        file = root / row["file"]
        if not row["file"] or not file.is_file():
            raise UserError(f"{where}: checkpoint file '{row['file']}' does not exist in {root}.")
        mask = root / row["mask"] if row.get("mask") else None
        if mask is not None and not mask.is_file():
            raise UserError(f"{where}: mask file '{row['mask']}' does not exist in {root}.")
        entries.append(Entry(run_id, method, seed, which, phase, file, mask, parent))
    for run_id, (_, _, parent) in runs.items():
        if parent is not None and parent not in runs:
            raise UserError(f"{path}: run {run_id} names parent '{parent}', which is no run of the manifest.")
    return entries


def read_mask(path: Path, reference: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Boolean masks from a mask file, checked against the model's parameter shapes."""
    obj = load_weights_only(path)
    if isinstance(obj, dict) and isinstance(obj.get("masks"), dict):
        obj = obj["masks"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"mask file {path} does not hold {{param_name: bool tensor}}.")
    for name, m in obj.items():
        if name not in reference or tuple(m.shape) != tuple(reference[name]):
            raise UserError(f"mask file {path}: entry {name} {tuple(m.shape)} matches no parameter of the model.")
    return {name: m.bool() for name, m in obj.items()}


@dataclass
class Manifest:
    """An opened manifest: its checked entries, the model factory, and where data comes from."""

    root: Path
    entries: list[Entry]
    model_factory: str
    factory: Callable = field(repr=False)
    dataset: str | None = None
    data_factory: str | None = None
    data_dir: str | None = None
    shapes: dict[str, torch.Size] = field(default_factory=dict, repr=False)  # the factory model's state
    maskable: list[str] = field(default_factory=list, repr=False)
    _data: Dataset | None = field(default=None, repr=False)

    def build(self) -> nn.Module:
        """A fresh model from the factory."""
        return call_model_factory(self.factory, self.model_factory)

    def check_state(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """Refuse a state_dict whose names or shapes differ from the factory model's (one sentence)."""
        missing = [k for k in self.shapes if k not in state]
        extra = [k for k in state if k not in self.shapes]
        if missing or extra:
            what = (f"lacks {', '.join(missing[:3])}" if missing else "") + \
                   (" and " if missing and extra else "") + (f"has extra {', '.join(extra[:3])}" if extra else "")
            raise UserError(f"checkpoint {path} does not fit the model of --model-factory {self.model_factory} "
                            f"(it {what}).")
        for k, shape in self.shapes.items():
            if tuple(state[k].shape) != tuple(shape):
                raise UserError(f"checkpoint {path} does not fit the model of --model-factory {self.model_factory} "
                                f"({k} has shape {tuple(state[k].shape)}, the model's {tuple(shape)}).")

    def checkpoint(self, entry: Entry) -> dict:
        """The entry as a toolkit checkpoint: ``{"model", "masks"[, "step"]}`` (masks: mask file or nonzeros)."""
        state = load_state_dict(entry.file)
        self.check_state(state, entry.file)
        if entry.mask is not None:
            masks = read_mask(entry.mask, self.shapes)
        else:  # no mask given: the weights that are not zero are the active ones
            masks = {name: state[name] != 0 for name in self.maskable}
        out = {"model": state, "masks": masks}
        if entry.which != "end":  # the end's step is not known from a manifest
            out["step"] = 0 if entry.which == "start" else int(entry.which)
        return out

    def data(self) -> Dataset:
        """The dataset of ``--dataset`` or ``--data-factory`` (loaded once)."""
        if self._data is None:
            if self.data_factory:
                self._data = call_data_factory(self.data_factory)
            elif self.dataset:
                self._data = load_dataset(self.dataset, data_dir=self.data_dir)
            else:
                raise UserError("this analysis needs data: give --dataset NAME or --data-factory module:function "
                                "with the checkpoints' manifest.")
        return self._data


def open_manifest(root: str | Path, model_factory: str | None, dataset: str | None = None,
                  data_factory: str | None = None, data_dir: str | None = None) -> Manifest:
    """Read and check a manifest directory against its model factory; a UserError on any problem.

    Every checkpoint's parameter names and shapes are compared with the factory's model (tensors are
    memory-mapped, not read), so a bad manifest fails before any analysis writes anything.
    """
    root = Path(root)
    if not model_factory:
        raise UserError(f"{root} holds checkpoints of other code ({MANIFEST_NAME}); give --model-factory "
                        "package.module:function that builds their model.")
    if dataset and data_factory:
        raise UserError("give --dataset or --data-factory, not both.")
    return check_manifest(read_manifest(root), root, model_factory, dataset, data_factory, data_dir)


def check_manifest(entries: list[Entry], root: Path, model_factory: str, dataset: str | None = None,
                   data_factory: str | None = None, data_dir: str | None = None) -> Manifest:
    """Check manifest entries against the factory's model (names, shapes, mask files): the opened Manifest."""
    factory = resolve_callable(model_factory, "--model-factory")
    model = call_model_factory(factory, model_factory)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    man = Manifest(root, entries, model_factory, factory, dataset, data_factory, data_dir, shapes,
                   [n for n in maskable_names(model) if n in shapes])
    for entry in entries:
        man.check_state(load_state_dict(entry.file, mmap=True), entry.file)
        if entry.mask is not None:
            read_mask(entry.mask, shapes)
    return man


# --- writing a manifest ----------------------------------------------------------------------------
def manifest_frame(files: list[Path], root: Path, method: str, seed_re: str, point: str = "end",
                   point_re: str | None = None, parent: str | None = None) -> pd.DataFrame:
    """Manifest rows for ``files``: the seed (and optionally the point) taken from each file name."""
    try:
        seed_pat = re.compile(seed_re)
        point_pat = re.compile(point_re) if point_re else None
    except re.error as exc:
        raise UserError(f"a name pattern is not a valid regular expression ({exc}).") from None
    rows = []
    for f in files:
        m = seed_pat.search(f.name)
        if m is None:
            raise UserError(f"--seed-from-name '{seed_re}' does not match the file name {f.name}.")
        text = m.group("seed") if "seed" in seed_pat.groupindex else (m.group(1) if m.groups() else m.group(0))
        if not text or not text.isdigit():
            raise UserError(f"--seed-from-name '{seed_re}' finds '{text}' in {f.name}, not an integer seed; "
                            "capture the digits in a group, e.g. 'seed(\\d+)'.")
        p = point
        if point_pat is not None:
            pm = point_pat.search(f.name)
            if pm is None:
                raise UserError(f"--point-from-name '{point_re}' does not match the file name {f.name}.")
            p = pm.group(1) if pm.groups() else pm.group(0)
            p = str(int(p)) if p.isdigit() else p
        _parse_point(p, f.name)
        rows.append({"file": f.relative_to(root).as_posix(), "method": method, "seed": int(text), "point": p,
                     "parent": parent or ""})
    frame = pd.DataFrame(rows, columns=["file", "method", "seed", "point", "parent"])
    if not parent:
        frame = frame.drop(columns="parent")
    dup = frame.duplicated(["seed", "point"], keep=False)
    if dup.any():
        names = ", ".join(frame.loc[dup, "file"].head(4))
        raise UserError(f"several files get the same seed and point ({names}); use --point-from-name.")
    return frame


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.manifest``."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.manifest",
        description="Write manifest.csv for a folder of .pt checkpoints written by other code, so the analysis "
                    "CLIs can read them (with --model-factory).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dir", help="folder holding the checkpoints")
    parser.add_argument("--method", required=True, help="method of these checkpoints (prune, lottery, scratch, ...)")
    parser.add_argument("--seed-from-name", required=True, metavar="REGEX",
                        help="regular expression on the file name whose first group (or group 'seed') is the seed")
    parser.add_argument("--point", default="end", help="point of every file: start, end or a step")
    parser.add_argument("--point-from-name", default=None, metavar="REGEX",
                        help="regular expression whose first group is the point (start, end or step digits)")
    parser.add_argument("--parent", default=None, help="run id of the parent of these runs")
    parser.add_argument("--glob", default="*.pt", help="which files are checkpoints")
    parser.add_argument("--append", action="store_true", help="add to an existing manifest.csv")
    parser.add_argument("--model-factory", default=None,
                        help="package.module:function; when given, every checkpoint is checked against its model")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the manifest CLI; returns 0 (bad input exits with code 2, writing nothing)."""
    args = build_parser().parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory.")
    files = sorted(p for p in root.glob(args.glob) if p.is_file())
    if not files:
        raise UserError(f"{root} holds no file matching {args.glob}.")
    frame = manifest_frame(files, root, args.method, args.seed_from_name, args.point, args.point_from_name, args.parent)
    target = root / MANIFEST_NAME
    if target.exists():
        if not args.append:
            raise UserError(f"{target} exists; pass --append to add these rows, or remove it.")
        old = pd.read_csv(target, dtype=str, keep_default_na=False)
        frame = pd.concat([old, frame.astype(str)], ignore_index=True).fillna("")
    entries = manifest_entries(frame.astype(str), root, target)  # the manifest is only written when valid
    if args.model_factory:
        check_manifest(entries, root, args.model_factory)
    atomic_write_csv(target, frame)
    print(f"{len(frame)} checkpoint(s) of {frame['seed'].nunique()} seed(s)")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
