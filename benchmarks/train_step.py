"""Benchmark: masked-sparse training step time vs dense step time on LeNet-5 (batch 128), measured
side by side in one run, and seconds per epoch on the embedded MNIST; then the trainer's time per
1,000 steps of an ``evci-lenet5`` run (logging and checkpoints included) against a bare PyTorch loop
of the same model, batches, optimizer and masking, measured in the same process (goal <= 1.3x);
and the test pass the trainer makes at every metrics row (LeNet-5 over the test split at batch 250)
with the model's max-pools (``MaxPool2x2``: values only under inference mode on CPU) against the
same model with ``nn.MaxPool2d``, interleaved (goal <= 0.6x on CPU); and a LeNet-5 training step on
MNIST with the fused ReLU + max-pool the trainer uses (``models.fused_relu_pools``) against the plain
modules, interleaved from the same weights, on 1 torch thread (as the suite's workers run; goal <= 0.9)
and on 2, with a check that both end on the same bits (CPU only); the trainer over a steady-state
``evci-lenet5`` window with ``--sparse-kernels`` against the dense convolutions on 1 thread (goal <= 0.75);
and (section ``mlp``) the trainer's step for both networks of a ``tessera-length`` pair against a bare PyTorch
loop of the same model and batches, on 1 thread (goal <= 1.2), and the whole 32-epoch run with its rows.

    python -m benchmarks.train_step [--device cpu|cuda] [--repeats 5] [--steps 50] [--data-dir data]
                                    [--sections lenet5,pools,fused,evci,kernels,mlp]
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


def bare_loop(trainer, start: int, steps: int, sync) -> float:
    """Seconds for steps ``start .. start + steps`` of a plain PyTorch loop: the trainer's model,
    optimizer, batches, learning-rate schedule and masking, without logging, checkpoints or bookkeeping."""
    from sparse_training.trainer import lr_at

    model, masks, opt, cfg = trainer.model, trainer.masks, trainer.optimizer, trainer.cfg
    x, y = trainer.x_train, trainer.y_train
    batches = [trainer.batch_indices(s) for s in range(start, start + steps)]
    model.train()
    sync()
    t0 = time.perf_counter()
    for s, idx in enumerate(batches, start):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, s, trainer.total)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        masks.mask_grads(model)
        opt.step()
        masks.apply(model)
    sync()
    return time.perf_counter() - t0


def trainer_window(trainer, start: int, steps: int, sync) -> tuple[float, int]:
    """Seconds and metrics rows of the trainer's own loop over steps ``start .. start + steps`` (the
    window's end stands in for the run's end: it only shifts the learning rate, not the work)."""
    trainer.step, trainer.total = start, start + steps
    sync()
    t0 = time.perf_counter()
    trainer.fit()
    sync()
    return time.perf_counter() - t0, len(trainer.rows)


def evci_scratch_config(data_dir, method: str = "scratch"):
    """evci-lenet5's ``method`` run (scratch or scratch+) with a random uniform mask (no parent) and a
    note on the data it uses: full MNIST, or the embedded subset where ``data_dir`` lacks it."""
    import dataclasses

    from sparse_training.data import require_full_dataset
    from sparse_training.errors import UserError
    from sparse_training.presets import preset_runs

    cfg = next(s.config for s in preset_runs("evci-lenet5", 1) if s.config.method == method)
    try:
        require_full_dataset("mnist", data_dir)
        note = "full MNIST"
    except UserError:
        cfg = dataclasses.replace(cfg, full_data=False)
        note = "embedded MNIST subset (no full data: run `make data` and pass --data-dir)"
    return dataclasses.replace(cfg, parent=None), note


def evci_overhead(args, device, sync) -> None:
    """Trainer vs bare loop per 1,000 steps of evci-lenet5's scratch run (a random uniform mask), in two
    windows: steps 0-1,000 (with the extra early rows at steps 1, 2, 4, ..., 128) and a steady-state
    window (rows every 200 steps only); the whole-run figure weights them as in an 11,719-step run."""
    import tempfile

    from sparse_training.trainer import setup_run

    cfg, note = evci_scratch_config(args.data_dir)
    run_steps = cfg.steps
    n = args.evci_steps
    windows = {"steps 0-1,000 (early rows)": 0, "steady state (rows every 200)": n}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, start in windows.items():
            def make(rid: str, start: int = start):
                return setup_run(cfg, tmp, run_id=f"{rid}{start}", device=str(device),
                                 data_dir=args.data_dir, quiet=True)

            bare = bare_loop(make("bare-a"), start, n, sync)
            trainer_t, rows = trainer_window(make("trainer"), start, n, sync)
            bare = (bare + bare_loop(make("bare-b"), start, n, sync)) / 2  # before and after
            results[label] = (bare, trainer_t, rows)
    per = 1000 / n
    print(f"\nevci-lenet5 scratch run at batch {cfg.batch_size} on {note}, {n} steps per window; "
          "trainer = logging (test pass + gradient-flow rows), checkpoints and bookkeeping included")
    print(f"{'measure':<48}{'bare s':>8}{'trainer s':>10}{'rows':>6}{'ratio':>8}{'goal':>8}  verdict")
    for label, (bare, trainer_t, rows) in results.items():
        print(f"{label + ', per 1,000 steps':<48}{bare * per:>8.2f}{trainer_t * per:>10.2f}{rows:>6}"
              f"{trainer_t / bare:>8.3f}")
    (b0, t0, _), (b1, t1, _) = results.values()
    later = max(run_steps - n, 0) / n  # an 11,719-step run: one early window, the rest steady state
    ratio = (t0 + later * t1) / (b0 + later * b1)
    print(f"{'whole 11,719-step run (weighted)':<48}{'':>8}{'':>10}{'':>6}{ratio:>8.3f}{'<= 1.3':>8}  "
          f"{'PASS' if ratio <= 1.3 else 'MISS'}")


def time_test_pass_pools(data, device, sync, repeats: int) -> None:
    """Seconds of one trainer test pass with LeNet-5's own pools vs ``nn.MaxPool2d``; same weights."""
    from landscape.evaluate import evaluate
    from sparse_training.models import build_model

    model = build_model("lenet5", input_shape=data.input_shape, num_classes=data.num_classes).to(device)
    ours = model.pool
    test = (data.x_test, data.y_test)
    times: dict[str, list[float]] = {"MaxPool2x2 (ours)": [], "nn.MaxPool2d": []}
    results = {}
    for _ in range(repeats):
        for label, pool in zip(times, (ours, torch.nn.MaxPool2d(2))):
            model.pool = pool
            evaluate(model, test, batch_size=250)  # warm-up
            sync()
            t0 = time.perf_counter()
            results[label] = evaluate(model, test, batch_size=250)
            sync()
            times[label].append(time.perf_counter() - t0)
    model.pool = ours
    a, b = (statistics.median(v) for v in times.values())
    same = results["MaxPool2x2 (ours)"] == results["nn.MaxPool2d"]
    print(f"\ntest pass, LeNet-5 over {len(data.x_test):,} test images at batch 250, median of {repeats}")
    print(f"{'measure':<40}{'value':>12}{'goal':>10}  verdict")
    print(f"{'ours (s)':<40}{a:>12.3f}")
    print(f"{'nn.MaxPool2d (s)':<40}{b:>12.3f}")
    goal = "<= 0.6" if device.type == "cpu" else "(CPU only)"
    verdict = ("PASS" if a / b <= 0.6 else "MISS") if device.type == "cpu" else ""
    print(f"{'ours / nn.MaxPool2d':<40}{a / b:>12.3f}{goal:>10}  {verdict}")
    print(f"{'same loss and accuracy':<40}{str(same):>12}")


