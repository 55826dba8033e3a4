"""Benchmark of landscape's Hessian and interpolation costs against PyHessian and hessian-eigenthings.

Run ``python -m benchmarks.hessian [--device cuda] [--quick] [--seed 0] [--threads N]``.
On LeNet-5 at 95% sparsity (uniform random masks) over the 4,000 embedded MNIST training
images it measures, side by side in one run:

(a) one full-data Hessian-vector product / one full-data gradient (goal <= 2.5);
(b) top-10 eigenvalues to 1e-4 relative residual: HVP count and wall time of our Lanczos
    against PyHessian's power iteration and hessian-eigenthings' Lanczos (goals: >= 5x fewer
    HVPs than power iteration, <= 0.5x the wall time of the faster peer), and the time of one
    HVP in the active subspace / one on the full operator (goal <= 1.0);
(c) a 29-point interpolation curve / 29 bare forward passes over the same data (goal <= 1.2).

The peers know no masks: they get the same model with the masked weights at zero and compute
the Hessian over all parameters. Our Lanczos is timed twice: on that same full operator
(the like-for-like comparison) and on the 95%-sparse active subspace (what the toolkit does).
Our two runs and hessian-eigenthings' run are repeated in turn and their medians compared: one
run alone is not a measure on CPU, where a product's time varies up to 2x with how many pages
glibc's allocator gave back to the OS and must fault in again (the minor page faults printed).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landscape.evaluate import evaluate, materialize_batches
from landscape.hessian import HessianOperator
from landscape.interpolate import default_alphas, interpolate
from landscape.lanczos import lanczos
from landscape.params import ParamSpace
from sparse_training.data import load_dataset
from sparse_training.init import initialize
from sparse_training.masks import Masks
from sparse_training.models import build_model


@dataclass
class Row:
    """One line of the result table."""

    name: str
    value: float
    goal: str
    passed: bool | None
    unit: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _minor_faults() -> int:
    """Minor page faults of this process so far (pages the allocator must map in afresh)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _train_briefly(
    model: nn.Module, masks: Masks, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int
) -> None:
    """A few masked SGD epochs, so the Hessian is taken at a realistic point rather than at init."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 100):
            idx = order[i : i + 100].to(x.device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            masks.mask_grads(model)
            opt.step()
            masks.apply(model)
    model.eval()


def bench_hvp_vs_gradient(
    make_op: Callable[..., HessianOperator], device: torch.device, reps: int
) -> dict[str, float]:
    """Median seconds of a gradient and of HVPs (linearized, plain jvp, double backward), interleaved."""
    op = make_op()
    plain = make_op(cache=False)
    double = make_op(method="double-backward")
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = v.to(device=op.device, dtype=op.dtype)
    op.matvec(v)
    setup, _ = _timed(lambda: op.matvec(v), device)  # the second product builds, checks and uses the cache
    plain.matvec(v)
    double.matvec(v)
    op.gradient()
    times: dict[str, list[float]] = {"grad": [], "hvp": [], "hvp_plain": [], "hvp_double": []}
    for _ in range(reps):
        times["grad"].append(_timed(op.gradient, device)[0])
        times["hvp"].append(_timed(lambda: op.matvec(v), device)[0])
        times["hvp_plain"].append(_timed(lambda: plain.matvec(v), device)[0])
        times["hvp_double"].append(_timed(lambda: double.matvec(v), device)[0])
    out = {k: statistics.median(t) for k, t in times.items()}
    out["cache_setup"] = setup - out["hvp"]  # beyond the cached product it also returns
    out["cache_info"] = op.cache_info  # type: ignore[assignment]
    return out


def bench_ours(op: HessianOperator, k: int, tol: float, device: torch.device, seed: int):
    """Our Lanczos from a fresh operator state (the cache setup counts in the wall time)."""
    op.set_point(op.model)
    op.matvecs = 0
    seconds, res = _timed(lambda: lanczos(op, k=k, which="LA", tol=tol, seed=seed), device)
    return seconds, res


def bench_active_vs_full(
    active: HessianOperator, full: HessianOperator, device: torch.device, reps: int
) -> dict[str, float]:
    """One HVP in the active subspace against one on the full operator: medians of time and page faults.

    Both operators are used at their steady state (the cache built, as in all but the first two
    products of a Lanczos run). Their products alternate in ABBA order, so drift of the host and
    the position in a round fall on both alike; ``ratio`` is the median of the rounds' ratios.
    """
    gen = torch.Generator().manual_seed(2)
    ops = {"active": active, "full": full}
    vs = {}
    for name, op in ops.items():
        vs[name] = torch.randn(op.size, generator=gen, dtype=torch.float64).to(op.device, op.dtype)
        for _ in range(2):  # the second product builds the cache if the operator has none yet
            op.matvec(vs[name])
    seconds: dict[str, list[float]] = {name: [] for name in ops}
    faults: dict[str, list[int]] = {name: [] for name in ops}
    for r in range(reps):
        for name in ("active", "full") if r % 2 == 0 else ("full", "active"):
            op, v = ops[name], vs[name]
            before = _minor_faults()
            seconds[name].append(_timed(lambda op=op, v=v: op.matvec(v), device)[0])
            faults[name].append(_minor_faults() - before)
    out = {f"{name}_seconds": statistics.median(t) for name, t in seconds.items()}
    out.update({f"{name}_faults": statistics.median(f) for name, f in faults.items()})
    out["ratio"] = statistics.median(a / f for a, f in zip(seconds["active"], seconds["full"]))
    return out


class _OverBudget(Exception):
    """Raised inside a peer's loop when it has used up its time budget."""


