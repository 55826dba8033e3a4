"""Benchmark: wall time of a preset (default paper-lenet5, 5 seeds) on this machine, and RigL run time
over scratch run time on the same settings, measured side by side in the same suite.

    python -m benchmarks.suite [--preset paper-lenet5] [--seeds 5] [--jobs 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sparse_training.presets import preset_runs
from sparse_training.rundir import RunDir
from sparse_training.suite import run_suite


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-lenet5")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="runs directory (default: a fresh temp dir; must be empty)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-suite-")) / "runs"
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; the benchmark must start from nothing.")
    specs = preset_runs(args.preset, args.seeds)
    t0 = time.perf_counter()
    results = run_suite(specs, out, jobs=args.jobs)
    wall = time.perf_counter() - t0
    seconds: dict[str, list[float]] = {}
    training: dict[str, list[float]] = {}  # run time less the gradient-flow logging (metrics rows)
    for s in specs:
        status = RunDir(out / s.run_id).read_status()
        if status.get("state") == "complete" and "seconds" in status:
            seconds.setdefault(s.config.method, []).append(status["seconds"])
            training.setdefault(s.config.method, []).append(status["seconds"] - status.get("log_seconds", 0.0))
    print(f"\n{args.preset}, {args.seeds} seeds, {len(specs)} runs, {args.jobs} jobs, {os.cpu_count()} cores -> {out}")
    print(f"{'measure':<44}{'value':>10}{'goal':>12}  verdict")
    ok = (results["state"] == "complete").all()
    print(f"{'runs complete':<44}{int((results['state'] == 'complete').sum()):>10}{len(specs):>12}  "
          f"{'PASS' if ok else 'MISS'}")
    print(f"{'suite wall time (min)':<44}{wall / 60:>10.2f}{'< 8':>12}  {'PASS' if wall < 480 else 'MISS'}")
    for method, values in seconds.items():
        print(f"{'  mean run time, ' + method + ' (s)':<44}{statistics.mean(values):>10.1f}")
    if "rigl" in seconds and "scratch" in seconds:
        ratio = statistics.mean(seconds["rigl"]) / statistics.mean(seconds["scratch"])
        print(f"{'rigl / scratch run time':<44}{ratio:>10.3f}{'<= 1.2':>12}  {'PASS' if ratio <= 1.2 else 'MISS'}")
        bare = statistics.mean(training["rigl"]) / statistics.mean(training["scratch"])
        logged = statistics.mean(seconds["rigl"]) - statistics.mean(training["rigl"])
        print(f"{'  the same, less time in metrics rows':<44}{bare:>10.3f}{'(info)':>12}")
        print(f"{'  rigl time in metrics rows (s/run)':<44}{logged:>10.1f}{'(info)':>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
