"""Ensembles and prediction disagreement per method (Evci et al. 2022, Table 1); CLI: ``python -m analysis.ensemble runs/``.

For each group of runs (lottery, scratch, scratch+, rigl, rigl+, set, and the "pruning solutions"
made of the prune runs of all seeds) on the test split: mean and std of the test accuracy, the
accuracy of the ensemble (mean of the runs' softmax outputs), the mean pairwise disagreement
(fraction of test examples two runs classify differently, over all pairs) and the mean
disagreement with the pruning solution (the seed-0 prune run's end; for the pruning solutions,
the other seeds against it). Writes ``ensemble.csv`` (one row per group) and ``ensemble.md``, and for
the claims' statistics ``ensemble_runs.csv`` (one row per run: group, run_id, seed, test_acc,
disagreement_pruned; NaN for the reference run itself) and ``ensemble_bootstrap.csv`` (group, replicate,
ensemble_gain: the ensemble gain of each of ``BOOT_REPLICATES`` resamples, with replacement, of the
group's runs; seed 0). The bootstrap gain of a resample with repeated runs is smaller than the
group's own (fewer distinct members), the same way for every group of equal size, so compare groups
of equal size.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.cli import Command, analysis_parser
from analysis.runs import Run, check_same_architecture, family_solution
from landscape.evaluate import predict_logits
from sparse_training.errors import UserError, cli_entry

GROUP_METHODS = ("lottery", "scratch", "scratch+", "rigl", "rigl+", "set")
PRUNING_GROUP = "pruning solutions"
RUN_COLUMNS = ["group", "run_id", "seed", "test_acc", "disagreement_pruned"]
BOOT_COLUMNS = ["group", "replicate", "ensemble_gain"]
BOOT_REPLICATES = 1000
ENSEMBLE_COLUMNS = ["group", "n_runs", "test_acc_mean", "test_acc_std", "ensemble_acc", "disagreement_mean",
                    "disagreement_std", "disagreement_pruned_mean", "disagreement_pruned_std", "pruning_run"]

ArrayLike = np.ndarray | torch.Tensor


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); 0 for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def ensemble_stats(probs_by_run: Mapping[str, ArrayLike], labels: ArrayLike, reference: ArrayLike | None = None,
                   reference_id: str | None = None) -> dict[str, float]:
    """Accuracy, ensemble accuracy and disagreement of a group of runs from their class probabilities.

    Args:
        probs_by_run: run id -> (n_examples, n_classes) softmax outputs, all on the same examples.
        labels: (n_examples,) true classes.
        reference: (n_examples, n_classes) outputs of the pruning solution, or None.
        reference_id: the reference's own run id when it is also in the group; it is left out of
            the disagreement with the reference (it would count a zero).

    Returns a dict: ``n_runs``; ``acc_mean``/``acc_std`` (std with ddof=1, 0 for one run);
    ``ensemble_acc`` (arg-max of the mean probabilities; ties go to the lower class);
    ``disagreement_mean``/``_std`` over all pairs of runs (NaN for one run); and
    ``disagreement_ref_mean``/``_std`` over the runs against ``reference`` (NaN without one).
    All values are fractions in [0, 1].
    """
    if not probs_by_run:
        raise ValueError("ensemble_stats needs at least one run.")
    y = _np(labels).reshape(-1)
    probs = {k: _np(v).astype(np.float64) for k, v in probs_by_run.items()}
    for k, p in probs.items():
        if p.ndim != 2 or p.shape[0] != y.shape[0]:
            raise ValueError(f"outputs of {k} have shape {p.shape}; expected ({y.shape[0]}, n_classes).")
    preds = {k: p.argmax(axis=1) for k, p in probs.items()}
    accs = [float((pred == y).mean()) for pred in preds.values()]
    mean_probs = np.mean(np.stack(list(probs.values())), axis=0)
    pairs = [float((preds[a] != preds[b]).mean()) for a, b in itertools.combinations(preds, 2)]
    out = {
        "n_runs": len(probs), "acc_mean": float(np.mean(accs)), "acc_std": _std(accs),
        "ensemble_acc": float((mean_probs.argmax(axis=1) == y).mean()),
        "disagreement_mean": float(np.mean(pairs)) if pairs else float("nan"),
        "disagreement_std": _std(pairs) if pairs else float("nan"),
        "disagreement_ref_mean": float("nan"), "disagreement_ref_std": float("nan"),
    }
    if reference is not None:
        ref = _np(reference).argmax(axis=1)
        vs = [float((pred != ref).mean()) for k, pred in preds.items() if k != reference_id]
        if vs:
            out["disagreement_ref_mean"] = float(np.mean(vs))
            out["disagreement_ref_std"] = _std(vs)
    return out


def ensemble_gain(probs: np.ndarray, labels: ArrayLike, members: Sequence[int] | np.ndarray) -> float:
    """Ensemble accuracy minus mean member accuracy of the runs ``members`` (indices into ``probs``, repeats allowed).

    ``probs``: (n_runs, n_examples, n_classes) softmax outputs.
    """
    y = _np(labels).reshape(-1)
    chosen = probs[np.asarray(members)]
    ens = float((chosen.mean(axis=0).argmax(axis=1) == y).mean())
    return ens - float((chosen.argmax(axis=2) == y[None, :]).mean())


def bootstrap_gains(probs: np.ndarray, labels: ArrayLike, replicates: int = BOOT_REPLICATES, seed: int = 0) -> np.ndarray:
    """Ensemble gains of ``replicates`` resamples (with replacement) of the runs; a fixed seed."""
    rng = np.random.default_rng(seed)
    n = probs.shape[0]
    return np.array([ensemble_gain(probs, labels, rng.integers(0, n, size=n)) for _ in range(replicates)])


def group_runs(selected: Sequence[Run]) -> dict[str, list[Run]]:
    """The groups of Table 1 present in the selection, in the paper's order (prune runs -> 'pruning solutions')."""
    groups: dict[str, list[Run]] = {}
    for method in GROUP_METHODS:
        runs = [r for r in selected if r.method == method]
        if runs:
            groups[method] = sorted(runs, key=lambda r: (r.seed, r.run_id))
    prunes = [r for r in selected if r.method == "prune"]
    if prunes:
        groups[PRUNING_GROUP] = sorted(prunes, key=lambda r: (r.seed, r.run_id))
    return groups


