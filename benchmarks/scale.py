"""Benchmark: how costs grow with model size, LeNet-5 -> ResNet-18 -> VGG-16 (CIFAR shapes, synthetic data).

    python -m benchmarks.scale [--device cpu|cuda] [--batch 32] [--examples 32] [--max-iter 30]

For each model it prints the parameter count and the wall time and peak memory of
(1) one masked training step (batch ``--batch``),
(2) the top-10 Lanczos of the Hessian in the active subspace (90% sparse random masks) over
    ``--examples`` inputs, at most ``--max-iter`` products (its iteration count is printed), and
(3) a 29-point interpolation between two points over the same inputs;
then the exponent ``b`` of ``cost ~ parameters^b`` fitted over the models (log-log least squares),
and the step time of 2-process DDP (gloo on CPU, NCCL on GPUs) against 1 process at the same
global batch. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU it is the
growth of the process's resident set during the phase, sampled every 2 ms (memory freed by an
earlier phase is reused, so small values are lower bounds). Synthetic inputs: only timings mean something here.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from benchmarks.train_step import step_fn
from landscape.hessian import HessianOperator
from landscape.interpolate import interpolate
from landscape.lanczos import lanczos
from sparse_training.masks import Masks
from sparse_training.models import build_model, count_parameters

MODELS = ("lenet5", "resnet18", "vgg16")
SHAPE = (3, 32, 32)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured(fn: Callable[[], object], device: torch.device) -> tuple[float, int, object]:
    """(seconds, peak bytes, result) of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) - base, out
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    return seconds, max(peak[0], _rss()) - base, out


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped random inputs and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def bench_model(name: str, args, device: torch.device) -> dict:
    """Time and peak memory of a training step, a top-10 Lanczos and a 29-point interpolation."""
    torch.manual_seed(0)
    model = build_model(name, input_shape=SHAPE, num_classes=10).to(device)
    masks = Masks.random(model, sparsity=0.9, seed=0).to(device)
    masks.apply(model)
    start = copy.deepcopy(model.state_dict())
    x, y = (t.to(device) for t in synthetic(max(args.batch, args.examples), 0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = step_fn(model, masks, opt, x, y, enforce=True)
    idx = torch.arange(args.batch, device=device)
    model.train()
    step(idx)  # warm-up
    steps = [measured(lambda: step(idx), device) for _ in range(3)]
    row = {"model": name, "params": count_parameters(model),
           "step_s": statistics.median(s for s, _, _ in steps), "step_mem": max(m for _, m, _ in steps)}
    end = copy.deepcopy(model.state_dict())
    data = (x[: args.examples], y[: args.examples])
    masks_dict = {n: m for n, m in masks.as_dict().items()}

    def top10():
        op = HessianOperator(model, F.cross_entropy, data, masks_dict, chunk_size=args.examples, device=device)
        res = lanczos(op, k=10, tol=args.tol, max_iter=args.max_iter, seed=0, return_eigenvectors=False)
        return op, res

    row["lanczos_s"], row["lanczos_mem"], (op, res) = measured(top10, device)
    row.update(active=op.size, iterations=res.iterations, converged=int(res.converged.sum()), cache=op.cache_info)
    row["interp_s"], row["interp_mem"], _ = measured(
        lambda: interpolate(model, start, end, data, batch_size=args.examples, device=device), device)
    return row


def _ddp_worker(rank: int, world: int, port: int, name: str, batch: int, steps: int, backend: str, out) -> None:
    """Median time of a DDP training step with this rank's share of the global batch."""
    from sparse_training import distributed as ddp

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(backend)  # world 1 too: the 1-process reference runs the same code
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        info = ddp.DistInfo(rank, world, rank, backend)
        torch.manual_seed(0)
        model = build_model(name, input_shape=SHAPE, num_classes=10).to(device)
        net = ddp.wrap(model, info, device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = (t.to(device) for t in synthetic(batch, 0))
        part = ddp.shard(torch.arange(batch), info).to(device)
        times = []
        for i in range(steps + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            (F.cross_entropy(net(x[part]), y[part], reduction="sum") * (world / batch)).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[rank] = statistics.median(times)
    finally:
        dist.destroy_process_group()


def ddp_step(name: str, world: int, batch: int, steps: int, backend: str) -> float:
    """Median step seconds on ``world`` processes (the slowest rank's median)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(world, port, name, batch, steps, backend, out), nprocs=world, join=True)
    return max(out.values())


def single_step(name: str, batch: int, steps: int, device: torch.device) -> float:
    """Median seconds of a plain (no DDP) training step in this process."""
    torch.manual_seed(0)
    model = build_model(name, input_shape=SHAPE, num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = (t.to(device) for t in synthetic(batch, 0))

    def one_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    times = [measured(one_step, device)[0] for _ in range(steps + 2)]
    return statistics.median(times[2:])


def exponent(params: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(params)."""
    return float(np.polyfit(np.log(params), np.log(values), 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    parser.add_argument("--batch", type=int, default=32, help="training batch (and DDP global batch)")
    parser.add_argument("--examples", type=int, default=32, help="inputs of the Hessian and the interpolation")
    parser.add_argument("--max-iter", type=int, default=30, help="most Lanczos products")
    parser.add_argument("--tol", type=float, default=1e-3, help="Lanczos tolerance")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the 1-process phases")
    parser.add_argument("--ddp-models", default="lenet5", help="models of the DDP comparison ('' for none)")
    parser.add_argument("--ddp-steps", type=int, default=10, help="timed DDP steps")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available.")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, load average {load:.1f}; "
          f"batch {args.batch}, {args.examples} Hessian/interpolation inputs, synthetic CIFAR-shaped data")
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        row = bench_model(name, args, device)
        rows.append(row)
        print(f"  {name}: done ({row['cache']})", flush=True)
    mib = 2**20
    print(f"\n{'model':<9} {'params':>11} {'step s':>8} {'step MiB':>9} {'lanczos s':>10} {'its':>4} {'conv':>5} "
          f"{'lanczos MiB':>12} {'interp s':>9} {'interp MiB':>11}")
    for r in rows:
        print(f"{r['model']:<9} {r['params']:>11,} {r['step_s']:>8.3f} {r['step_mem'] / mib:>9.0f} "
              f"{r['lanczos_s']:>10.2f} {r['iterations']:>4} {r['converged']:>3}/10 {r['lanczos_mem'] / mib:>12.0f} "
              f"{r['interp_s']:>9.2f} {r['interp_mem'] / mib:>11.0f}")
    if len(rows) >= 2:
        params = [r["params"] for r in rows]
        parts = []
        for key, label in (("step_s", "step time"), ("lanczos_s", "Lanczos time"), ("interp_s", "interpolation time"),
                           ("step_mem", "step memory"), ("lanczos_mem", "Lanczos memory"),
                           ("interp_mem", "interpolation memory")):
            values = [max(r[key], 1e-9) for r in rows]
            parts.append(f"{label} ~ params^{exponent(params, values):.2f}")
        print("growth with the parameter count (log-log fit): " + "; ".join(parts))
    backend = "nccl" if device.type == "cuda" else "gloo"
    world = 2
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        print("DDP: fewer than 2 GPUs; skipped")
        return 0
    for name in [m for m in args.ddp_models.split(",") if m]:
        two = ddp_step(name, world, args.batch, args.ddp_steps, backend)
        one = ddp_step(name, 1, args.batch, args.ddp_steps, backend)  # same code, one process, 1 thread
        line = (f"DDP {name}, global batch {args.batch}: {world} processes ({backend}, 1 thread each) "
                f"{two * 1e3:.1f} ms/step; 1 process (1 thread) {one * 1e3:.1f} ms/step: ratio {two / one:.2f}")
        if device.type == "cpu":  # the same two cores used by one process instead
            saved = torch.get_num_threads()
            torch.set_num_threads(world)
            both = single_step(name, args.batch, args.ddp_steps, device)
            torch.set_num_threads(saved)
            line += f"; 1 process ({world} threads) {both * 1e3:.1f} ms/step: ratio {two / both:.2f}"
        print(line)
    if not math.isfinite(load):
        return 0
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