def bench_pyhessian(
    model: nn.Module, x, y, k: int, tol: float, max_iter: int, device: torch.device, seed: int,
    budget_s: float,
):
    """PyHessian's deflated power iteration: seconds, HVPs, eigenvalues, eigenvectors, finished.

    HVPs are counted by wrapping its HVP function. A run longer than ``budget_s`` is stopped at
    its next HVP; its counts are then lower bounds and no eigenpairs come back.
    """
    # the package re-exports the class ``hessian`` under the module's name: fetch the module
    ph = importlib.import_module("pyhessian.hessian")
    counter = {"hvp": 0}
    original = ph.hessian_vector_product
    began = time.perf_counter()

    # In single-batch mode PyHessian calls the module-level ``hessian_vector_product`` once per
    # power-iteration step (on its retained full-batch graph), so its calls are its HVPs.
    def counting(*args, **kwargs):
        if time.perf_counter() - began > budget_s:
            raise _OverBudget
        counter["hvp"] += 1
        return original(*args, **kwargs)

    ph.hessian_vector_product = counting
    torch.manual_seed(seed)  # PyHessian draws start vectors from the global RNG
    peer_model = copy.deepcopy(model)
    values = vectors = None
    try:
        with warnings.catch_warnings():  # it warns about backward(create_graph=True)
            warnings.simplefilter("ignore", UserWarning)
            _sync(device)
            began = time.perf_counter()
            engine = ph.hessian(peer_model, F.cross_entropy, data=(x, y), cuda=device.type == "cuda")
            values, vectors = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
            _sync(device)
    except _OverBudget:
        pass
    finally:
        ph.hessian_vector_product = original
    seconds = time.perf_counter() - began
    finished = values is not None
    return seconds, counter["hvp"], None if values is None else np.asarray(values), vectors, finished


def eigenthings_runner(model, chunks, k: int, tol: float, device, seed: int):
    """A function ``max_iter -> (seconds, HVPs, result)`` running hessian-eigenthings' Lanczos.

    HVPs are counted by wrapping its operator's matvec.
    """
    import hessian_eigenthings as he  # noqa: PLC0415 - optional peer

    peer_model = copy.deepcopy(model)
    op = he.HessianOperator(peer_model, chunks, he.supervised_loss(F.cross_entropy), full_dataset=True)
    counter = {"hvp": 0}
    original = op.matvec

    def counting(v):
        counter["hvp"] += 1
        return original(v)

    op.matvec = counting

    def run(m: int):
        counter["hvp"] = 0
        seconds, res = _timed(
            lambda: he.lanczos(op, k=k, max_iter=m, tol=tol, which="LA", reorthogonalize=True, seed=seed),
            device,
        )
        return seconds, counter["hvp"], res

    return run


