"""Data-parallel training with gloo on CPU: 2 processes agree with each other and with 1 process;
resume restores the RNG (dropout) state."""
from __future__ import annotations

import functools
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sparse_training import models
from sparse_training import distributed as ddp
from sparse_training.config import TrainConfig
from sparse_training.rundir import RunDir
from sparse_training.train import build_parser
from sparse_training.config import config_from_args
from sparse_training.trainer import Trainer, run_training, setup_run

# LeNet-5 on the MNIST subset, a few dozen steps, mask updates every few steps
COMMON = ["--model", "lenet5", "--dataset", "mnist", "--steps", "24", "--batch-size", "32", "--log-every", "12",
          "--metrics-batch", "64", "--checkpoint-every", "12", "--quiet", "--optimizer", "momentum"]
METHODS = {
    "dense": ["--method", "dense"],
    "prune": ["--method", "prune", "--sparsity", "0.8", "--prune-every", "4"],
    "rigl": ["--method", "rigl", "--sparsity", "0.8", "--update-every", "6"],
}


def _cfg(extra: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args([*COMMON, *extra]))


def _state(trainer: Trainer) -> dict:
    return {"model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "masks": trainer.masks.as_dict()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        info = ddp.init_from_env("cpu")
        assert info is not None and info.world_size == world and info.backend == "gloo"
        # the check fires when masks differ between ranks
        try:
            ddp.check_identical({"w": torch.tensor([True, rank == 0])}, info, 0)
            caught = False
        except RuntimeError:
            caught = True
        states = {"check_caught": caught}
        for name, extra in METHODS.items():
            trainer = setup_run(_cfg(extra), out, run_id=f"{name}-ddp", device="cpu", quiet=True)
            trainer.fit()
            states[name] = _state(trainer)
        # --resume under DDP: stop RigL at step 15 on both ranks, resume from the step-12 checkpoint
        step = Trainer.train_step

        def cut(self):
            if self.step == 15:
                raise KeyboardInterrupt
            return step(self)

        Trainer.train_step = cut
        try:
            setup_run(_cfg(METHODS["rigl"]), out, run_id="rigl-cut", device="cpu", quiet=True).fit()
        except KeyboardInterrupt:
            pass
        Trainer.train_step = step
        resumed = setup_run(_cfg(METHODS["rigl"]), out, run_id="rigl-cut", resume=True, device="cpu", quiet=True)
        states["resumed_from"] = resumed.step
        resumed.fit()
        states["rigl-resumed"] = _state(resumed)
        torch.save(states, f"{out}/rank{rank}.pt")
        dist.barrier()  # neither rank tears its gloo pairs down while the other still uses them
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = {}
    for name, extra in METHODS.items():
        trainer = setup_run(_cfg(extra), out, run_id=f"{name}-one", device="cpu", quiet=True)
        trainer.fit()
        single[name] = _state(trainer)
    return out, ranks, single


def test_resume_under_ddp_is_bit_for_bit(ddp_runs):
    _, ranks, _ = ddp_runs
    for r in ranks:
        assert r["resumed_from"] == 12
        for part in ("model", "masks"):
            for k, v in r["rigl"][part].items():
                assert torch.equal(v, r["rigl-resumed"][part][k]), k


def test_mask_check_catches_disagreement(ddp_runs):
    _, ranks, _ = ddp_runs
    assert ranks[0]["check_caught"] and ranks[1]["check_caught"]


@pytest.mark.parametrize("name", list(METHODS))
def test_two_processes_match_each_other_and_one_process(ddp_runs, name):
    out, ranks, single = ddp_runs
    a, b, one = ranks[0][name], ranks[1][name], single[name]
    for k in a["masks"]:  # masks: bitwise identical on both ranks and equal to the 1-process run's
        assert torch.equal(a["masks"][k], b["masks"][k]), k
        assert torch.equal(a["masks"][k], one["masks"][k]), k
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # DDP keeps the replicas identical
        torch.testing.assert_close(a["model"][k], one["model"][k], rtol=1e-4, atol=1e-5)
    if name != "dense":
        assert 0.75 < 1 - sum(int(m.sum()) for m in a["masks"].values()) / sum(
            m.numel() for m in a["masks"].values()) < 0.85
    run = RunDir(out / f"{name}-ddp")
    config = run.read_config()
    assert config["world_size"] == 2 and config["backend"] == "gloo"
    assert RunDir(out / f"{name}-one").read_config()["world_size"] == 1
    end = run.load("end")
    for k in a["model"]:
        assert torch.equal(end["model"][k], a["model"][k])
    m2, m1 = run.read_metrics(), RunDir(out / f"{name}-one").read_metrics()
    assert list(m2["step"]) == list(m1["step"])  # one row per logged step: measured once, by rank 0
    torch.testing.assert_close(torch.tensor(m2["train_loss"].to_numpy()), torch.tensor(m1["train_loss"].to_numpy()),
                               rtol=1e-4, atol=1e-5)


def _with_dropout(builder):
    @functools.wraps(builder)
    def build(*args, **kwargs):
        return nn.Sequential(nn.Dropout(0.3), builder(*args, **kwargs))
    return build


def test_resume_restores_rng_so_dropout_resumes_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "mlp", _with_dropout(models.MODELS["mlp"]))
    argv = ["--model", "mlp", "--dataset", "digits", "--hidden", "32", "--depth", "2", "--steps", "40",
            "--log-every", "20", "--checkpoint-every", "10", "--quiet", "--method", "dense"]
    cfg = config_from_args(build_parser().parse_args(argv))
    run_training(cfg, tmp_path, "whole", device="cpu", quiet=True)
    step = Trainer.train_step

    def cut(self):
        if self.step == 25:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", cut)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path, "cut", device="cpu", quiet=True)
    monkeypatch.setattr(Trainer, "train_step", step)
    torch.manual_seed(999)  # whatever the process's RNG holds, the checkpoint's state is restored
    run_training(cfg, tmp_path, "cut", resume=True, device="cpu", quiet=True)
    a, b = RunDir(tmp_path / "whole").load("end"), RunDir(tmp_path / "cut").load("end")
    periodic = RunDir(tmp_path / "cut").step_checkpoints("")
    assert periodic and RunDir(tmp_path / "cut").load(periodic[-1][0])["rng"].dtype == torch.uint8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
