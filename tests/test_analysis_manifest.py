"""Checkpoints of other code: a model defined outside our registry, trained by a plain PyTorch loop, then analysed.

The analyses' outputs are compared with direct computations on the saved state_dicts.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from analysis import distances, ensemble, hessian, interpolate, manifest, mds
from analysis.runs import ExternalRun, select_runs
from sparse_training.data import load_dataset
from sparse_training.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = textwrap.dedent('''
    """A user's own model file: nothing here comes from the toolkit's model registry."""
    import torch
    from torch import nn


    class TwoLayer(nn.Module):
        def __init__(self, hidden=20):
            super().__init__()
            self.hidden = nn.Linear(64, hidden)
            self.out = nn.Linear(hidden, 10)

        def forward(self, x):
            return self.out(torch.tanh(self.hidden(x)))


    def build():
        return TwoLayer()


    def build_wide():
        return TwoLayer(hidden=32)


    def not_a_model():
        return 42


    def data():
        from sparse_training.data import load_dataset
        d = load_dataset("digits")
        return d.x_train, d.y_train, d.x_test, d.y_test
''')


def _train(model, masks, x, y, seed: int, steps: int = 60) -> None:
    """A plain PyTorch loop (SGD, minibatches); masked weights are kept at zero."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        _apply(model, masks)


