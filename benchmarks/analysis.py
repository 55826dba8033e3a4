"""Benchmark of the streamed distance matrix against holding every vector at once; ``python -m benchmarks.analysis``.

Writes N synthetic LeNet-5 checkpoints (random weights, the toolkit's checkpoint format) into a
temporary directory, then, in a fresh subprocess per variant and N:

- ``streamed``: :func:`analysis.distances.distance_matrix` (blocks of ``--block`` vectors);
- ``all-at-once``: every vector loaded, stacked into one N x P float64 matrix, ``torch.cdist``;

and on the largest N also the MDS map of the streamed matrix. Peak memory is the rise of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` after imports and
a warm-up) over its resident set before the work, so torch's CPU allocations, invisible to
tracemalloc, are counted. Prints a table with the ratios; the streamed peak should stay flat in N
(beyond the N x N matrix) while the all-at-once peak grows with N x P.
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
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Make the checkpoints, time both variants at every size and print the table."""
    args = build_parser().parse_args(argv)
    if args.worker:
        paths = [Path(p) for p in Path(args.paths).read_text().splitlines()]
        print(json.dumps(worker(args.worker, paths, args.block, Path(args.result))))
        return 0
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
