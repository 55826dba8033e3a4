"""Command line: run a preset's graph of runs in dependency order, J at a time, locally or via SLURM.

It is idempotent (finished runs are skipped), resumes interrupted runs, and when some runs fail it
finishes the others, prints a table of failures with reasons and exits with code 1.

Example::

    python -m sparse_training.suite --preset paper-lenet5 --out runs/ --seeds 5 --jobs 2
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import require_full_dataset
from .errors import UserError, cli_entry
from .presets import PRESETS, RunSpec, parse_overrides, preset_runs
from .rundir import RunDir
from .trainer import check_output_dir, validate

LAUNCHERS = ("local", "submitit")
ESTIMATED = ("tessera-paper",)  # presets whose --dry-run always prints the compute estimate


def config_to_argv(cfg: TrainConfig) -> list[str]:
    """Command-line flags reproducing ``cfg`` (only the fields that differ from the defaults)."""
    argv: list[str] = []
    default = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def run_argv(spec: RunSpec, out: Path, device: str, threads: int, resume: bool,
             data_dir: str | None = None) -> list[str]:
    """Arguments of ``sparse_training.train`` for one run of the suite."""
    cfg = spec.config
    if spec.parent:
        cfg = dataclasses.replace(cfg, parent=str(out / spec.parent))
    argv = config_to_argv(cfg) + ["--out", str(out), "--run-id", spec.run_id, "--quiet",
                                  "--device", device, "--threads", str(threads)]
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    return argv + (["--resume"] if resume else [])


def train_job(argv: list[str], log_path: str | None = None) -> int:
    """Run one training in this process (the worker and submitit job function); returns its exit code.

    With ``log_path`` the run's output is appended to that file.
    """
    import contextlib

    from .train import main

    with contextlib.ExitStack() as stack:
        if log_path is not None:
            log = stack.enter_context(open(log_path, "a"))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        try:
            return int(main(argv) or 0)
        except SystemExit as exc:
            return int(exc.code or 0)
        except Exception as exc:  # recorded in status.json by the trainer; also logged here
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


@dataclass
class Handle:
    """A started run: a future of the local worker pool or a submitit job."""

    spec: RunSpec
    job: object

    def poll(self) -> int | None:
        if not self.job.done():  # type: ignore[attr-defined]
            return None
        try:
            if hasattr(self.job, "results"):  # submitit: one result per task of a data-parallel run
                return max(int(r) for r in self.job.results())  # type: ignore[attr-defined]
            return int(self.job.result())  # type: ignore[attr-defined]
        except Exception:  # a crashed worker or job: its reason is in status.json or the log
            return 1


def executor_parameters(slurm: bool, slurm_time: int, slurm_gpus: int = 0, slurm_nodes: int = 1,
                        slurm_partition: str | None = None, threads: int = 1) -> dict:
    """submitit parameters of one run: ``slurm_nodes`` nodes x ``slurm_gpus`` GPUs, one task per GPU.

    With more than one task the tasks are the processes of one data-parallel run (each finds its
    rank in submitit's job environment, see ``sparse_training.distributed``).
    """
    if slurm_gpus < 0 or slurm_nodes < 1:
        raise UserError("--slurm-gpus must be at least 0 and --slurm-nodes at least 1.")
    tasks = max(1, slurm_gpus)
    params: dict = {"timeout_min": int(slurm_time), "nodes": int(slurm_nodes), "tasks_per_node": tasks}
    if slurm:
        params.update(slurm_gpus_per_node=int(slurm_gpus), cpus_per_task=max(1, int(threads)))
        if slurm_partition:
            params["slurm_partition"] = slurm_partition
    elif slurm_nodes > 1:
        raise UserError("--slurm-nodes above 1 needs a SLURM cluster (sbatch was not found).")
    return params


class Launcher:
    """Starts runs in a pool of worker processes (each imports torch once) or through submitit
    (SLURM, or submitit's local executor where there is no SLURM)."""

    def __init__(self, kind: str, out: Path, jobs: int, threads: int, slurm_partition: str | None,
                 slurm_time: int, slurm_gpus: int, slurm_nodes: int = 1):
        self.kind, self.out = kind, out
        if kind == "submitit":
            import submitit

            cluster = None if _has_slurm() else "local"
            self.executor = submitit.AutoExecutor(folder=str(out / "_submitit" / "%j"), cluster=cluster)
            self.executor.update_parameters(**executor_parameters(
                _has_slurm(), slurm_time, slurm_gpus, slurm_nodes, slurm_partition, threads))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(threads,))

    def start(self, spec: RunSpec, argv: list[str]) -> Handle:
        if self.kind == "submitit":
            return Handle(spec, self.executor.submit(train_job, argv))
        logs = self.out / "_logs"
        logs.mkdir(parents=True, exist_ok=True)
        return Handle(spec, self.executor.submit(train_job, argv, str(logs / f"{spec.run_id}.log")))

    def close(self) -> None:
        if self.kind == "local":
            self.executor.shutdown(wait=False, cancel_futures=True)


def _has_slurm() -> bool:
    from shutil import which

    return which("sbatch") is not None and "SLURM_DISABLED" not in os.environ


def failure_reason(out: Path, run_id: str, code: int) -> str:
    """Why a run failed: status.json's reason, else the last line of its log, else its exit code."""
    status = RunDir(out / run_id).read_status()
    if status.get("reason"):
        return str(status["reason"])
    log = out / "_logs" / f"{run_id}.log"
    if log.is_file():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:200]
    return f"exit code {code}"


