"""Command line: train one dense or sparse network into a run directory.

Example::

    python -m sparse_training.train --model lenet5 --dataset mnist --method scratch+ \\
        --sparsity 0.95 --seed 0 --out runs/

Data-parallel on N processes (GPUs with NCCL, else CPU with gloo), same flags; ``--batch-size``
is the global batch::

    torchrun --nproc-per-node N -m sparse_training.train --model lenet5 ... --out runs/
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist

from .config import add_config_arguments, config_from_args
from .errors import cli_entry
from .rundir import RunDir
from .trainer import run_training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_training.train",
        description="Train a dense or sparse network (dense, prune, lottery, scratch, scratch+, rigl, "
                    "rigl+, set, small-dense) and log gradient flow into runs/<run_id>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", default="runs", help="runs directory")
    run.add_argument("--run-id", default=None,
                     help="run directory name ([a-z0-9._+-]); default derived from the settings")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--data-dir", default=None, help="directory with full-size datasets (or set $SPARSE_DATA)")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(parser.add_argument_group("hyperparameters"))
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    owned = not dist.is_initialized()  # a group that run_training starts (torchrun) is ended here
    try:
        run = run_training(cfg, args.out, args.run_id, args.resume, args.device, args.data_dir, args.quiet)
        main_rank = not dist.is_initialized() or dist.get_rank() == 0
        if owned and dist.is_initialized():
            dist.barrier()  # no rank tears its connections down while another still uses them (gloo aborts)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
    if not main_rank:
        return 0
    status = run.read_status()
    if status.get("state") == "complete":
        acc = RunDir(run.path).read_metrics()["test_acc"].iloc[-1]
        print(f"{run.run_id}: test accuracy {acc:.4f} -> {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