def _apply(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the weights off the masks (the user's own masking)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])


def _magnitude_masks(model, sparsity: float) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.dim() == 2:
            k = int(round(sparsity * p.numel()))
            thresh = p.detach().abs().flatten().kthvalue(k).values
            out[name] = p.detach().abs() > thresh
    return out


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A folder of checkpoints from the user's training code: prune (seed 0), lottery and scratch (seeds 1, 2)."""
    root = tmp_path_factory.mktemp("byo")
    (root / "usermodel.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root))
    try:
        import usermodel  # noqa: F401  (the test-local module)
    finally:
        sys.path.remove(str(root))
    mod = sys.modules.pop("usermodel")
    d = load_dataset("digits")
    ck = root / "ckpts"
    ck.mkdir()
    torch.manual_seed(0)
    net = mod.build()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(net.state_dict(), ck / "prune_seed0_start.pt")
    _train(net, {}, d.x_train, d.y_train, seed=0)
    masks = _magnitude_masks(net, 0.8)
    _apply(net, masks)
    _train(net, masks, d.x_train, d.y_train, seed=1, steps=30)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, ck / "prune_seed0_end.pt")
    torch.save(masks, ck / "prune_mask.pt")
    for seed in (1, 2):
        # lottery tickets: the prune run's init under its mask, trained by the user's loop
        ticket = mod.build()
        ticket.load_state_dict(init)
        _apply(ticket, masks)
        torch.save({"model": ticket.state_dict()}, ck / f"lottery_seed{seed}_start.pt")
        _train(ticket, masks, d.x_train, d.y_train, seed=10 + seed)
        torch.save(ticket.state_dict(), ck / f"lottery_seed{seed}_end.pt")
        # scratch: a new init under the same mask
        torch.manual_seed(100 + seed)
        scratch = mod.build()
        _apply(scratch, masks)
        torch.save(scratch.state_dict(), ck / f"scratch_seed{seed}_start.pt")
        _train(scratch, masks, d.x_train, d.y_train, seed=20 + seed)
        torch.save(scratch.state_dict(), ck / f"scratch_seed{seed}_end.pt")
    # the manifest: written by the helper CLI, one method at a time
    for method, parent in (("prune", None), ("lottery", "prune-seed0"), ("scratch", "prune-seed0")):
        argv = [str(ck), "--method", method, "--seed-from-name", r"seed(\d+)", "--point-from-name",
                r"_(start|end)\.pt", "--glob", f"{method}_seed*.pt"]
        if parent:
            argv += ["--parent", parent]
        if method != "prune":
            argv.append("--append")
        assert manifest.main(argv) == 0
    return root


def _factory_env(root: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(root))
    sys.modules.pop("usermodel", None)


def _vector(path: Path) -> torch.Tensor:
    obj = torch.load(path, weights_only=True)
    state = obj.get("state_dict") or obj.get("model") or obj
    return torch.cat([v.double().flatten() for v in state.values()])


def _state(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, weights_only=True)
    return obj.get("state_dict") or obj.get("model") or obj


def test_manifest_cli_writes_one_row_per_file(user_dir):
    frame = pd.read_csv(user_dir / "ckpts" / "manifest.csv")
    assert len(frame) == 10
    assert set(frame.columns) == {"file", "method", "seed", "point", "parent"}
    row = frame[frame["file"] == "lottery_seed2_end.pt"].iloc[0]
    assert (row["method"], row["seed"], row["point"], row["parent"]) == ("lottery", 2, "end", "prune-seed0")
    assert frame.groupby("method")["seed"].apply(lambda s: sorted(set(s))).to_dict() == {
        "lottery": [1, 2], "prune": [0], "scratch": [1, 2]}


def test_distances_equal_direct_computation(user_dir, tmp_path, monkeypatch, capsys):
    _factory_env(user_dir, monkeypatch)
    ck = user_dir / "ckpts"
    out = tmp_path / "out"
    assert distances.main([str(ck), "--model-factory", "usermodel:build", "--out", str(out), "--quiet"]) == 0
    frame = pd.read_csv(out / "distances.csv")
    files = pd.read_csv(ck / "manifest.csv")
    path_of = {f"{r.method}-seed{r.seed}:{r.point}": ck / r.file for r in files.itertuples()}
    assert set(frame["point_a"]) | set(frame["point_b"]) == set(path_of)
    assert len(frame) == len(path_of) * (len(path_of) - 1) // 2
    for r in frame.itertuples():
        direct = float(torch.linalg.vector_norm(_vector(path_of[r.point_a]) - _vector(path_of[r.point_b])))
        assert r.distance == pytest.approx(direct, rel=1e-12, abs=1e-12)
    to_pruning = pd.read_csv(out / "distance_to_pruning.csv")
    lot = to_pruning[(to_pruning["run_id"] == "lottery-seed1") & (to_pruning["kind"] == "end")].iloc[0]
    assert lot["pruning_run"] == "prune-seed0"
    direct = torch.linalg.vector_norm(_vector(ck / "lottery_seed1_end.pt") - _vector(ck / "prune_seed0_end.pt"))
    assert lot["distance"] == pytest.approx(float(direct), rel=1e-12)
    assert "wrote" in capsys.readouterr().out


def test_interpolate_endpoints_equal_direct_evaluation(user_dir, tmp_path, monkeypatch):
    _factory_env(user_dir, monkeypatch)
    ck = user_dir / "ckpts"
    out = tmp_path / "out"
    assert interpolate.main([str(ck), "--model-factory", "usermodel:build", "--dataset", "digits",
                             "--out", str(out), "--points", "5", "--quiet"]) == 0
    summary = pd.read_csv(out / "interpolation_summary.csv")
    assert set(summary["run_id"]) == {"lottery-seed1", "lottery-seed2", "scratch-seed1", "scratch-seed2"}
    import usermodel

    d = load_dataset("digits")

    def direct(state: dict) -> tuple[float, float]:
        net = usermodel.build()
        net.load_state_dict(state)
        with torch.no_grad():
            logits = net(d.x_train).double()
        return float(F.cross_entropy(logits, d.y_train)), float((logits.argmax(1) == d.y_train).double().mean())

    end = summary[(summary["run_id"] == "scratch-seed2") & (summary["path"] == interpolate.END_PATH)].iloc[0]
    loss0, acc0 = direct(_state(ck / "scratch_seed2_end.pt"))
    loss1, acc1 = direct(_state(ck / "prune_seed0_end.pt"))
    assert end["loss_at_0"] == pytest.approx(loss0, rel=1e-5)
    assert end["loss_at_1"] == pytest.approx(loss1, rel=1e-5)
    assert (end["acc_at_0"], end["acc_at_1"]) == pytest.approx((acc0, acc1))
    curves = pd.read_csv(out / "interpolation.csv")
    mid = curves[(curves["path_id"] == end["path_id"]) & np.isclose(curves["alpha"], 0.5)].iloc[0]
    a, b = _state(ck / "scratch_seed2_end.pt"), _state(ck / "prune_seed0_end.pt")
    assert mid["loss"] == pytest.approx(direct({k: 0.5 * a[k] + 0.5 * b[k] for k in a})[0], rel=1e-5)


def test_ensemble_equals_direct_computation_with_a_data_factory(user_dir, tmp_path, monkeypatch):
    _factory_env(user_dir, monkeypatch)
    ck = user_dir / "ckpts"
    out = tmp_path / "out"
    assert ensemble.main([str(ck), "--model-factory", "usermodel:build", "--data-factory", "usermodel:data",
                          "--out", str(out), "--quiet"]) == 0
    frame = pd.read_csv(out / "ensemble.csv").set_index("group")
    import usermodel

    d = load_dataset("digits")
    preds, probs = {}, {}
    for seed in (1, 2):
        net = usermodel.build()
        net.load_state_dict(_state(ck / f"lottery_seed{seed}_end.pt"))
        with torch.no_grad():
            probs[seed] = torch.softmax(net(d.x_test).double(), 1)
        preds[seed] = probs[seed].argmax(1)
    accs = [float((preds[s] == d.y_test).double().mean()) for s in (1, 2)]
    assert frame.loc["lottery", "test_acc_mean"] == pytest.approx(np.mean(accs))
    ens = ((probs[1] + probs[2]) / 2).argmax(1)
    assert frame.loc["lottery", "ensemble_acc"] == pytest.approx(float((ens == d.y_test).double().mean()))
    assert frame.loc["lottery", "disagreement_mean"] == pytest.approx(float((preds[1] != preds[2]).double().mean()))
    assert frame.loc["lottery", "pruning_run"] == "prune-seed0"


def test_mds_and_hessian_read_the_manifest(user_dir, tmp_path, monkeypatch):
    _factory_env(user_dir, monkeypatch)
    ck = user_dir / "ckpts"
    out = tmp_path / "out"
    common = ["--model-factory", "usermodel:build", "--out", str(out), "--quiet"]
    assert mds.main([str(ck), *common]) == 0
    assert set(pd.read_csv(out / "mds.csv")["run_id"]) == {"prune-seed0", "lottery-seed1", "lottery-seed2",
                                                            "scratch-seed1", "scratch-seed2"}
    assert hessian.main([str(ck), *common, "--dataset", "digits", "--run", "lottery-seed1", "--which", "end",
                         "--k", "2", "--examples", "100"]) == 0
    eig = pd.read_csv(out / "hessian.csv")
    assert set(eig["run_id"]) == {"lottery-seed1"} and len(eig) >= 2


def test_notebook_api_masks_are_nonzero_weights_or_the_mask_file(user_dir, tmp_path, monkeypatch):
    _factory_env(user_dir, monkeypatch)
    ck = user_dir / "ckpts"
    runs = select_runs(ck, model_factory="usermodel:build", dataset="digits", method="lottery")
    assert [r.run_id for r in runs] == ["lottery-seed1", "lottery-seed2"]
    assert all(isinstance(r, ExternalRun) and r.parent == "prune-seed0" for r in runs)
    model = runs[0].model("end")
    saved = _state(ck / "lottery_seed1_end.pt")
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    masks = _state(ck / "prune_mask.pt")
    assert all(torch.equal(model.masks[name], saved[name] != 0) for name in masks)  # nonzero weights
    assert runs[0].sparsity == pytest.approx(0.8, abs=0.01)
    # a manifest with a mask column uses the file instead
    other = tmp_path / "with_mask"
    other.mkdir()
    for f in ("prune_seed0_end.pt", "prune_mask.pt"):
        (other / f).write_bytes((ck / f).read_bytes())
    (other / "manifest.csv").write_text("file,method,seed,point,mask\nprune_seed0_end.pt,prune,0,end,prune_mask.pt\n")
    (run,) = select_runs(other, model_factory="usermodel:build")
    assert all(torch.equal(run.checkpoint("end")["masks"][n], masks[n]) for n in masks)


# --- bad input ----------------------------------------------------------------------------------
BAD = {
    "missing file": ("file,method,seed,point\nnope.pt,prune,0,end\n", "usermodel:build", "does not exist"),
    "shape mismatch": ("file,method,seed,point\nprune_seed0_end.pt,prune,0,end\n", "usermodel:build_wide",
                       "does not fit the model"),
    "unknown column": ("file,method,seed,point,sparsity\nprune_seed0_end.pt,prune,0,end,0.8\n", "usermodel:build",
                       "unknown column"),
    "bad factory module": ("file,method,seed,point\nprune_seed0_end.pt,prune,0,end\n", "nomodule_xyz:build",
                           "cannot import"),
    "bad factory name": ("file,method,seed,point\nprune_seed0_end.pt,prune,0,end\n", "usermodel:nothing",
                         "no callable"),
    "factory not a model": ("file,method,seed,point\nprune_seed0_end.pt,prune,0,end\n", "usermodel:not_a_model",
                            "not a torch nn.Module"),
    "no factory": ("file,method,seed,point\nprune_seed0_end.pt,prune,0,end\n", None, "--model-factory"),
    "bad point": ("file,method,seed,point\nprune_seed0_end.pt,prune,0,last\n", "usermodel:build", "point 'last'"),
    "unknown parent": ("file,method,seed,point,parent\nprune_seed0_end.pt,lottery,0,end,ghost\n", "usermodel:build",
                       "parent 'ghost'"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("cli", [distances, interpolate])
def test_bad_manifest_exits_2_and_writes_nothing(case, cli, user_dir, tmp_path, monkeypatch, capsys):
    _factory_env(user_dir, monkeypatch)
    text, factory, message = BAD[case]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "prune_seed0_end.pt").write_bytes((user_dir / "ckpts" / "prune_seed0_end.pt").read_bytes())
    (bad / "manifest.csv").write_text(text)
    existing = bad / "_analysis" / "distances.csv"
    existing.parent.mkdir()
    existing.write_text("old\n")
    argv = [str(bad), "--quiet", "--dataset", "digits"] + (["--model-factory", factory] if factory else [])
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert existing.read_text() == "old\n"
    assert sorted(p.name for p in (bad / "_analysis").iterdir()) == ["distances.csv"]


def test_manifest_cli_refuses_and_writes_nothing(user_dir, tmp_path, monkeypatch, capsys):
    _factory_env(user_dir, monkeypatch)
    folder = tmp_path / "f"
    folder.mkdir()
    for f in ("prune_seed0_end.pt", "lottery_seed1_end.pt"):
        (folder / f).write_bytes((user_dir / "ckpts" / f).read_bytes())
    cases = [
        (["--method", "x", "--seed-from-name", r"run(\d+)"], "does not match"),      # seed not in the names
        (["--method", "x", "--seed-from-name", r"seed(\d+)", "--model-factory", "usermodel:build_wide"],
         "does not fit"),                                                           # checked against the model
        (["--method", "x", "--seed-from-name", r"(seed"], "not a valid regular expression"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exc:
            manifest.main([str(folder), *extra])
        assert exc.value.code == 2 and message in capsys.readouterr().err
        assert not (folder / "manifest.csv").exists()
    assert manifest.main([str(folder), "--method", "prune", "--seed-from-name", r"seed(\d+)",
                          "--model-factory", "usermodel:build"]) == 0
    written = (folder / "manifest.csv").read_text()
    with pytest.raises(SystemExit) as exc:  # an existing manifest is kept unless --append
        manifest.main([str(folder), "--method", "prune", "--seed-from-name", r"seed(\d+)"])
    assert exc.value.code == 2 and (folder / "manifest.csv").read_text() == written


def test_factory_flags_on_a_runs_directory_are_refused(smoke_runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        distances.main([str(smoke_runs), "--model-factory", "x:y", "--out", str(tmp_path), "--quiet"])
    assert exc.value.code == 2 and "manifest" in capsys.readouterr().err


def test_load_refuses_pickled_objects(user_dir, tmp_path, monkeypatch):
    """weights_only=True: a checkpoint that needs unpickling of arbitrary objects is refused, not run."""
    _factory_env(user_dir, monkeypatch)
    import usermodel

    folder = tmp_path / "p"
    folder.mkdir()
    torch.save({"model": usermodel.build()}, folder / "whole_model.pt")  # a pickled nn.Module, not a state_dict
    (folder / "manifest.csv").write_text("file,method,seed,point\nwhole_model.pt,prune,0,end\n")
    with pytest.raises(UserError, match="weights_only"):
        select_runs(folder, model_factory="usermodel:build")


def test_readme_example_works_as_written(tmp_path):
    """The guide's "Your own checkpoints" example, run from its shell lines in a fresh folder."""
    text = (ROOT / "docs" / "guide" / "own-checkpoints.md").read_text()
    section = text.split("## An example from an empty folder", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")
    files = {}
    shell = []
    for lang_block in blocks[1::2]:
        lang, _, body = lang_block.partition("\n")
        if lang.startswith("python") and body.startswith("# "):
            files[body.split("\n", 1)[0][2:].strip()] = body
        elif lang.startswith("bash"):
            shell += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    assert files and shell
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "MPLBACKEND": "Agg"}
    for line in shell:
        cmd = line.replace("python ", f"{sys.executable} ", 1) if line.startswith("python ") else line
        res = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (line, res.stderr[-2000:])
    frame = pd.read_csv(tmp_path / "ckpts" / "_analysis" / "distances.csv")
    assert len(frame) > 0 and set(itertools.chain(frame["method_a"], frame["method_b"])) >= {"scratch"}


def test_gradflow_says_external_runs_have_no_metrics(user_dir, tmp_path, monkeypatch, capsys):
    from analysis import gradflow

    _factory_env(user_dir, monkeypatch)
    with pytest.raises(SystemExit) as exc:
        gradflow.main([str(user_dir / "ckpts"), "--model-factory", "usermodel:build", "--out", str(tmp_path),
                       "--quiet"])
    assert exc.value.code == 2 and "other code have no metrics.csv" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
