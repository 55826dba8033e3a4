"""Cross-library check: top Hessian eigenvalues agree with PyHessian and hessian-eigenthings (unmasked model)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.hessian import HessianOperator
from landscape.lanczos import lanczos


@pytest.fixture(scope="module")
def problem():
    """An unmasked float32 MLP (the peers know no masks) and our top eigenvalues in float64."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(200, 10, generator=gen)
    y = torch.randint(0, 3, (200,), generator=gen)
    op = HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float32, chunk_size=None)
    ours = lanczos(op, k=5, which="LA", tol=1e-5, seed=0)
    return model, (x, y), ours.eigenvalues.numpy()


def test_top_eigenvalues_match_hessian_eigenthings(problem):
    he = pytest.importorskip("hessian_eigenthings")
    model, (x, y), ours = problem
    peer_op = he.HessianOperator(
        copy.deepcopy(model), [(x, y)], he.supervised_loss(F.cross_entropy), full_dataset=True
    )
    res = he.lanczos(peer_op, k=5, max_iter=80, tol=1e-5, which="LA", reorthogonalize=True, seed=0)
    theirs = np.sort(res.eigenvalues.detach().cpu().numpy())[::-1]
    np.testing.assert_allclose(theirs, ours, rtol=1e-3)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_top_eigenvalues_match_pyhessian(problem):
    pyhessian = pytest.importorskip("pyhessian")
    model, (x, y), ours = problem
    torch.manual_seed(0)  # PyHessian draws its start vectors from the global RNG
    peer = pyhessian.hessian(copy.deepcopy(model), F.cross_entropy, data=(x, y), cuda=False)
    theirs, _ = peer.eigenvalues(maxIter=2000, tol=1e-6, top_n=2)
    # power iteration finds the largest |eigenvalue|; here the top two are the positive ones
    np.testing.assert_allclose(theirs, ours[:2], rtol=1e-3)
