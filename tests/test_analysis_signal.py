"""Tests of analysis.signal: the three inits coincide when dense, the sparse init keeps the output's scale, bad inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import signal
from analysis.signal import parse_sparsities
from sparse_training.errors import UserError


@pytest.fixture(scope="module")
def lenet5_gaussian(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("signal")
    assert signal.main(["--model", "lenet5", "--sparsities", "0.95", "--inputs", "gaussian", "--batch", "256",
                        "--out", str(out), "--quiet"]) == 0
    assert (out / "signal.png").stat().st_size > 0
    return pd.read_csv(out / "signal.csv")


def test_table_is_tidy_with_the_dense_reference(lenet5_gaussian):
    t = lenet5_gaussian
    assert list(t.columns) == signal.COLUMNS
    assert sorted(set(t["sparsity"])) == [0.0, 0.95]
    assert len(t) == 2 * 3 * 5 and set(t["input"]) == {"gaussian"} and set(t["model"]) == {"lenet5"}
    assert (t["output_std"] > 0).all()


def test_at_sparsity_zero_the_three_inits_coincide(lenet5_gaussian):
    dense = lenet5_gaussian[lenet5_gaussian["sparsity"] == 0.0].pivot(index="repeat", columns="init",
                                                                      values="output_std")
    assert (dense["dense"] == dense["liu"]).all() and (dense["dense"] == dense["sparse"]).all()
    assert dense["dense"].nunique() == 5  # each repeat is a new network


def test_sparse_init_keeps_the_scale_while_dense_init_decays(lenet5_gaussian):
    mean = lenet5_gaussian.groupby(["init", "sparsity"])["output_std"].mean()
    assert mean["dense", 0.95] / mean["dense", 0.0] < 0.5
    assert 0.5 <= mean["sparse", 0.95] / mean["sparse", 0.0] <= 2.0
    assert 0.5 <= mean["liu", 0.95] / mean["liu", 0.0] <= 2.0  # ERK: per-layer scaling suffices on average


def test_data_input_and_dataset_choice(tmp_path, capsys):
    assert signal.main(["--model", "mlp", "--dataset", "digits", "--sparsities", "0.9", "--repeats", "2",
                        "--inits", "dense,sparse", "--out", str(tmp_path), "--quiet"]) == 0
    t = pd.read_csv(tmp_path / "signal.csv")
    assert set(t["input"]) == {"gaussian", "data"} and set(t["init"]) == {"dense", "sparse"}
    assert len(t) == 2 * 2 * 2 * 2
    data = t[t["input"] == "data"].set_index(["init", "sparsity", "repeat"])["output_std"]
    assert np.isfinite(data).all() and data["dense", 0.0, 0] == data["sparse", 0.0, 0]
    assert "wrote" in capsys.readouterr().out


def test_default_dataset_and_parsing():
    assert signal.default_dataset("lenet5") == "mnist" and signal.default_dataset("lenet300") == "mnist"
    assert signal.default_dataset("mnist1d-mlp") == "mnist1d" and signal.default_dataset("mlp") == "mnist"
    assert parse_sparsities("0.9, 0.5,0.9") == [0.0, 0.5, 0.9]
    for bad in ("1.0", "-0.1", "abc", ",", "0.5,1"):
        with pytest.raises(UserError):
            parse_sparsities(bad)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        signal.main(["--help"])
    assert exc.value.code == 0 and "--distribution" in capsys.readouterr().out


BAD_ARGS = {
    "model": ["--model", "alexnet"],
    "sparsity-one": ["--sparsities", "0.5,1.0"],
    "sparsity-negative": ["--sparsities", "-0.2"],
    "sparsity-text": ["--sparsities", "half"],
    "init": ["--inits", "dense,xavier"],
    "inputs": ["--inputs", "noise"],
    "repeats": ["--repeats", "0"],
    "batch": ["--batch", "1"],
    "model-data-misfit": ["--model", "lenet5", "--dataset", "digits"],
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_input_exits_2_and_leaves_results(case, tmp_path, capsys):
    (tmp_path / "signal.csv").write_text("old\n")
    with pytest.raises(SystemExit) as exc:
        signal.main(["--out", str(tmp_path), "--quiet", *BAD_ARGS[case]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and err.endswith(".")
    assert [p.name for p in tmp_path.iterdir()] == ["signal.csv"] and (tmp_path / "signal.csv").read_text() == "old\n"
