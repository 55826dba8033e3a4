"""The train CLI end to end: run-directory contract, reproducibility, resume after SIGKILL, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from sparse_training.rundir import RunDir
from sparse_training.train import main

TINY = ["--model", "mlp", "--dataset", "digits", "--hidden", "16", "--depth", "2", "--steps", "40",
        "--log-every", "10", "--checkpoint-every", "10", "--quiet", "--threads", "1"]


def train(out: Path, *extra: str) -> int:
    return main([*TINY, "--out", str(out), *extra])


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory) -> RunDir:
    out = tmp_path_factory.mktemp("train")
    assert train(out, "--method", "scratch+", "--sparsity", "0.8", "--run-id", "r") == 0
    return RunDir(out / "r")


def test_run_directory_contract(scratch_run):
    run = scratch_run
    status = json.loads(run.status_path.read_text())
    assert status["state"] == "complete" and status["step"] == 40
    assert 0 < status["log_seconds"] < status["seconds"]  # time in metrics rows is part of the run's time
    config = run.read_config()
    for key in ("method", "parent_run_id", "seeds", "data_source", "versions", "input_shape"):
        assert key in config
    assert config["method"] == "scratch+" and config["init_scheme"] == "sparse"
    assert "load_digits" in config["data_source"] or "digits" in config["data_source"]
    metrics = pd.read_csv(run.metrics_path)
    required = {"step", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "sparsity",
                "grad_norm", "egf1", "egf2", "egf2_per_weight", "dist_to_start", "grad_norm/layers.0"}
    assert required <= set(metrics.columns)
    # early geometric logging (1, 2, 4, 8) plus every 10 steps
    assert list(metrics["step"]) == [0, 1, 2, 4, 8, 10, 20, 30, 40]
    assert metrics["dist_to_start"].iloc[0] == 0 and metrics["dist_to_start"].iloc[-1] > 0
    assert (metrics["sparsity"] - 0.8).abs().max() < 0.01
    for which in ("start", "end"):
        ckpt = torch.load(run.checkpoint_path(which), weights_only=True)
        assert set(ckpt) >= {"model", "masks", "step", "epoch"}
    periodic = torch.load(run.checkpoint_path(30), weights_only=True)  # keep 1: the latest < end
    assert "optimizer" in periodic and "rng" in periodic
    assert [s for s, _ in run.step_checkpoints()] == [30]


def test_masked_weights_stay_zero_and_grad_norm_is_masked(scratch_run):
    end = scratch_run.load("end")
    for name, mask in end["masks"].items():
        assert torch.all(end["model"][name][~mask] == 0)
    start = scratch_run.load("start")
    assert all(torch.equal(start["masks"][n], end["masks"][n]) for n in start["masks"])


def test_grad_norm_matches_direct_computation(scratch_run):
    """The logged step-0 gradient norm equals a direct masked-gradient computation on the fixed batch."""
    from analysis.runs import Run
    from sparse_training.metrics import metric_indices

    run = Run(scratch_run.path)
    model = run.model("start")
    data = run.dataset()
    idx = metric_indices(len(data.x_train), 1000)  # the batch analyses use too
    model.train()
    loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    masks = model.masks
    total = 0.0
    for (name, _), g in zip(model.named_parameters(), grads):
        if name in masks:
            g = g * masks[name]
        total += g.double().pow(2).sum().item()
    assert run.metrics["grad_norm"].iloc[0] == pytest.approx(total**0.5, rel=1e-5)


def test_same_seed_same_bits(tmp_path):
    for rid in ("a", "b"):
        assert train(tmp_path, "--method", "rigl", "--sparsity", "0.8", "--update-every", "10",
                     "--run-id", rid) == 0
    a, b = RunDir(tmp_path / "a").load("end"), RunDir(tmp_path / "b").load("end")
    assert same_bits(a["model"], b["model"]) and same_bits(a["masks"], b["masks"])
    assert train(tmp_path, "--method", "rigl", "--sparsity", "0.8", "--update-every", "10",
                 "--seed", "1", "--run-id", "c") == 0
    c = RunDir(tmp_path / "c").load("end")
    assert not same_bits(a["model"], c["model"])


def test_rerun_of_complete_run_is_a_no_op(scratch_run, capsys):
    before = scratch_run.metrics_path.stat().st_mtime_ns
    assert train(scratch_run.path.parent, "--method", "scratch+", "--sparsity", "0.8", "--run-id", "r") == 0
    assert scratch_run.metrics_path.stat().st_mtime_ns == before
    assert "already complete" in capsys.readouterr().out


def test_resume_after_sigkill_gives_identical_end(tmp_path):
    """Kill a training subprocess mid-run, resume it, compare end.pt with an uninterrupted run."""
    args = ["--model", "mlp", "--dataset", "digits", "--hidden", "64", "--depth", "2", "--steps", "500",
            "--log-every", "50", "--checkpoint-every", "25", "--quiet", "--threads", "1",
            "--method", "rigl", "--sparsity", "0.8", "--update-every", "40", "--optimizer", "adam"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sparse_training.train", *args, "--out", str(tmp_path)]
    proc = subprocess.Popen([*cmd, "--run-id", "killed"], env=env)
    run = RunDir(tmp_path / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and not any(s >= 25 for s, _ in run.step_checkpoints()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not run.is_complete(), "the run finished before it could be killed"
    assert run.read_status()["state"] == "running"
    # without --resume an unfinished run is refused
    refused = subprocess.run([*cmd, "--run-id", "killed"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run([*cmd, "--run-id", "killed", "--resume"], env=env, check=True)
    subprocess.run([*cmd, "--run-id", "whole"], env=env, check=True)
    a, b = run.load("end"), RunDir(tmp_path / "whole").load("end")
    assert same_bits(a["model"], b["model"]) and same_bits(a["masks"], b["masks"])
    ma, mb = run.read_metrics(), RunDir(tmp_path / "whole").read_metrics()
    pd.testing.assert_frame_equal(ma, mb)


def expect_exit2(capsys, argv: list[str], words: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flag,value,words", [
    ("--model", "resnet1000", "unknown model"),
    ("--dataset", "imagenet", "unknown dataset"),
    ("--method", "magic", "unknown method"),
    ("--optimizer", "lion", "unknown optimizer"),
    ("--sparsity", "1.0", "sparsity must lie in [0, 1)"),
    ("--sparsity", "-0.1", "sparsity must lie in [0, 1)"),
    ("--run-id", "Bad/Id", "run id"),
    ("--depth", ["5", "--model", "lenet300"], "--depth applies to the mlp model only"),  # flags a model ignores
    ("--batchnorm", ["--model", "lenet5", "--depth", "3", "--hidden", "256"], "--batchnorm applies to"),
])
def test_bad_input_exit_2(tmp_path, capsys, flag, value, words):
    argv = [*TINY, "--out", str(tmp_path), "--method", "scratch", flag] + (value if isinstance(value, list) else [value])
    # argparse rejects choices itself with exit 2; our checks cover the rest
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert words in err or "invalid choice" in err
    assert not any(p.name != "_logs" for p in tmp_path.iterdir()), "nothing may be written"


def test_missing_full_size_dataset(tmp_path, capsys):
    expect_exit2(capsys, ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                          "--quiet"], "cifar")


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expect_exit2(capsys, [*TINY, "--out", str(blocker / "runs")], "cannot write to output directory")


def test_corrupt_checkpoint_on_resume(tmp_path, capsys):
    args = [*TINY, "--out", str(tmp_path), "--method", "scratch", "--sparsity", "0.5", "--run-id", "c"]
    assert main(args) == 0
    run = RunDir(tmp_path / "c")
    run.write_status("running", 30)  # pretend it was interrupted
    (run.ckpt_dir / "end.pt").unlink()
    ckpt = run.checkpoint_path(30)
    ckpt.write_bytes(ckpt.read_bytes()[:200])  # truncated
    other = tmp_path / "other.txt"
    other.write_text("keep")
    expect_exit2(capsys, [*args, "--resume"], "corrupt or truncated")
    assert other.read_text() == "keep" and ckpt.stat().st_size == 200


def test_nan_loss_marks_failed_and_keeps_last_checkpoint(tmp_path, capsys):
    args = [*TINY, "--out", str(tmp_path), "--method", "dense", "--lr", "1e12", "--optimizer", "sgd",
            "--schedule", "constant", "--run-id", "nan"]
    expect_exit2(capsys, args, "became")
    run = RunDir(tmp_path / "nan")
    status = run.read_status()
    assert status["state"] == "failed" and ("nan" in status["reason"] or "inf" in status["reason"])
    assert run.checkpoint_path("start").is_file() and not run.checkpoint_path("end").is_file()
    torch.load(run.checkpoint_path("start"), weights_only=True)


def test_other_runs_untouched_by_failures(scratch_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in scratch_run.path.rglob("*")}
    with pytest.raises(SystemExit):
        main([*TINY, "--out", str(scratch_run.path.parent), "--method", "scratch", "--sparsity", "2"])
    assert {p: p.stat().st_mtime_ns for p in scratch_run.path.rglob("*")} == before


def test_help_lists_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--method", "--sparsity", "--resume", "--device", "--update-every", "--prune-start"):
        assert flag in out


def test_match_width_states_and_checks_the_sparsity_it_realises(tmp_path, capsys):
    """--match-width fixes the active counts; a --sparsity that disagrees (e.g. the default 0.95) is refused,
    the right one is recorded with the realised value and printed."""
    from sparse_training.masks import Masks

    # mlp 64-16-16-10 at width 0.5 has 64*8 + 8*8 + 8*10 = 656 weights of the wide net's 1,440
    realised = 1 - 656 / 1440
    with pytest.raises(SystemExit) as exc:
        train(tmp_path, "--method", "scratch", "--match-width", "0.5", "--run-id", "a")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"pass --sparsity {realised:.4f}" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()
    assert train(tmp_path, "--method", "scratch", "--match-width", "0.5", "--sparsity", f"{realised:.4f}",
                 "--run-id", "b", "--steps", "2") == 0
    assert f"realises sparsity {realised:.4f}" in capsys.readouterr().out
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    start = RunDir(tmp_path / "b").load("start")
    assert config["realised_sparsity"] == pytest.approx(realised) == Masks(start["masks"]).sparsity()


@pytest.mark.parametrize("extra", [["--method", "prune"], ["--method", "dense"], ["--method", "scratch", "--match-width", "0"]])
def test_match_width_refused_where_it_would_be_ignored(tmp_path, capsys, extra):
    args = extra if "--match-width" in extra else [*extra, "--match-width", "0.5"]
    with pytest.raises(SystemExit) as exc:
        train(tmp_path, *args, "--run-id", "x")
    assert exc.value.code == 2 and "--match-width" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_run_killed_while_writing_start_checkpoint_starts_afresh(tmp_path, monkeypatch):
    """config.json marks a run as existing, so it is written after start.pt: a process killed while
    saving start.pt leaves a directory that a plain rerun starts afresh (it used to need --resume, which
    then failed on the missing start.pt)."""
    from sparse_training import trainer as trainer_module

    real_save = trainer_module.atomic_torch_save

    def killed_on_start(path, obj):
        if Path(path).name == "start.pt":
            raise KeyboardInterrupt  # the kill, mid-creation
        real_save(path, obj)

    argv = ("--method", "scratch", "--sparsity", "0.5", "--steps", "6", "--run-id", "cut")
    monkeypatch.setattr(trainer_module, "atomic_torch_save", killed_on_start)
    with pytest.raises(SystemExit):  # the CLI turns the interrupt into exit code 130
        train(tmp_path, *argv)
    assert not RunDir(tmp_path / "cut").exists()
    monkeypatch.setattr(trainer_module, "atomic_torch_save", real_save)
    assert train(tmp_path, *argv) == 0
    assert RunDir(tmp_path / "cut").is_complete()


def test_pruning_window_past_the_end_of_training_is_refused(tmp_path):
    """A step-valued pruning window that ends after the last step would leave the run short of its
    target sparsity; it is refused before anything is written."""
    with pytest.raises(SystemExit) as exc:
        train(tmp_path, "--method", "prune", "--sparsity", "0.5", "--prune-begin-step", "10",
              "--prune-end-step", "100", "--run-id", "late")
    assert exc.value.code == 2
    assert not (tmp_path / "late").exists()


def test_batch_indices_are_each_epochs_own_permutation_in_any_step_order(tmp_path):
    """The trainer keeps one epoch's permutation at a time; asked in any order (a resume goes back),
    every step's batch is the slice of the permutation seeded by (seed, epoch)."""
    from sparse_training.config import TrainConfig
    from sparse_training.methods import seed_for
    from sparse_training.trainer import setup_run

    cfg = TrainConfig(model="mlp", dataset="digits", hidden=16, depth=2, method="dense", steps=40,
                      batch_size=100, seed=3)
    t = setup_run(cfg, tmp_path, run_id="perm", quiet=True)
    per_epoch = t.steps_per_epoch
    assert per_epoch > 2
    steps = [0, 1, per_epoch - 1, per_epoch, per_epoch + 1, 1, 3 * per_epoch + 2, 2, per_epoch]
    for step in steps:
        epoch, pos = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(seed_for(cfg.seed, "data") * 10_007 + epoch)
        expected = torch.randperm(t.n, generator=g)[pos * 100:(pos + 1) * 100]
        assert torch.equal(t.batch_indices(step), expected), step