def smallest_converged_max_iter(run, k: int, start_iter: int):
    """hessian-eigenthings' smallest max_iter (step 5) whose top-k all converge, and that run.

    Its Lanczos runs a fixed number of steps (no restarts), so a user must choose ``max_iter``;
    we search from our own iteration count (the search is not charged to it). Returns
    ``(max_iter, (seconds, HVPs, result))``, with ``None`` for the run when none converged by 400.
    """
    m = max(k + 5, 5 * round(start_iter / 5))
    result = run(m)
    if bool(result[2].converged.all()):
        best = result
        while m - 5 >= k + 1:
            trial = run(m - 5)
            if not bool(trial[2].converged.all()):
                break
            m, best = m - 5, trial
        return m, best
    while m < 400:
        m += 5
        result = run(m)
        if bool(result[2].converged.all()):
            return m, result
    return m, None


def bench_interpolation(model, start, end, x, y, batch_size, device, reps: int):
    """Median seconds of a 29-point curve and of 29 bare forward passes over the same batches."""
    alphas = default_alphas()
    batches = materialize_batches((x, y), batch_size, device)
    bare_model = copy.deepcopy(model).eval()

    @torch.no_grad()
    def bare():
        for _ in alphas:
            for xb, _ in batches:
                bare_model(xb)

    bare()
    curve_t, bare_t = [], []
    for _ in range(reps):
        curve_t.append(
            _timed(lambda: interpolate(model, start, end, (x, y), batch_size=batch_size, device=device), device)[0]
        )
        bare_t.append(_timed(bare, device)[0])
    return statistics.median(curve_t), statistics.median(bare_t)


