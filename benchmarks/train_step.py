"""Benchmark: masked-sparse training step time vs dense step time on LeNet-5 (batch 128), measured
side by side in one run, and seconds per epoch on the embedded MNIST.

    python -m benchmarks.train_step [--device cpu|cuda] [--repeats 5] [--steps 50]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from sparse_training.config import TrainConfig
from sparse_training.data import load_dataset
from sparse_training.methods import prepare_start
from sparse_training.trainer import make_optimizer, select_device


def step_fn(model, masks, optimizer, x, y, enforce: bool):
    """One training step exactly as the trainer does it (mask grads before, weights after)."""

    def step(idx):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        if enforce:
            masks.mask_grads(model)
        optimizer.step()
        if enforce:
            masks.apply(model)
        return loss

    return step


def time_steps(step, n: int, batch: int, steps: int, device, sync) -> float:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, n, (batch,), generator=g).to(device) for _ in range(steps)]
    for idx in batches[:5]:  # warm-up
        step(idx)
    sync()
    t0 = time.perf_counter()
    for idx in batches:
        step(idx)
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median reported)")
    parser.add_argument("--sparsity", type=float, default=0.95)
    args = parser.parse_args(argv)
    device = select_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = load_dataset("mnist")
    x, y = data.x_train.to(device), data.y_train.to(device)
    runners = {}
    for method in ("dense", "scratch"):
        cfg = TrainConfig(method=method, sparsity=args.sparsity, batch_size=args.batch_size)
        model, masks, _ = prepare_start(cfg, data.input_shape, data.num_classes)
        model.to(device).train()
        masks.to(device)
        opt = make_optimizer(cfg, model)
        runners[method] = step_fn(model, masks, opt, x, y, enforce=method != "dense")
    times = {m: [] for m in runners}
    for _ in range(args.repeats):  # interleave so drift hits both alike
        for m, step in runners.items():
            times[m].append(time_steps(step, len(x), args.batch_size, args.steps, device, sync))
    dense, sparse = statistics.median(times["dense"]), statistics.median(times["scratch"])
    epoch_steps = math.ceil(len(x) / args.batch_size)
    print(f"LeNet-5, batch {args.batch_size}, {args.sparsity:.0%} sparse, device {device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats} x {args.steps} steps")
    print(f"{'measure':<40}{'value':>12}{'goal':>10}  verdict")
    ratio = sparse / dense
    print(f"{'dense step (ms)':<40}{dense * 1e3:>12.2f}")
    print(f"{'masked-sparse step (ms)':<40}{sparse * 1e3:>12.2f}")
    print(f"{'sparse / dense step time':<40}{ratio:>12.3f}{'<= 1.15':>10}  {'PASS' if ratio <= 1.15 else 'MISS'}")
    print(f"{'s per epoch, dense (4,000 images)':<40}{dense * epoch_steps:>12.2f}")
    print(f"{'s per epoch, sparse (4,000 images)':<40}{sparse * epoch_steps:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