def check_existing_runs(specs: list[RunSpec], out: Path) -> None:
    """Refuse specs whose run directory under ``out`` already holds a run of other settings.

    Without this a complete run of other settings would be skipped as if it were this one.
    """
    for s in specs:
        run = RunDir(out / s.run_id)
        if not run.exists():
            continue
        try:
            saved = TrainConfig.from_dict(run.read_config()).identity()
        except (UserError, TypeError):
            raise UserError(f"{run.path} exists but holds no readable run config; move it away or use another --out.") from None
        mine = s.config.identity()
        saved.pop("parent", None)
        mine.pop("parent", None)
        if saved != mine:
            diff = sorted(k for k in mine if saved.get(k) != mine[k])
            raise UserError(f"{run.path} already holds a run with other settings ({', '.join(diff[:4])}); "
                            "use another --out, or other --set values.")


def run_suite(specs: list[RunSpec], out: str | Path, jobs: int = 2, launcher: str = "local",
              device: str = "cpu", threads: int = 1, quiet: bool = False, slurm_partition: str | None = None,
              slurm_time: int = 60, slurm_gpus: int = 0, data_dir: str | None = None,
              slurm_nodes: int = 1) -> pd.DataFrame:
    """Run ``specs`` in dependency order, ``jobs`` at a time; returns one row per run (run_id, state, reason)."""
    out = Path(out)
    for s in specs:  # a bad setting (e.g. from --set) fails here, in one sentence, before anything is written
        validate(s.config)
    for dataset in sorted({s.config.dataset for s in specs if s.config.full_data}):
        require_full_dataset(dataset, data_dir)  # the faithful presets never fall back to a subset
    check_output_dir(out)
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher '{launcher}'; choose one of {', '.join(LAUNCHERS)}.")
    if jobs < 1:
        raise UserError("--jobs must be at least 1.")
    check_existing_runs(specs, out)
    ids = {s.run_id for s in specs}
    for s in specs:
        missing = [d for d in s.depends_on if d not in ids]
        if missing:
            raise UserError(f"run {s.run_id} depends on {missing}, which the preset does not define.")
    launch = Launcher(launcher, out, jobs, threads, slurm_partition, slurm_time, slurm_gpus, slurm_nodes)
    results: dict[str, tuple[str, str]] = {}
    pending = []
    for s in specs:
        if RunDir(out / s.run_id).is_complete():
            results[s.run_id] = ("skipped (complete)", "")
        else:
            pending.append(s)
    running: list[Handle] = []
    bar = tqdm(total=len(specs), initial=len(results), disable=quiet, desc="suite", unit="run",
               dynamic_ncols=True, file=sys.stderr)
    postfix = ""
    try:
        while pending or running:
            for s in list(pending):
                bad = [d for d in s.depends_on if d in results and results[d][0] == "failed"]
                if bad:
                    results[s.run_id] = ("failed", f"parent {bad[0]} failed")
                    pending.remove(s)
                    bar.update(1)
            for s in list(pending):
                if len(running) >= jobs:
                    break
                if all(d in results and results[d][0] != "failed" for d in s.depends_on):
                    resume = RunDir(out / s.run_id).exists()
                    running.append(launch.start(s, run_argv(s, out, device, threads, resume, data_dir)))
                    pending.remove(s)
            names = ", ".join(h.spec.run_id for h in running)[:80]
            if names != postfix:
                postfix = names
                bar.set_postfix_str(names)
            for h in list(running):
                code = h.poll()
                if code is None:
                    continue
                running.remove(h)
                ok = code == 0 and RunDir(out / h.spec.run_id).is_complete()
                results[h.spec.run_id] = ("complete", "") if ok else \
                    ("failed", failure_reason(out, h.spec.run_id, code))
                bar.update(1)
            if running:
                time.sleep(0.2)
    finally:  # on interruption the runs' checkpoints let the next call resume them
        launch.close()
        bar.close()
    return pd.DataFrame([{"run_id": s.run_id, "state": results[s.run_id][0], "reason": results[s.run_id][1]}
                         for s in specs])


