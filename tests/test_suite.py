"""The suite: dependency order, idempotence, resuming after a kill, failures, launchers, and method semantics."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from sparse_training.config import TrainConfig
from sparse_training.errors import UserError
from sparse_training.presets import PRESETS, RunSpec, preset_runs
from sparse_training.rundir import RunDir
from sparse_training.suite import accuracy_table, main, run_suite
from sparse_training.updaters import cubic_sparsity


def test_smoke_preset_completes_in_dependency_order(smoke_runs):
    specs = preset_runs("smoke", 2)
    for spec in specs:
        run = RunDir(smoke_runs / spec.run_id)
        assert run.is_complete(), spec.run_id
        if spec.parent:  # a child started after its parent finished
            child_start = run.read_config()["created"]
            parent_end = (smoke_runs / spec.parent / "checkpoints" / "end.pt").stat().st_mtime
            assert (run.checkpoint_path("start").stat().st_mtime >= parent_end), (child_start, spec.run_id)
    table = accuracy_table(smoke_runs, specs)
    assert list(table["method"]) == ["prune", "lottery", "scratch", "scratch+", "rigl", "rigl+", "dense",
                                     "small-dense"]
    assert (table["count"] == [2, 2, 2, 2, 2, 2, 1, 1]).all()


def test_lottery_start_is_parent_rewind_times_parent_mask(smoke_runs):
    lottery = RunDir(smoke_runs / "mlp-digits-s0.9-lottery-seed1")
    parent = RunDir(smoke_runs / lottery.read_config()["parent_run_id"])
    start, p_start, p_end = lottery.load("start"), parent.load("start"), parent.load("end")
    for name, mask in p_end["masks"].items():
        assert torch.equal(start["masks"][name], mask)
    for name, value in start["model"].items():
        expected = p_start["model"][name] * p_end["masks"][name] if name in p_end["masks"] else p_start["model"][name]
        assert torch.equal(value, expected), name


def test_scratch_shares_the_mask_but_not_the_weights(smoke_runs):
    scratch = RunDir(smoke_runs / "mlp-digits-s0.9-scratch-seed0").load("start")
    lottery = RunDir(smoke_runs / "mlp-digits-s0.9-lottery-seed0").load("start")
    for name in lottery["masks"]:
        assert torch.equal(scratch["masks"][name], lottery["masks"][name])
        assert not torch.equal(scratch["model"][name], lottery["model"][name])


def test_pruning_follows_cubic_schedule_and_ends_at_target(smoke_runs):
    run = RunDir(smoke_runs / "mlp-digits-s0.9-prune-seed0")
    cfg = TrainConfig.from_dict(run.read_config())
    total = run.read_config()["total_steps"]
    start, end = int(cfg.prune_start * total), int(cfg.prune_end * total)
    metrics = run.read_metrics()
    n_layers = len(run.read_config()["maskable_layers"])
    maskable = run.read_config()["maskable_params"]
    for _, row in metrics.iterrows():
        step = int(row["step"])
        # the last pruning event at or before this step sets the sparsity
        events = [s for s in range(start, end + 1) if (s - start) % cfg.prune_every == 0 or s == end]
        done = [s for s in events if s <= step]
        target = cubic_sparsity(done[-1], start, end, cfg.sparsity) if done else 0.0
        assert abs(row["sparsity"] - target) <= n_layers / maskable + 1e-9, step
    final = run.load("end")["masks"]
    active = sum(int(m.sum()) for m in final.values())
    assert abs((1 - active / maskable) - cfg.sparsity) <= n_layers / maskable


def test_rigl_keeps_layer_counts_and_writes_pre_post(smoke_runs):
    run = RunDir(smoke_runs / "mlp-digits-s0.9-rigl-seed0")
    pre = run.step_checkpoints("pre")
    post = run.step_checkpoints("post")
    assert pre and [s for s, _ in pre] == [s for s, _ in post]
    start_counts = {n: int(m.sum()) for n, m in run.load("start")["masks"].items()}
    changed = False
    for step, _ in post:
        a, b = run.load(step, "pre")["masks"], run.load(step, "post")["masks"]
        for name, mask in b.items():
            assert int(mask.sum()) == start_counts[name]
            changed |= not torch.equal(mask, a[name])
            grown = mask & ~a[name]
            assert torch.all(run.load(step, "post")["model"][name][grown] == 0)
    assert changed, "no mask update changed the mask"
    m = run.read_metrics()
    assert set(m["phase"]) == {"train", "pre_update", "post_update"}


def test_small_dense_matches_sparse_active_count(smoke_runs):
    config = RunDir(smoke_runs / "mlp-digits-small-dense-seed0").read_config()
    assert abs(config["small_dense_params"] - config["sparse_active_params"]) / config["sparse_active_params"] < 0.05
    assert config["small_dense_width"] < 1.0


def test_rerun_is_idempotent(smoke_copy, capsys):
    before = {p: p.stat().st_mtime_ns for p in smoke_copy.rglob("*.pt")}
    assert main(["--preset", "smoke", "--seeds", "2", "--out", str(smoke_copy), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in smoke_copy.rglob("*.pt")} == before
    assert "14/14 runs complete" in capsys.readouterr().out


def test_failures_are_reported_and_others_finish(tmp_path, capsys):
    good = TrainConfig(model="mlp", dataset="digits", hidden=16, depth=2, steps=20, method="dense")
    bad = TrainConfig(model="mlp", dataset="digits", hidden=16, depth=2, steps=20, method="dense",
                      optimizer="sgd", lr=1e12, schedule="constant", seed=1)
    child = TrainConfig(model="mlp", dataset="digits", hidden=16, depth=2, steps=20, method="lottery",
                        sparsity=0.5)
    specs = [RunSpec("bad", bad), RunSpec("good", good), RunSpec("child", child, "bad", ("bad",))]
    results = run_suite(specs, tmp_path, jobs=2, quiet=True).set_index("run_id")
    assert results.loc["good", "state"] == "complete"
    assert results.loc["bad", "state"] == "failed" and "became" in results.loc["bad", "reason"]
    assert results.loc["child", "state"] == "failed" and "parent bad failed" in results.loc["child", "reason"]


def test_killed_suite_restarts_without_redoing_finished_runs(tmp_path):
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sparse_training.suite", "--preset", "smoke", "--seeds", "1",
           "--out", str(out), "--jobs", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    first = out / "mlp-digits-s0.9-prune-seed0"
    deadline = time.time() + 120
    while time.time() < deadline and not RunDir(first).is_complete():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the suite and its workers
    proc.wait()
    assert RunDir(first).is_complete()
    stamp = (first / "checkpoints" / "end.pt").stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (first / "checkpoints" / "end.pt").stat().st_mtime_ns == stamp
    for spec in preset_runs("smoke", 1):
        assert RunDir(out / spec.run_id).is_complete()


def test_submitit_local_executor_runs_smoke_preset(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "runs"
    specs = [s for s in preset_runs("smoke", 1) if s.config.method in ("prune", "lottery", "dense")]
    results = run_suite(specs, out, jobs=2, launcher="submitit", quiet=True)
    assert (results["state"] == "complete").all(), results
    assert (out / "_submitit").is_dir()
    assert RunDir(out / "mlp-digits-s0.9-lottery-seed0").read_config()["parent_run_id"] == \
        "mlp-digits-s0.9-prune-seed0"


def test_presets_are_well_formed():
    for name in PRESETS:
        specs = preset_runs(name, 2)
        ids = [s.run_id for s in specs]
        assert len(ids) == len(set(ids)), name
        for s in specs:
            assert all(d in ids[: ids.index(s.run_id)] for d in s.depends_on), (name, s.run_id)
    lenet = preset_runs("paper-lenet5", 5)
    methods = pd.Series([s.config.method for s in lenet]).value_counts().to_dict()
    assert methods == {"prune": 5, "lottery": 5, "scratch": 5, "scratch+": 5, "rigl": 5, "rigl+": 5,
                       "dense": 1, "small-dense": 1}
    assert "lenet5-mnist-s0.95-lottery-seed3" in [s.run_id for s in lenet]


def test_scsdc_pairs_have_equal_active_counts_per_layer(tmp_path):
    from sparse_training.masks import maskable_names
    from sparse_training.methods import prepare_start

    specs = preset_runs("scsdc", 1)
    dense, sparse = specs[0].config, specs[1].config
    dm, dmasks, _ = prepare_start(dense, (64,), 10)
    sm, smasks, _ = prepare_start(sparse, (64,), 10)
    dense_sizes = [p.numel() for n, p in dm.named_parameters() if n in maskable_names(dm)]
    assert list(smasks.active_counts().values()) == dense_sizes


def test_bad_preset_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "nope", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "unknown preset" in capsys.readouterr().err


def test_suite_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--launcher" in out and "paper-lenet5" in out and "--slurm-partition" in out


def test_dry_run_lists_runs(capsys, tmp_path: Path):
    assert main(["--preset", "paper-lenet5", "--seeds", "2", "--dry-run", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 5 * 2 + 2 + 1 and lines[-1] == "paper-lenet5: 14 runs"


def test_set_overrides_every_run_and_renames_ids():
    from sparse_training.presets import parse_overrides

    specs = preset_runs("paper-lenet5", 1, parse_overrides(["dataset=cifar10", "model=vgg16"]))
    assert all(s.config.dataset == "cifar10" for s in specs)
    lottery = next(s for s in specs if s.config.method == "lottery")
    assert lottery.run_id == "vgg16-cifar10-s0.95-lottery-seed0"
    assert lottery.parent == "vgg16-cifar10-s0.95-prune-seed0" == lottery.depends_on[0]


@pytest.mark.parametrize("preset", ["smoke", "scsdc"])
@pytest.mark.parametrize("items", [["epochs=3"], ["lr=0.01"], ["sparsity=0.8"], ["dataset=digits", "steps=40"],
                                   ["model=mlp"]])
def test_set_renames_never_collide_with_other_settings(preset, items):
    """A renamed run keeps its preset id only when its settings are the preset's own; ids stay unique."""
    from sparse_training.presets import parse_overrides

    plain = {s.run_id: s.config for s in preset_runs(preset, 2)}
    others = {s.run_id: s.config for s in preset_runs(preset, 2, parse_overrides(["epochs=7"]))}
    specs = preset_runs(preset, 2, parse_overrides(items))
    ids = [s.run_id for s in specs]
    assert len(ids) == len(set(ids))
    for s in specs:
        for existing in (plain, others):
            if s.run_id in existing:  # the same id must mean the same run
                assert existing[s.run_id].identity() == s.config.identity(), (items, s.run_id)
        assert all(d in ids for d in s.depends_on)


