"""Benchmarks: streamed distances vs all vectors at once, alignment vs interpolation; ``python -m benchmarks.analysis``.

Writes N synthetic LeNet-5 checkpoints (random weights, the toolkit's checkpoint format) into a
temporary directory, then, in a fresh subprocess per variant and N:

- ``streamed``: :func:`analysis.distances.distance_matrix` (blocks of ``--block`` vectors);
- ``all-at-once``: every vector loaded, stacked into one N x P float64 matrix, ``torch.cdist``;

and on the largest N also the MDS map of the streamed matrix. Peak memory is the rise of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` after imports and
a warm-up) over its resident set before the work, so torch's CPU allocations, invisible to
tracemalloc, are counted. Prints a table with the ratios; the streamed peak should stay flat in N
(beyond the N x N matrix) while the all-at-once peak grows with N x P.

Alignment (``--sections align``): two sparse LeNet-5 networks (random weights under random 95% masks,
or the ends of a scratch run and its pruning solution from ``--align-runs``), on the first 1,000
training images of MNIST, side by side in one process: what ``analysis.align`` does per pair (weight
matching, permuting weights and mask, loss and error along the 29-point line before and after, both
barrier definitions) against the unaligned 29-point interpolation alone (``landscape.interpolate``).
The two lines share their endpoints, so the work is 56 evaluations of the network against 29, plus
the matching. Prints the medians and their ratio; the goal is at most 2x.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = ("streamed", "all-at-once")
SECTIONS = ("distances", "align")
ALIGN_GOAL = 2.0  # align + both barriers may take at most this many times the unaligned interpolation


def make_checkpoints(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` LeNet-5 checkpoints with random (N(0, 0.05^2)) weights, saved as the trainer saves them."""
    from sparse_training.io import atomic_torch_save
    from sparse_training.models import build_model

    model = build_model("lenet5")
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        state = {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
        path = directory / f"ckpt{i:04d}.pt"
        atomic_torch_save(path, {"model": state, "masks": {}, "step": 0, "epoch": 0})
        paths.append(path)
    return paths


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def all_at_once(paths: list[Path]) -> np.ndarray:
    """The baseline: every vector in memory, one N x P matrix, ``torch.cdist``."""
    from analysis.distances import VectorLoader

    load = VectorLoader()
    matrix = torch.stack([load(p) for p in paths])
    return torch.cdist(matrix, matrix).numpy()


def worker(variant: str, paths: list[Path], block: int, out: Path) -> dict:
    """Run one variant in this (fresh) process and measure its wall time and peak memory rise."""
    from analysis.distances import VectorLoader, distance_matrix

    VectorLoader()(paths[0])  # warm-up: lazy imports and allocator pools are not the method's cost
    torch.cdist(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    exact = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    dist = distance_matrix(paths, block=block)[1] if variant == "streamed" else all_at_once(paths)
    wall = time.perf_counter() - start
    peak = _status_kib("VmHWM") - before
    np.save(out, dist)
    return {"variant": variant, "n": len(paths), "wall_s": wall, "peak_mib": peak / 1024, "exact_peak": exact}


def run_variant(variant: str, paths: list[Path], block: int, workdir: Path) -> dict:
    """Run ``worker`` in a fresh interpreter (so peaks of earlier variants do not count)."""
    out = workdir / f"{variant}-{len(paths)}.npy"
    listing = workdir / f"paths-{len(paths)}.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    cmd = [sys.executable, "-m", "benchmarks.analysis", "--worker", variant, "--paths", str(listing),
           "--block", str(block), "--result", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} worker failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["matrix"] = out
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.analysis``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.analysis", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="25,50,100", help="numbers of checkpoints, comma-separated")
    parser.add_argument("--block", type=int, default=8, help="block size of the streamed variant")
    parser.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temp dir)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"which benchmarks to run, comma-separated ({', '.join(SECTIONS)})")
    parser.add_argument("--align-runs", default=None, metavar="RUNS",
                        help="align a scratch run's end to its pruning solution from this LeNet-5 runs directory "
                             "(default: two random sparse LeNet-5 networks)")
    parser.add_argument("--align-repeats", type=int, default=5, help="timed repeats of each alignment variant")
    parser.add_argument("--align-threads", type=int, default=1,
                        help="torch threads of the alignment section (0: torch's default); one thread keeps the "
                             "timings steady on a shared machine")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections (distances: make the checkpoints, time both variants at every size; align)."""
    args = build_parser().parse_args(argv)
    if args.worker:
        paths = [Path(p) for p in Path(args.paths).read_text().splitlines()]
        print(json.dumps(worker(args.worker, paths, args.block, Path(args.result))))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"error: unknown section {unknown[0]}; choose from {', '.join(SECTIONS)}.", file=sys.stderr)
        return 2
    if "distances" in sections:
        benchmark_distances(args)
    if "align" in sections:
        if "distances" in sections:
            print()
        if args.align_threads > 0:
            torch.set_num_threads(args.align_threads)
        benchmark_align(args.align_runs, args.align_repeats)
    return 0


def benchmark_distances(args: argparse.Namespace) -> None:
    """Streamed distances against all-at-once at every size, and the MDS of the largest matrix."""
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        workdir = Path(tmp)
        paths = make_checkpoints(workdir, max(sizes))
        params = sum(t.numel() for t in torch.load(paths[0], weights_only=True)["model"].values())
        print(f"{max(sizes)} LeNet-5 checkpoints, {params:,} parameters each "
              f"({params * 8 / 2**20:.2f} MiB as float64); streamed block = {args.block}")
        rows = []
        for n in sizes:
            res = {v: run_variant(v, paths[:n], args.block, workdir) for v in VARIANTS}
            diff = float(np.abs(np.load(res["streamed"]["matrix"]) - np.load(res["all-at-once"]["matrix"])).max())
            rows.append((n, res["streamed"], res["all-at-once"], diff))
        if not all(r[1]["exact_peak"] for r in rows):
            print("note: /proc/self/clear_refs unavailable; peaks include the warm-up")
        print()
        header = (f"{'N':>4} | {'streamed s':>10} | {'all-at-once s':>13} | {'time ratio':>10} | "
                  f"{'streamed MiB':>12} | {'all-at-once MiB':>15} | {'memory ratio':>12} | {'N x N MiB':>9} | "
                  f"{'max |diff|':>10}")
        print(header)
        print("-" * len(header))
        for n, s, a, diff in rows:
            print(f"{n:>4} | {s['wall_s']:>10.2f} | {a['wall_s']:>13.2f} | {s['wall_s'] / a['wall_s']:>9.1f}x | "
                  f"{s['peak_mib']:>12.1f} | {a['peak_mib']:>15.1f} | "
                  f"{a['peak_mib'] / max(s['peak_mib'], 1e-9):>11.1f}x | {n * n * 8 / 2**20:>9.2f} | {diff:>10.2e}")
        print("\ntime ratio = streamed / all-at-once; memory ratio = all-at-once / streamed (peak rise over the "
              "resident set before the work).")
        from analysis.mds import embed

        start = time.perf_counter()
        emb = embed(np.load(rows[-1][1]["matrix"]))
        print(f"metric MDS of the {rows[-1][0]} x {rows[-1][0]} matrix: {time.perf_counter() - start:.2f} s, "
              f"Stress-1 {emb.normalized_stress:.3f} (random points: a poor 2-D fit is expected)")


# --- alignment: weight matching and both barriers against the interpolation alone --------------------------
def sparse_lenet5(seed: int, density: float = 0.05) -> dict:
    """A LeNet-5 checkpoint (``{"model", "masks"}``): default-init weights under a random mask of ``density``
    per weight matrix or kernel, zero off it."""
    from sparse_training.models import build_model

    torch.manual_seed(seed)
    model = build_model("lenet5")
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                keep = torch.zeros(p.numel(), dtype=torch.bool)
                keep[torch.randperm(p.numel(), generator=gen)[: max(1, round(density * p.numel()))]] = True
                masks[name] = keep.view(p.shape)
                p.mul_(masks[name])
    return {"model": model.state_dict(), "masks": masks}


def align_inputs(runs: str | None):
    """``(model, reference, run, label)``: a scratch run's end and its pruning solution's from ``runs``, or two
    random sparse LeNet-5 networks."""
    from analysis.align import find_pairs
    from analysis.runs import select_runs
    from sparse_training.models import build_model

    if runs is None:
        return build_model("lenet5"), sparse_lenet5(0), sparse_lenet5(1), "two random 95%-sparse LeNet-5 networks"
    pool = select_runs(runs, warn=False)
    pair = find_pairs([r for r in pool if r.method == "scratch"], pool)[0]
    label = f"{pair.run.run_id} -> {pair.reference.run_id}"
    return pair.reference.build(), pair.reference.checkpoint("end"), pair.run.checkpoint("end"), label


def benchmark_align(runs: str | None = None, repeats: int = 5, examples: int = 1000) -> dict:
    """Time analysis.align's work on one pair against the unaligned interpolation alone; print the ratio."""
    from analysis.align import align_checkpoints, parameter_entries, spec_for
    from analysis.interpolate import alpha_grid, split_data
    from landscape.align import weight_matching
    from landscape.interpolate import interpolate
    from sparse_training.data import load_dataset

    model, reference, run, label = align_inputs(runs)
    spec = spec_for(model)
    data = split_data(load_dataset("mnist"), "train", examples)
    alphas = alpha_grid()

    def interpolation() -> None:
        interpolate(model, run["model"], reference["model"], data, alphas=alphas)

    def matching() -> None:
        weight_matching(spec, parameter_entries(reference["model"]), parameter_entries(run["model"]),
                        reference["masks"], run["masks"])

    def aligned() -> None:
        align_checkpoints(model, spec, reference, run, data, alphas)

    variants = {"interpolation": interpolation, "matching": matching, "align": aligned}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: lazy imports, allocator pools, the dataset
        fn()
    for _ in range(repeats):  # interleaved, so a slow spell of the machine hits every variant
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: float(np.median(t)) for name, t in times.items()}
    ratio = med["align"] / med["interpolation"]
    print(f"alignment: {label}; {len(data[0]):,} MNIST training images, {len(alphas)} alphas, "
          f"{torch.get_num_threads()} torch threads; median of {repeats}")
    print(f"  unaligned interpolation alone               {med['interpolation']:8.3f} s")
    print(f"  weight matching (part of the next line)     {med['matching']:8.3f} s")
    print(f"  align + both barriers, aligned + unaligned  {med['align']:8.3f} s")
    print(f"  ratio {ratio:.2f}x (goal: at most {ALIGN_GOAL:g}x: {'met' if ratio <= ALIGN_GOAL else 'not met'})")
    return {**med, "ratio": ratio}


if __name__ == "__main__":
    sys.exit(main())