def accuracy_table(out: str | Path, specs: list[RunSpec]) -> pd.DataFrame:
    """Final test accuracy per method: mean, std and count over the preset's complete runs."""
    rows = []
    for s in specs:
        run = RunDir(Path(out) / s.run_id)
        if run.is_complete():
            m = run.read_metrics()
            rows.append({"method": s.config.method, "seed": s.config.seed, "test_acc": float(m["test_acc"].iloc[-1])})
    frame = pd.DataFrame(rows, columns=["method", "seed", "test_acc"])
    order = {m: i for i, m in enumerate(dict.fromkeys(s.config.method for s in specs))}
    table = frame.groupby("method")["test_acc"].agg(["mean", "std", "count"]).reset_index()
    return table.sort_values("method", key=lambda c: c.map(order)).reset_index(drop=True)


def run_seconds(out: str | Path, specs: list[RunSpec]) -> pd.DataFrame:
    """Per complete run of ``specs``: method, seed, ``seconds`` (the run's own wall time, from status.json)
    and ``log_seconds`` (the part spent measuring metrics rows)."""
    rows = []
    for s in specs:
        run = RunDir(Path(out) / s.run_id)
        if run.is_complete():
            st = run.read_status()
            rows.append({"run_id": s.run_id, "method": s.config.method, "seed": s.config.seed,
                         "seconds": float(st.get("seconds") or 0.0), "log_seconds": float(st.get("log_seconds") or 0.0)})
    return pd.DataFrame(rows, columns=["run_id", "method", "seed", "seconds", "log_seconds"])


def suite_seconds_line(out: str | Path, specs: list[RunSpec], wall: float | None = None) -> str:
    """The suite's summed run-seconds (and per method), the figure to compare hosts and versions by."""
    t = run_seconds(out, specs)
    if t.empty:
        return "no complete run to sum the run-seconds of"
    per = t.groupby("method", sort=False)["seconds"].agg(["min", "max"])
    spans = ", ".join(f"{m} {lo:.3g}-{hi:.3g}" for m, (lo, hi) in per.iterrows())
    head = f"summed run-seconds: {t['seconds'].sum():.0f} over {len(t)} runs (metrics rows {t['log_seconds'].sum():.0f})"
    return head + (f"; suite wall {wall:.0f} s" if wall is not None else "") + f"\nper run (s): {spans}"