def time_sparse_kernels(args, device, sync, rounds: int = 2) -> None:
    """The trainer over a steady-state window of evci-lenet5's scratch+ run (rows every 200 steps, test
    passes included) with ``--sparse-kernels`` and without, on one torch thread as the suite's workers
    run, alternating; and the two windows' last rows (they differ only by float rounding). scratch+,
    not scratch: with a random 95%-uniform mask and glorot init scratch does not leave chance."""
    import dataclasses
    import tempfile

    from sparse_training.trainer import setup_run

    if device.type != "cpu":
        print("\nsparse kernels: CPU only (other devices run the dense convolutions)")
        return
    cfg, note = evci_scratch_config(args.data_dir, "scratch+")
    n, start = args.evci_steps, args.evci_steps
    times: dict[bool, list[float]] = {False: [], True: []}
    ends: dict[bool, dict] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                for on in (False, True):
                    trainer = setup_run(dataclasses.replace(cfg, sparse_kernels=on), tmp, run_id=f"k{int(on)}-{r}",
                                        device="cpu", data_dir=args.data_dir, quiet=True)
                    seconds, _ = trainer_window(trainer, start, n, sync)
                    times[on].append(seconds)
                    ends[on] = trainer.rows[-1]
    finally:
        torch.set_num_threads(before)
    plain, sparse = statistics.median(times[False]), statistics.median(times[True])
    per = 1000 / n
    print(f"\nevci-lenet5 scratch+ run ({cfg.sparsity:.0%} uniform) on {note}, trainer over steps {start:,}-"
          f"{start + n:,} with rows, 1 thread, median of {rounds} alternating rounds")
    print(f"{'measure':<48}{'value':>10}{'goal':>10}  verdict")
    print(f"{'dense convolutions, s per 1,000 steps':<48}{plain * per:>10.2f}")
    print(f"{'--sparse-kernels, s per 1,000 steps':<48}{sparse * per:>10.2f}")
    ratio = sparse / plain
    print(f"{'--sparse-kernels / dense convolutions':<48}{ratio:>10.3f}{'<= 0.75':>10}  "
          f"{'PASS' if ratio <= 0.75 else 'MISS'}")
    for key in ("train_loss", "test_acc", "grad_norm"):
        a, b = ends[False][key], ends[True][key]
        print(f"{f'window end {key}: dense / sparse kernels':<48}{f'{a:.5g} / {b:.5g}':>20}")