def test_fused_relu_pools_leave_a_lenet5_rigl_run_bit_identical(tmp_path, monkeypatch):
    """The trainer's fused ReLU + max-pool (training steps, metrics rows, RigL's growth gradient) gives
    the same end weights, momentum and metrics, bit for bit, as the plain modules."""
    import contextlib

    from sparse_training import metrics as metrics_module
    from sparse_training import models as models_module
    from sparse_training import trainer as trainer_module
    from sparse_training.config import TrainConfig
    from sparse_training.trainer import setup_run

    cfg = TrainConfig(model="lenet5", dataset="mnist", method="rigl", sparsity=0.9, steps=24, batch_size=32,
                      update_every=8, log_every=8, metrics_batch=300, optimizer="momentum", seed=1)

    def run(name: str):
        t = setup_run(cfg, tmp_path, run_id=name, quiet=True)
        t.fit()
        bits = {k: v.view(torch.int32).clone() for k, v in t.model.state_dict().items()}
        momentum = [t.optimizer.state[p]["momentum_buffer"].view(torch.int32).clone()
                    for p in t.model.parameters()]
        return bits, momentum, (tmp_path / name / "metrics.csv").read_text()

    calls = []
    real_apply = models_module._ReLUMaxPool2x2.apply
    monkeypatch.setattr(models_module._ReLUMaxPool2x2, "apply", staticmethod(lambda x: calls.append(1) or real_apply(x)))
    fused = run("fused")
    assert len(calls) > 2 * cfg.steps  # both pools of every step, and the metrics and growth gradients
    for module in (trainer_module, metrics_module):
        monkeypatch.setattr(module, "fused_relu_pools", contextlib.nullcontext)
    plain = run("plain")
    assert same_bits(fused[0], plain[0])
    assert all(torch.equal(a, b) for a, b in zip(fused[1], plain[1]))
    assert fused[2] == plain[2]
    assert "pre_update" in fused[2]  # RigL's updates (and their growth gradients) happened