def format_accuracy_table(table: pd.DataFrame) -> str:
    """The :func:`accuracy_table` as printed lines (percent, mean ± std, run count)."""
    lines = ["\nfinal test accuracy by method (mean ± std over seeds):"]
    for _, r in table.iterrows():
        std = 0.0 if pd.isna(r["std"]) else r["std"]
        lines.append(f"  {r['method']:<12} {100 * r['mean']:6.2f} ± {100 * std:4.2f} %  (n={int(r['count'])})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    presets = "; ".join(f"{k}: {v[0]}" for k, v in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m sparse_training.suite",
        description=f"Run a preset's graph of runs in dependency order. Presets — {presets}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", required=True, help="preset name: " + ", ".join(PRESETS))
    parser.add_argument("--out", default="runs", help="runs directory")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--launcher", default="local", choices=LAUNCHERS,
                        help="local processes, or submitit (SLURM; its local executor where there is no SLURM)")
    parser.add_argument("--device", default="cpu", help="device of each run: cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--slurm-partition", default=None, help="SLURM partition")
    parser.add_argument("--slurm-time", type=int, default=60, help="SLURM time limit per run, minutes")
    parser.add_argument("--slurm-gpus", type=int, default=0,
                        help="GPUs per node of each run; above 1 the run is data-parallel, one process per GPU")
    parser.add_argument("--slurm-nodes", type=int, default=1,
                        help="nodes per run (data-parallel over nodes x GPUs processes)")
    parser.add_argument("--data-dir", default=None, help="directory with full-size datasets (or $SPARSE_DATA)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="change a training setting of every run, e.g. --set dataset=fashion-mnist "
                             "--set epochs=30 (repeatable; run ids follow the settings)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their count, and exit")
    parser.add_argument("--estimate", action="store_true",
                        help="with --dry-run: estimate the compute from one step per architecture timed on --device "
                             f"(always on for {', '.join(ESTIMATED)})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    specs = preset_runs(args.preset, args.seeds, parse_overrides(args.set))
    if args.dry_run:  # run_suite validates the specs itself; a dry run must refuse a bad --set too
        for s in specs:
            validate(s.config)
        check_existing_runs(specs, Path(args.out))
        listed = specs if len(specs) <= 1000 else specs[:5]
        for s in listed:
            print(s.run_id + (f"  <- {s.parent}" if s.parent else ""))
        if len(listed) < len(specs):
            print(f"... ({len(specs) - len(listed):,} more)")
        print(f"{args.preset}: {len(specs):,} runs")
        if args.estimate or args.preset in ESTIMATED:
            from .estimate import estimate, summary
            from .trainer import select_device

            _init_worker(args.threads)
            device = select_device(args.device)
            print(summary(estimate([s.config for s in specs], device, progress=not args.quiet), device))
        return 0
    t0 = time.time()
    results = run_suite(specs, args.out, args.jobs, args.launcher, args.device, args.threads, args.quiet,
                        args.slurm_partition, args.slurm_time, args.slurm_gpus, args.data_dir, args.slurm_nodes)
    done = (results["state"] != "failed").sum()
    print(f"{args.preset}: {done}/{len(specs)} runs complete in {time.time() - t0:.0f} s -> {args.out}")
    table = accuracy_table(args.out, specs)
    if len(table):
        print(format_accuracy_table(table))
        print(suite_seconds_line(args.out, specs))
    failed = results[results["state"] == "failed"]
    if len(failed):
        print(f"\n{len(failed)} run(s) failed:", file=sys.stderr)
        print(failed[["run_id", "reason"]].to_string(index=False), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