def time_fused_pools(data, device, sync, repeats: int, steps: int, batch: int) -> None:
    """Seconds per LeNet-5 training step (masked, momentum SGD, real MNIST batches) inside
    ``fused_relu_pools`` and outside it, interleaved from the same start; the end weights must agree."""
    import contextlib
    import copy

    from sparse_training.models import fused_relu_pools

    if device.type != "cpu":
        print("\nfused ReLU + max-pool: CPU only (other devices run the plain modules)")
        return
    cfg = TrainConfig(method="scratch", sparsity=0.95, batch_size=batch, optimizer="momentum", lr=0.05)
    model, masks, _ = prepare_start(cfg, data.input_shape, data.num_classes)
    runners, models = {}, {}
    for label, block in (("fused", fused_relu_pools), ("plain", contextlib.nullcontext)):
        m = copy.deepcopy(model).train()
        base = step_fn(m, masks, make_optimizer(cfg, m), data.x_train, data.y_train, enforce=True)

        def step(idx, base=base, block=block):
            with block():  # it only changes the forward; the backward and optimizer step run as always
                return base(idx)

        runners[label], models[label] = step, m
    before = torch.get_num_threads()
    ratios = {}
    try:
        for threads in (1, 2):  # 1: as the suite's workers run (one thread each); 2: a lone run's default here
            torch.set_num_threads(threads)
            times = {k: [] for k in runners}
            for _ in range(repeats):
                for k, step in runners.items():
                    times[k].append(time_steps(step, len(data.x_train), batch, steps, device, sync))
            ratios[threads] = (statistics.median(times["fused"]), statistics.median(times["plain"]))
    finally:
        torch.set_num_threads(before)
    same = all(torch.equal(a.view(torch.int32), b.view(torch.int32))
               for a, b in zip(models["fused"].state_dict().values(), models["plain"].state_dict().values()))
    print(f"\nLeNet-5 training step on MNIST, batch {batch}, fused ReLU + max-pool vs plain modules, "
          f"median of {repeats} x {steps} steps")
    print(f"{'measure':<40}{'value':>12}{'goal':>10}  verdict")
    for threads, (fused, plain) in ratios.items():
        print(f"{f'fused (ms), {threads} thread(s)':<40}{fused * 1e3:>12.2f}")
        print(f"{f'plain (ms), {threads} thread(s)':<40}{plain * 1e3:>12.2f}")
        goal, verdict = ("<= 0.9", "PASS" if fused / plain <= 0.9 else "MISS") if threads == 1 else ("", "")
        print(f"{f'fused / plain, {threads} thread(s)':<40}{fused / plain:>12.3f}{goal:>10}  {verdict}")
    print(f"{'same end weights, bit for bit':<40}{str(same):>12}")


def tessera_config(data_dir, network: str, optimizer: str = "momentum"):
    """The tessera-length 32-epoch pair's ``network`` run ('sparse-wide' or 'dense-narrow') at ReLU, no
    regularization, and a note on its data: full Fashion-MNIST, or the embedded MNIST subset where
    ``data_dir`` lacks it (same input shape; the step does the same work)."""
    import dataclasses

    from sparse_training.data import require_full_dataset
    from sparse_training.errors import UserError
    from sparse_training.presets import preset_runs

    cfg = next(s.config for s in preset_runs("tessera-length", 1)
               if s.run_id == f"tlen-{optimizer}-none-relu-d2-w0.25-e32-{network}-seed0")
    try:
        require_full_dataset("fashion-mnist", data_dir)
        return cfg, "full Fashion-MNIST"
    except UserError:
        return dataclasses.replace(cfg, dataset="mnist", full_data=False), "embedded MNIST subset (no full data)"