def group_reference(pool: Sequence[Run], runs: Sequence[Run]) -> Run | None:
    """The pruning solution a group is compared with: its runs' (most common) seed-0 family solution."""
    sols = [s for s in (family_solution(pool, r) for r in runs) if s is not None]
    if not sols:
        return None
    counts = Counter(s.run_id for s in sols)
    if len(counts) > 1:
        warnings.warn(f"runs of one group derive from different pruning solutions ({', '.join(counts)}); "
                      "comparing with the most common one.", stacklevel=2)
    best = counts.most_common(1)[0][0]
    return next(s for s in sols if s.run_id == best)


@torch.no_grad()
def test_probabilities(run: Run, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Softmax outputs (CPU, float64) of a run's end checkpoint on the inputs ``x``."""
    model = run.model("end", device=device)
    logits = predict_logits(model, x, device=device)
    return torch.softmax(logits.double(), dim=1).cpu()


def pct(mean: float, std: float | None = None) -> str:
    """A fraction as a percentage, with '± std' when given; '-' for NaN."""
    if mean != mean:
        return "-"
    return f"{100 * mean:.2f}" if std is None or std != std else f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """The Table 1 layout as Markdown: Initialization, Test accuracy, Ensemble, Disagreement, Disagreement w/ Pruned."""
    lines = ["| Initialization | Test accuracy (%) | Ensemble (%) | Disagreement (%) | Disagreement w/ Pruned (%) | Runs |",
             "|---|---|---|---|---|---|"]
    for r in frame.itertuples(index=False):
        lines.append(f"| {r.group} | {pct(r.test_acc_mean, r.test_acc_std)} | {pct(r.ensemble_acc)} | "
                     f"{pct(r.disagreement_mean, r.disagreement_std)} | "
                     f"{pct(r.disagreement_pruned_mean, r.disagreement_pruned_std)} | {r.n_runs} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m analysis.ensemble``."""
    return analysis_parser("ensemble", "Per method: test accuracy, ensemble accuracy, pairwise prediction "
                                       "disagreement and disagreement with the pruning solution (Evci et al.'s Table 1).")


def compute(cmd: Command) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows of ``ensemble.csv`` (one per group), ``ensemble_runs.csv`` and ``ensemble_bootstrap.csv``."""
    args = cmd.args
    selected = cmd.selected(method=(*GROUP_METHODS, "prune"))
    groups = group_runs(selected)
    if not groups:
        raise UserError("no run of the selection belongs to a group (lottery, scratch, scratch+, rigl, rigl+, "
                        "set, prune); select such runs with --method.")
    pool = cmd.pool()
    references = {name: group_reference(pool, runs) for name, runs in groups.items()}
    members = {r.run_id: r for runs in groups.values() for r in runs}
    members.update({r.run_id: r for r in references.values() if r is not None})
    check_same_architecture(list(members.values()))
    device = cmd.device
    data = next(iter(members.values())).dataset(args.data_dir)
    probs: dict[str, torch.Tensor] = {}
    for run_id, run in tqdm(members.items(), desc="ensemble", unit="run", disable=args.quiet, file=sys.stderr):
        probs[run_id] = test_probabilities(run, data.x_test, device)
    rows, run_rows, boot_rows = [], [], []
    for name, runs in groups.items():
        ref = references[name]
        ref_pred = probs[ref.run_id].argmax(dim=1) if ref is not None else None
        for r in runs:
            pred = probs[r.run_id].argmax(dim=1)
            dis = float("nan") if ref_pred is None or r.run_id == ref.run_id else float((pred != ref_pred).double().mean())
            run_rows.append({"group": name, "run_id": r.run_id, "seed": r.seed,
                             "test_acc": float((pred == data.y_test).double().mean()), "disagreement_pruned": dis})
        stack = np.stack([probs[r.run_id].numpy() for r in runs])
        for i, g in enumerate(bootstrap_gains(stack, data.y_test)):
            boot_rows.append({"group": name, "replicate": i, "ensemble_gain": g})
        stats = ensemble_stats({r.run_id: probs[r.run_id] for r in runs}, data.y_test,
                               reference=probs[ref.run_id] if ref is not None else None,
                               reference_id=ref.run_id if ref is not None else None)
        rows.append({"group": name, "n_runs": stats["n_runs"], "test_acc_mean": stats["acc_mean"],
                     "test_acc_std": stats["acc_std"], "ensemble_acc": stats["ensemble_acc"],
                     "disagreement_mean": stats["disagreement_mean"], "disagreement_std": stats["disagreement_std"],
                     "disagreement_pruned_mean": stats["disagreement_ref_mean"],
                     "disagreement_pruned_std": stats["disagreement_ref_std"],
                     "pruning_run": ref.run_id if ref is not None else ""})
    return (pd.DataFrame(rows, columns=ENSEMBLE_COLUMNS), pd.DataFrame(run_rows, columns=RUN_COLUMNS),
            pd.DataFrame(boot_rows, columns=BOOT_COLUMNS))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Run the ensemble CLI; returns 0 (bad input exits with code 2)."""
    cmd = Command.parse(build_parser(), argv)
    frame, per_run, boot = compute(cmd)
    table = markdown_table(frame)
    cmd.write({"ensemble.csv": frame, "ensemble.md": table, "ensemble_runs.csv": per_run,
               "ensemble_bootstrap.csv": boot}, report=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