def _status(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "MISS")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="512 images, fewer repetitions: a smoke check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks, training and start vectors")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--k", type=int, default=10, help="number of top eigenvalues")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance")
    parser.add_argument("--chunk-size", type=int, default=1000, help="examples per HVP/eval chunk")
    parser.add_argument("--lanczos-reps", type=int, default=3,
                        help="runs of each Lanczos (ours full, ours active, hessian-eigenthings), in "
                             "turn; their medians are compared")
    parser.add_argument("--power-iters", type=int, default=100,
                        help="PyHessian maxIter per eigenvalue (its default is 100)")
    parser.add_argument("--peer-budget", type=float, default=None,
                        help="seconds after which PyHessian's run is stopped, its counts then being "
                             "bounds (default 900, 60 with --quick)")
    parser.add_argument("--skip-pyhessian", action="store_true",
                        help="leave PyHessian out (its power iteration takes many minutes on a CPU)")
    args = parser.parse_args(argv)
    if args.lanczos_reps < 1:
        parser.error(f"--lanczos-reps must be at least 1, got {args.lanczos_reps}.")
    if args.peer_budget is None:
        args.peer_budget = 60.0 if args.quick else 900.0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available.")

    n = 512 if args.quick else 4000
    reps = 2 if args.quick else 5
    chunk = min(args.chunk_size, n)
    ds = load_dataset("mnist")
    x, y = ds.x_train[:n].to(device), ds.y_train[:n].to(device)
    torch.manual_seed(args.seed)
    model = build_model("lenet5").to(device)
    masks = Masks.random(model, sparsity=0.95, distribution="uniform", seed=args.seed)
    initialize(model, masks, scheme="sparse", seed=args.seed)  # sparsity-aware init, masked
    masks.to(device)
    masks.apply(model)
    start = copy.deepcopy(model.state_dict())
    epochs = 3 if args.quick else 10
    _train_briefly(model, masks, x, y, args.seed, epochs)
    end = copy.deepcopy(model.state_dict())
    trained = evaluate(model, (x, y), batch_size=chunk)
    mask_dict = masks.as_dict()
    space = ParamSpace(model, mask_dict)
    full_params = sum(p.numel() for p in model.parameters())
    print(
        f"LeNet-5, {masks.sparsity():.0%} sparse ({space.size:,} active of {full_params:,} parameters), "
        f"{n:,} MNIST images ({ds.source}), device {device}, {torch.get_num_threads()} CPU threads, "
        f"chunks of {chunk}; sparse init, then {epochs} epochs of masked SGD (train accuracy "
        f"{trained.accuracy:.1%}, loss {trained.loss:.3f}): the Hessian is taken there."
    )

    rows: list[Row] = []

    # (a) HVP vs gradient
    def make_op(**kw) -> HessianOperator:
        return HessianOperator(model, F.cross_entropy, (x, y), mask_dict, chunk_size=chunk, device=device, **kw)

    hv = bench_hvp_vs_gradient(make_op, device, reps)
    ratio = hv["hvp"] / hv["grad"]
    rows.append(Row("(a) HVP / gradient time (forward-over-reverse, linearized)", ratio, "<= 2.5", ratio <= 2.5))
    rows.append(Row("    HVP / gradient, forward-over-reverse without cache", hv["hvp_plain"] / hv["grad"], "info", None))
    rows.append(Row("    HVP / gradient, double backward", hv["hvp_double"] / hv["grad"], "info", None))
    print(
        f"(a) gradient {hv['grad'] * 1e3:.0f} ms, HVP {hv['hvp'] * 1e3:.0f} ms "
        f"(uncached {hv['hvp_plain'] * 1e3:.0f} ms, double backward {hv['hvp_double'] * 1e3:.0f} ms); "
        f"one-off cache setup {hv['cache_setup']:.1f} s [{hv['cache_info']}]"
    )

    # (b) top-k eigenvalues
    op = make_op()
    full_op = HessianOperator(model, F.cross_entropy, (x, y), None, chunk_size=chunk, device=device)
    ours_t: dict[str, list[float]] = {"full": [], "active": []}
    seconds, ours_full = bench_ours(full_op, args.k, args.tol, device, args.seed)
    ours_t["full"].append(seconds)
    seconds, ours_mask = bench_ours(op, args.k, args.tol, device, args.seed)
    ours_t["active"].append(seconds)
    print(
        f"(b) ours, full operator ({full_op.size:,}): {ours_full.matvecs} HVPs, "
        f"converged {int(ours_full.converged.sum())}/{args.k}, max rel. residual "
        f"{float(ours_full.relative_residuals.max()):.1e}; top-3 {np.round(ours_full.eigenvalues[:3].numpy(), 4)}"
    )
    print(
        f"    ours, active subspace ({op.size:,}): {ours_mask.matvecs} HVPs, "
        f"converged {int(ours_mask.converged.sum())}/{args.k}; top-3 {np.round(ours_mask.eigenvalues[:3].numpy(), 4)}"
    )

    peers: dict[str, tuple[float, int]] = {}
    ph_finished = True
    try:
        if args.skip_pyhessian:
            raise ModuleNotFoundError("skipped")
        ph_t, ph_hvps, ph_vals, ph_vecs, ph_finished = bench_pyhessian(
            model, x, y, args.k, args.tol, args.power_iters, device, args.seed, args.peer_budget
        )
        peers["PyHessian"] = (ph_t, ph_hvps)
        head = (
            f"    PyHessian power iteration (tol {args.tol} on the eigenvalue change, maxIter "
            f"{args.power_iters} per eigenvalue)"
        )
        if ph_finished:
            # how good its answer is, measured with our full operator (not charged to it)
            flat = [torch.cat([t.reshape(-1) for t in vec]).to(full_op.dtype) for vec in ph_vecs]
            rel = [
                float(torch.linalg.vector_norm(full_op.matvec(v) - lam * v) / (abs(lam) * v.norm()))
                for v, lam in zip(flat, ph_vals)
            ]
            good = sum(r < args.tol for r in rel)
            print(
                f"{head}: {ph_hvps} HVPs, {ph_t:.1f} s; {good}/{args.k} of its pairs within "
                f"{args.tol} relative residual; top-3 {np.round(np.sort(ph_vals)[::-1][:3], 4)}"
            )
        else:
            print(
                f"{head}: stopped at the {args.peer_budget:.0f} s budget after {ph_hvps} HVPs, "
                f"unfinished: its HVP count and time below are lower bounds"
            )
    except ImportError as exc:
        print("    PyHessian: skipped (--skip-pyhessian)" if str(exc) == "skipped" else
              "    PyHessian is not installed (pip install pyhessian==0.1): skipped")
    he_run = None
    he_t: list[float] = []
    try:
        he_chunks = [(xb, yb) for xb, yb in materialize_batches((x, y), chunk, device)]
        he_run = eigenthings_runner(model, he_chunks, args.k, args.tol, device, args.seed)
    except ImportError:
        print("    hessian-eigenthings is not installed (pip install hessian-eigenthings==1.0.0a5): skipped")
    if he_run is not None:
        he_m, he_best = smallest_converged_max_iter(he_run, args.k, ours_full.iterations)
        if he_best is None:
            print(f"    hessian-eigenthings Lanczos: not converged by max_iter={he_m}")
        else:
            he_t.append(he_best[0])
            he_hvps = he_best[1]
            top3 = np.round(np.sort(he_best[2].eigenvalues.detach().cpu().numpy())[::-1][:3], 4)
            print(
                f"    hessian-eigenthings Lanczos (max_iter={he_m}, smallest converged): {he_hvps} HVPs; "
                f"top-3 {top3}"
            )
    # the later rounds run the three in turn, so the host's drift and the allocator's state
    # (how many pages each run must fault in again) do not fall on one side only
    for _ in range(args.lanczos_reps - 1):
        ours_t["full"].append(bench_ours(full_op, args.k, args.tol, device, args.seed)[0])
        ours_t["active"].append(bench_ours(op, args.k, args.tol, device, args.seed)[0])
        if he_t:
            he_t.append(he_run(he_m)[0])
    ours_med = {label: statistics.median(t) for label, t in ours_t.items()}
    if he_t:
        peers["hessian-eigenthings"] = (statistics.median(he_t), he_hvps)

    def runs(t: list[float]) -> str:
        return f"median {statistics.median(t):.1f} s of [{', '.join(f'{v:.1f}' for v in t)}]"

    print(
        f"    Lanczos wall time, {args.lanczos_reps} runs each: ours full {runs(ours_t['full'])}, "
        f"ours active {runs(ours_t['active'])}"
        + (f", hessian-eigenthings {runs(he_t)}" if he_t else "")
    )
    per_hvp = bench_active_vs_full(op, full_op, device, 4 * reps + 1)
    print(
        f"    one HVP ({4 * reps + 1} each, in turn): active subspace {per_hvp['active_seconds'] * 1e3:.0f} ms, "
        f"full operator {per_hvp['full_seconds'] * 1e3:.0f} ms (median minor page faults per HVP "
        f"{per_hvp['active_faults']:.0f} and {per_hvp['full_faults']:.0f}); caches [{op.cache_info}] "
        f"and [{full_op.cache_info}]"
    )

    bound = "" if ph_finished else " [PyHessian unfinished: a bound]"
    if "PyHessian" in peers:
        for label, res in (("full", ours_full), ("active", ours_mask)):
            fewer = peers["PyHessian"][1] / res.matvecs
            passed = fewer >= 5 if (ph_finished or fewer >= 5) else None
            rows.append(Row(f"(b) PyHessian HVPs / our HVPs ({label}){bound}", fewer, ">= 5", passed))
    valid = {name: t for name, (t, _) in peers.items() if np.isfinite(t)}
    if valid:
        fastest_name = min(valid, key=valid.get)
        fastest = valid[fastest_name]
        exact = ph_finished or fastest_name != "PyHessian"
        for label in ("full", "active"):
            rel = ours_med[label] / fastest
            passed = rel <= 0.5 if exact else (True if rel <= 0.5 else None)
            rows.append(Row(f"(b) our time / {fastest_name}'s time ({label})", rel, "<= 0.5", passed))
    hvp_ratio = per_hvp["ratio"]
    rows.append(Row("(b) active-subspace HVP / full-operator HVP time", hvp_ratio, "<= 1.0", hvp_ratio <= 1.0))

    # (c) interpolation
    curve_t, bare_t = bench_interpolation(model, start, end, x, y, chunk, device, reps)
    rel = curve_t / bare_t
    rows.append(Row("(c) 29-point curve / 29 bare forward passes", rel, "<= 1.2", rel <= 1.2))
    print(f"(c) curve {curve_t:.2f} s, 29 bare forward passes {bare_t:.2f} s")

    width = max(len(r.name) for r in rows)
    print()
    print(f"{'measure'.ljust(width)}  {'value':>8}  {'goal':>7}  status")
    for r in rows:
        print(f"{r.name.ljust(width)}  {r.value:8.2f}  {r.goal:>7}  {_status(r.passed)}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
