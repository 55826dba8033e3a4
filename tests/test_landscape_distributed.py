"""Distributed curvature: 2 gloo processes on data shards give the 1-process full-data numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import masked_mlp

from landscape.evaluate import evaluate
from landscape.hessian import HessianOperator, gradient
from landscape.lanczos import hutchinson_trace, lanczos, spectral_density


def _numbers(data, distributed):
    model, masks, _ = masked_mlp()
    model = model.double()
    op = HessianOperator(model, F.cross_entropy, data, masks, dtype=torch.float64, chunk_size=37,
                         distributed=distributed)
    eig = lanczos(op, k=5, which="both", tol=1e-10, seed=0, return_eigenvectors=False)
    sd = spectral_density(op, num_probes=3, num_steps=20, seed=1)
    tr = hutchinson_trace(op, num_probes=10, seed=2)
    ev = evaluate(model, data, F.cross_entropy, batch_size=37, distributed=distributed)
    g = gradient(model, F.cross_entropy, data, masks, dtype=torch.float64, distributed=distributed)
    return {"eig": eig.eigenvalues, "iterations": torch.tensor(eig.iterations), "nodes": torch.as_tensor(sd.nodes),
            "trace": torch.tensor(tr.trace), "loss": torch.tensor(ev.loss), "acc": torch.tensor(ev.accuracy),
            "n": torch.tensor(ev.n), "grad": g, "op_n": torch.tensor(op.n)}


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        _, _, (x, y) = masked_mlp()
        # uneven shards: rank 0 gets 120 rows, rank 1 the other 80
        lo, hi = (0, 120) if rank == 0 else (120, 200)
        res = _numbers((x[lo:hi].double(), y[lo:hi]), None)  # None: on because a 2-rank group is up
        torch.save(res, f"{out}.{rank}")
        dist.barrier()  # neither rank tears its gloo pairs down while the other still uses them
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    _, _, (x, y) = masked_mlp()
    one = _numbers((x.double(), y), False)
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path / "res")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"res.{r}", weights_only=True) for r in range(2)]
    for key in ("eig", "nodes", "grad"):  # bitwise the same on both ranks (all-reduced products)
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    two = ranks[0]
    assert int(two["op_n"]) == int(two["n"]) == 200
    assert int(two["iterations"]) == int(one["iterations"])
    np.testing.assert_allclose(two["eig"].numpy(), one["eig"].numpy(), rtol=1e-8)
    np.testing.assert_allclose(two["nodes"].numpy(), one["nodes"].numpy(), rtol=1e-8, atol=1e-12)
    assert float(two["trace"]) == pytest.approx(float(one["trace"]), rel=1e-8)
    assert float(two["loss"]) == pytest.approx(float(one["loss"]), rel=1e-12)
    assert float(two["acc"]) == float(one["acc"])
    torch.testing.assert_close(two["grad"], one["grad"], rtol=1e-10, atol=1e-13)
