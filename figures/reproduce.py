"""The main job (``make reproduce``): the paper-lenet5 suite, the stability suite, every analysis, the figures and REPORT.md.

    python -m figures.reproduce --out runs --seeds 5 --jobs 2
    python -m figures.reproduce --preset evci-lenet5 --out runs-evci --data-dir data --fetch --no-docs

The second line is ``make reproduce-paper``: Evci et al.'s own protocol on full MNIST; ``--fetch``
first fetches and verifies the full datasets the preset needs when the data directory lacks them.

The ``stability`` preset's runs (Frankle et al. 2020's rewinding experiment, 22 short runs; for
another family preset the same graph with that preset's model and data) go to ``<out>/_stability``. Then every
analysis, the paper's and those beyond it (``figures.beyond``: plane, curves, stability, per-layer Hessian
spectra), runs into ``<out>/_analysis``, ``--jobs`` at a time in worker processes, longest first.

Running it again reuses finished runs and analyses and takes seconds. The PNGs are also copied to
``docs/`` (for the README) unless ``--no-docs``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from analysis.runs import select_runs
from sparse_training.errors import UserError, cli_entry
from sparse_training.presets import (
    parse_overrides,
    preset_runs,
    preset_settings,
    stability_graph,
    stability_settings,
)
from sparse_training.suite import accuracy_table, format_accuracy_table, run_suite, suite_seconds_line

from . import beyond, paper

DOCS = Path(__file__).resolve().parents[1] / "docs"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m figures.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper-lenet5", help="suite preset")
    p.add_argument("--out", default="runs", help="runs directory")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default: the preset's: 5, or 10 for evci-*)")
    p.add_argument("--jobs", type=int, default=2, help="runs (and then analyses) at a time")
    p.add_argument("--device", default="cpu", help="device of each run")
    p.add_argument("--data-dir", default=None, help="directory with full-size datasets (or $SPARSE_DATA)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="change a training setting of every run (see sparse_training.suite --help)")
    p.add_argument("--fetch", action="store_true",
                   help="fetch the full datasets the preset needs into --data-dir when they are missing")
    p.add_argument("--interp-examples", type=int, default=1000, help="training examples per interpolation point")
    p.add_argument("--hessian-examples", type=int, default=None,
                   help="training examples for Hessian eigenvalues (default: 2,000 on full data, else 1,000)")
    p.add_argument("--hessian-updates", type=int, default=40,
                   help="RigL/RigL+ mask updates to take eigenvalues around, spread over every seed's runs")
    p.add_argument("--hessian-check-updates", type=int, default=6,
                   help="of those, how many to take again on 4x the examples (0: none)")
    p.add_argument("--no-docs", action="store_true", help="do not copy the PNGs to docs/")
    return p


def ensure_data(specs, data_dir: str | None, fetch: bool) -> None:
    """Fetch (with ``fetch``) the full datasets that runs marked ``full_data`` need and the data dir lacks."""
    from sparse_training.data import require_full_dataset
    from sparse_training.fetch import FETCHABLE, fetch_dataset

    for dataset in sorted({s.config.dataset for s in specs if s.config.full_data}):
        try:
            require_full_dataset(dataset, data_dir)
        except UserError:
            if not fetch or dataset not in FETCHABLE or not data_dir:
                raise
            print(f"[0/4] {dataset} is missing from {data_dir}; fetching it", flush=True)
            fetch_dataset(dataset, data_dir)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    specs = preset_runs(args.preset, args.seeds, parse_overrides(args.set))
    ensure_data(specs, args.data_dir, args.fetch)
    print(f"[1/4] {args.preset} suite: {len(specs)} runs, {args.jobs} at a time -> {args.out}/", flush=True)
    t_suite = time.perf_counter()
    results = run_suite(specs, args.out, jobs=args.jobs, device=args.device, data_dir=args.data_dir)
    failed = results[results["state"] == "failed"]
    table = accuracy_table(args.out, specs)
    print(format_accuracy_table(table))
    print(suite_seconds_line(args.out, specs, time.perf_counter() - t_suite), flush=True)
    if len(failed):
        print(f"\n{len(failed)} run(s) failed:\n{failed[['run_id', 'reason']].to_string(index=False)}", file=sys.stderr)
        return 1
    # the stability experiment with the preset's own model and data (for paper-lenet5: the stability preset)
    settings = preset_settings(args.preset)
    stab_dir = Path(args.out) / beyond.STABILITY_DIR
    t1 = time.perf_counter()
    steps = beyond.steps()
    if settings:
        stab = stability_graph(stability_settings({**settings, **parse_overrides(args.set)}), 2)
        print(f"\n[2/4] stability suite: {len(stab)} runs -> {stab_dir}/", flush=True)
        stab_results = run_suite(stab, stab_dir, jobs=args.jobs, device=args.device, data_dir=args.data_dir)
        if (stab_results["state"] == "failed").any():
            print(f"stability run(s) failed: see {stab_dir / '_logs'}", file=sys.stderr)
            return 1
    else:
        print(f"\n[2/4] preset {args.preset} has no family settings: no stability runs", flush=True)
        steps = tuple(s for s in steps if s.name != "stability")
    paper_argv = [args.out, "--interp-examples", str(args.interp_examples), "--hessian-updates", str(args.hessian_updates),
                  "--hessian-check-updates", str(args.hessian_check_updates)]
    paper_argv += ["--data-dir", args.data_dir] if args.data_dir else []
    paper_argv += ["--hessian-examples", str(args.hessian_examples)] if args.hessian_examples else []
    print(f"\n[3/4] every analysis, the paper's and those beyond it, {args.jobs} at a time "
          f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
    analysis_args = paper.analysis_args(paper.build_parser().parse_args(paper_argv),
                                        select_runs(Path(args.out), warn=False))
    paper.run_missing_analyses(Path(args.out), Path(args.out) / "_analysis", analysis_args, steps + paper.STEPS,
                               jobs=args.jobs)
    print(f"[figures.reproduce] stability suite and analyses took {time.perf_counter() - t1:.0f} s", flush=True)
    print(f"\n[4/4] the paper's figures, tables and REPORT.md ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    code = paper.main(paper_argv)
    if code:
        return code
    figures = Path(args.out) / "_figures"
    if not args.no_docs:
        DOCS.mkdir(exist_ok=True)  # the README's figures
        for png in figures.glob("*.png"):
            shutil.copyfile(png, DOCS / png.name)
        for table in figures.glob("*.md"):  # REPORT.md and every table it links to
            shutil.copyfile(table, DOCS / table.name)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Report: {figures / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