def test_set_on_sparsity_renames_the_small_dense_run():
    """small-dense's width follows the sparsity, though its id does not spell the sparsity out."""
    from sparse_training.presets import parse_overrides

    plain = next(s for s in preset_runs("smoke", 1) if s.config.method == "small-dense")
    moved = next(s for s in preset_runs("smoke", 1, parse_overrides(["sparsity=0.8"]))
                 if s.config.method == "small-dense")
    assert moved.run_id != plain.run_id and moved.run_id.startswith(plain.run_id)


def test_suite_refuses_an_out_dir_holding_other_settings(tmp_path, capsys):
    """Before: the complete run of other settings was 'skipped (complete)' as if it were this one."""
    import json

    out = tmp_path / "runs"
    spec = preset_runs("smoke", 1)[0]
    other = json.loads(json.dumps(spec.config.to_dict()))
    other["epochs"] = 99
    (out / spec.run_id).mkdir(parents=True)
    (out / spec.run_id / "config.json").write_text(json.dumps(other))
    before = sorted(p.name for p in out.rglob("*"))
    for extra in (["--dry-run"], []):
        with pytest.raises(SystemExit) as exc:
            main(["--preset", "smoke", "--seeds", "1", "--out", str(out), "--quiet", *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "already holds a run with other settings (epochs)" in err
        assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.parametrize("item", ["nokey", "bogus=1", "epochs=many", "method=dense"])
def test_bad_override_exit_2(item, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "smoke", "--dry-run", "--out", str(tmp_path), "--set", item])
    assert exc.value.code == 2 and "--set" in capsys.readouterr().err


def test_override_the_model_ignores_exit_2_before_writing(capsys, tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "paper-lenet5", "--out", str(out), "--set", "hidden=64"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--hidden applies to the mlp model only" in err and err.count("\n") == 1
    assert not out.exists()


def test_executor_parameters_give_one_task_per_gpu_on_every_node():
    from sparse_training.suite import executor_parameters

    p = executor_parameters(True, 120, slurm_gpus=4, slurm_nodes=2, slurm_partition="gpu", threads=8)
    assert p == {"timeout_min": 120, "nodes": 2, "tasks_per_node": 4, "slurm_gpus_per_node": 4,
                 "cpus_per_task": 8, "slurm_partition": "gpu"}
    assert executor_parameters(True, 60)["tasks_per_node"] == 1  # CPU job: one process
    assert executor_parameters(False, 60, slurm_gpus=2) == {"timeout_min": 60, "nodes": 1, "tasks_per_node": 2}
    with pytest.raises(UserError, match="SLURM"):
        executor_parameters(False, 60, slurm_nodes=2)
    with pytest.raises(UserError):
        executor_parameters(True, 60, slurm_gpus=-1)


def test_launcher_sets_the_executor_parameters(tmp_path, monkeypatch):
    """On a SLURM cluster (faked: no srun here) the suite asks submitit for nodes x GPUs tasks."""
    submitit = pytest.importorskip("submitit")
    from sparse_training import suite

    seen = {}

    class FakeExecutor:
        def __init__(self, folder, cluster=None):
            seen["cluster"] = cluster

        def update_parameters(self, **params):
            seen.update(params)

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    monkeypatch.setattr(suite, "_has_slurm", lambda: True)
    suite.Launcher("submitit", tmp_path, 1, 4, "gpu", 30, slurm_gpus=8, slurm_nodes=3)
    assert seen == {"cluster": None, "timeout_min": 30, "nodes": 3, "tasks_per_node": 8,
                    "slurm_gpus_per_node": 8, "cpus_per_task": 4, "slurm_partition": "gpu"}


def test_submitit_environment_becomes_torch_distributed_environment(monkeypatch):
    submitit = pytest.importorskip("submitit")
    from sparse_training.distributed import env_from_submitit

    class FakeEnv:
        num_tasks, global_rank, local_rank, job_id, hostnames = 8, 5, 1, "4242", ["node17", "node18"]

    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    # a private environment: nothing set here may leak into later tests' processes
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in keys})
    monkeypatch.setattr(submitit, "JobEnvironment", FakeEnv)
    env_from_submitit()
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["MASTER_ADDR"]) == \
        ("8", "5", "1", "node17")
    assert 20000 <= int(os.environ["MASTER_PORT"]) < 40000