def tessera_overhead(args, device, sync, rounds: int = 3) -> None:
    """The trainer vs a bare PyTorch loop for both networks of a tessera-length 32-epoch pair, on one torch
    thread as the suite's workers run: a steady-state window (a checkpoint, no metrics row) alternating
    bare / trainer, medians; then the whole run weighted with its 11 metrics rows, each timed."""
    import tempfile

    from sparse_training.trainer import setup_run

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    n, start = args.mlp_steps, 100
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for network in ("sparse-wide", "dense-narrow"):
                cfg, note = tessera_config(args.data_dir, network)
                bare, trainer_t, rows = [], [], []
                for r in range(rounds):
                    def make(rid: str, r: int = r, cfg=cfg, network: str = network):
                        return setup_run(cfg, tmp, run_id=f"{network}-{rid}{r}", device=str(device),
                                         data_dir=args.data_dir, quiet=True)

                    bare.append(bare_loop(make("bare"), start, n, sync))
                    t = make("trainer")
                    total = t.total
                    trainer_t.append(trainer_window(t, start, n, sync)[0])
                    t0 = time.perf_counter()
                    t.log()
                    rows.append(time.perf_counter() - t0)
                results[network] = (statistics.median(bare), statistics.median(trainer_t), statistics.median(rows),
                                    total, cfg)
    finally:
        torch.set_num_threads(before)
    print(f"\ntessera-length pair (momentum, ReLU, 2 hidden layers, sparse width {cfg.hidden}, dense 0.25 x) on "
          f"{note}, batch {cfg.batch_size}, 1 thread, steps {start}-{start + n} (a checkpoint, no row), median of "
          f"{rounds} alternating rounds; whole run = {total:,} steps + 11 rows")
    print(f"{'measure':<48}{'bare ms':>9}{'trainer ms':>11}{'ratio':>8}{'goal':>8}  verdict")
    for network, (bare, trainer_t, row, total, _) in results.items():
        ratio = trainer_t / bare
        print(f"{network + ', per step':<48}{1e3 * bare / n:>9.3f}{1e3 * trainer_t / n:>11.3f}{ratio:>8.3f}"
              f"{'<= 1.2':>8}  {'PASS' if ratio <= 1.2 else 'MISS'}")
        whole = (trainer_t / n * total + 11 * row) / (bare / n * total)
        print(f"{network + ', whole run with its 11 rows':<48}{'':>9}{'':>11}{whole:>8.3f}{'<= 1.2':>8}  "
              f"{'PASS' if whole <= 1.2 else 'MISS'}")
        print(f"{network + ', one metrics row (s)':<48}{row:>9.3f}")


SECTIONS = ("lenet5", "pools", "fused", "evci", "kernels", "mlp")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median reported)")
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--data-dir", default=None, help="data directory with full MNIST (or $SPARSE_DATA)")
    parser.add_argument("--evci-steps", type=int, default=1000, help="steps of the trainer-vs-bare-loop comparison")
    parser.add_argument("--mlp-steps", type=int, default=469,
                        help="steps of the tessera-length pair's trainer-vs-bare-loop window (469: one epoch)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    if sections - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(sections - set(SECTIONS)))}; choose from {', '.join(SECTIONS)}")
    device = select_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if "lenet5" in sections:
        lenet5_step(args, device, sync)
    full = load_dataset("mnist", args.data_dir) if sections & {"pools", "fused"} else None
    if "pools" in sections:
        time_test_pass_pools(full, device, sync, args.repeats)
    if "fused" in sections:
        time_fused_pools(full, device, sync, args.repeats, 2 * args.steps, args.batch_size)
    if "evci" in sections:
        evci_overhead(args, device, sync)
    if "kernels" in sections:
        time_sparse_kernels(args, device, sync)
    if "mlp" in sections:
        tessera_overhead(args, device, sync)
    return 0


def lenet5_step(args, device, sync) -> None:
    """Masked-sparse vs dense LeNet-5 step on the embedded MNIST, interleaved."""
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


if __name__ == "__main__":
    raise SystemExit(main())