def test_submitit_local_two_tasks_train_one_data_parallel_run(tmp_path):
    """Two submitit tasks (the local executor's stand-in for 2 GPUs) form one gloo DDP run."""
    pytest.importorskip("submitit")
    out = tmp_path / "runs"
    specs = [s for s in preset_runs("smoke", 1) if s.config.method == "dense"]
    results = run_suite(specs, out, jobs=1, launcher="submitit", quiet=True, slurm_gpus=2, device="cpu")
    assert (results["state"] == "complete").all(), results
    config = RunDir(out / specs[0].run_id).read_config()
    assert config["world_size"] == 2 and config["backend"] == "gloo"


def test_stability_prune_parent_prunes_within_its_shortened_run():
    """The stability graph shortens a family preset to 1,000 steps: the prune parent must still prune to
    the target (evci-lenet5's window is 3,000-7,000 steps, past the shortened run)."""
    from sparse_training.presets import preset_settings, stability_graph, stability_settings

    for preset in ("paper-lenet5", "evci-lenet5"):
        specs = stability_graph(stability_settings(preset_settings(preset)), 2)
        prune = next(s.config for s in specs if s.config.method == "prune")
        end = prune.prune_end_step if prune.prune_end_step is not None else prune.prune_end * prune.steps
        assert end <= prune.steps, preset
