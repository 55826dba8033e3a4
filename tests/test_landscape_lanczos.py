"""Tests of landscape.lanczos: eigenvalues against eigh and eigsh, SLQ moments, Hutchinson trace."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import masked_mlp
import torch.nn.functional as F
from scipy.sparse.linalg import eigsh

from landscape.exact import exact_hessian
from landscape.hessian import HessianOperator, LambdaOperator
from landscape.lanczos import EigenResult, hutchinson_trace, lanczos, spectral_density




@pytest.fixture(scope="module")
def hessian_problem():
    model, masks, data = masked_mlp()
    H = exact_hessian(model, F.cross_entropy, data, masks, chunk_size=100)
    op = HessianOperator(model, F.cross_entropy, data, masks, dtype=torch.float64, chunk_size=100)
    evals = np.linalg.eigh(H.numpy())[0]
    return H, op, evals


def _known_spectrum(n: int = 120, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    evals = torch.cat(
        [torch.linspace(-3.0, -0.5, 15), torch.linspace(-0.1, 0.1, n - 30), torch.linspace(0.6, 5.0, 15)]
    ).double()
    A = q @ torch.diag(evals) @ q.T
    return (A + A.T) / 2, torch.sort(evals).values


@pytest.mark.parametrize("which", ["LA", "SA", "both"])
def test_known_spectrum_via_lambda_operator(which):
    A, evals = _known_spectrum()
    op = LambdaOperator(lambda v: A @ v, A.shape[0], dtype=torch.float64)
    res = lanczos(op, k=5, which=which, tol=1e-10, seed=1)
    top, bottom = evals.flip(0)[:5], evals[:5]
    expected = {"LA": top, "SA": bottom, "both": torch.cat([top, bottom.flip(0)])}[which]
    assert torch.allclose(res.eigenvalues, expected, rtol=1e-9)
    assert res.all_converged
    assert res.matvecs == op.matvecs == res.iterations
    # the reported residuals are the true ones
    true = torch.stack([(A @ v - lam * v).norm() for v, lam in zip(res.eigenvectors, res.eigenvalues)])
    assert torch.allclose(true, res.residuals, atol=1e-12)
    assert torch.allclose(res.eigenvectors.norm(dim=1), torch.ones(len(expected), dtype=torch.float64))


def test_top_and_bottom_10_match_eigh_of_exact_hessian(hessian_problem):
    H, op, evals = hessian_problem
    top = lanczos(op, k=10, which="LA", tol=1e-6, seed=0)
    bottom = lanczos(op, k=10, which="SA", tol=1e-6, seed=0)
    assert isinstance(top, EigenResult) and top.all_converged and bottom.all_converged
    assert evals[0] < 0  # the negative end is the point of which="SA"
    np.testing.assert_allclose(top.eigenvalues.numpy(), evals[::-1][:10], rtol=1e-5)
    np.testing.assert_allclose(bottom.eigenvalues.numpy(), evals[:10], rtol=1e-5)
    # converged means residual < tol * max(|lambda|, ||T||), ||T|| <= ||H||
    assert float(top.residuals.max()) < 1e-6 * np.abs(evals).max()
    # true relative residuals against the exact matrix
    for res in (top, bottom):
        for v, lam in zip(res.eigenvectors, res.eigenvalues):
            assert float((H @ v - lam * v).norm()) / abs(float(lam)) < 1e-5
    frame = top.to_frame()
    assert list(frame.columns) == ["rank", "eigenvalue", "residual", "relative_residual", "converged"]


def test_both_ends_match_scipy_eigsh_on_linear_operator(hessian_problem):
    _, op, _ = hessian_problem
    lin = op.as_linear_operator()
    la = np.sort(eigsh(lin, k=10, which="LA", tol=1e-12, return_eigenvectors=False))[::-1]
    sa = np.sort(eigsh(lin, k=10, which="SA", tol=1e-12, return_eigenvectors=False))
    both = lanczos(op, k=10, which="both", tol=1e-6, seed=3, return_eigenvectors=False)
    assert both.eigenvectors is None
    np.testing.assert_allclose(both.eigenvalues[:10].numpy(), la, rtol=1e-5)
    np.testing.assert_allclose(both.eigenvalues[10:].numpy(), sa[::-1], rtol=1e-5)


def test_seeded_and_reproducible(hessian_problem):
    _, op, _ = hessian_problem
    a = lanczos(op, k=3, tol=1e-4, seed=7)
    b = lanczos(op, k=3, tol=1e-4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.matvecs == b.matvecs
    state = torch.random.get_rng_state()
    lanczos(op, k=3, tol=1e-4, seed=8)
    assert torch.equal(state, torch.random.get_rng_state())  # no global RNG


def test_max_iter_caps_work_and_flags_unconverged():
    A, _ = _known_spectrum()
    op = LambdaOperator.from_matrix(A)
    res = lanczos(op, k=5, which="LA", tol=1e-14, max_iter=8)
    assert res.matvecs == 8
    assert not res.all_converged


def test_small_operator_with_repeated_eigenvalues_restarts():
    A = torch.diag(torch.tensor([3.0, 3.0, 1.0, 1.0, -2.0], dtype=torch.float64))
    res = lanczos(LambdaOperator.from_matrix(A), k=5, which="LA", tol=1e-10)
    assert torch.allclose(res.eigenvalues, torch.tensor([3.0, 3.0, 1.0, 1.0, -2.0], dtype=torch.float64))


def _hutchinson_std(M: torch.Tensor) -> float:
    """Standard deviation of z^T M z / n for one Rademacher probe z."""
    off = M - torch.diag(torch.diag(M))
    return float((2 * (off**2).sum()) ** 0.5) / M.shape[0]


def test_slq_density_integrates_to_one_and_matches_moments(hessian_problem):
    H, op, _ = hessian_problem
    n = H.shape[0]
    probes = 20
    sd = spectral_density(op, num_probes=probes, num_steps=30, seed=0)
    assert sd.matvecs == probes * 30
    assert sd.nodes.shape == sd.weights.shape == (probes, 30)
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=1e-10)
    grid, dens = sd.grid, sd.density
    assert np.all(dens >= 0)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
    H2 = H @ H
    m1, m2 = float(torch.trace(H)) / n, float(torch.trace(H2)) / n
    # quadrature moments: unbiased estimates, 4 standard errors for this probe count
    assert abs(sd.moment(1) - m1) < 4 * _hutchinson_std(H) / probes**0.5
    assert abs(sd.moment(2) - m2) < 4 * _hutchinson_std(H2) / probes**0.5
    # the smoothed density has the quadrature mean and the quadrature variance plus sigma^2
    assert np.trapezoid(grid * dens, grid) == pytest.approx(sd.moment(1), abs=1e-8)
    assert np.trapezoid(grid**2 * dens, grid) == pytest.approx(sd.moment(2) + sd.sigma**2, rel=1e-6)
    assert list(sd.to_frame().columns) == ["eigenvalue", "density"]


def test_slq_nodes_are_the_spectrum_when_krylov_space_is_full():
    A, evals = _known_spectrum(n=40)
    op = LambdaOperator.from_matrix(A)
    sd = spectral_density(op, num_probes=50, num_steps=40, seed=2)
    # a full Krylov space: every probe's nodes are exactly the eigenvalues
    for nodes in sd.nodes:
        np.testing.assert_allclose(np.sort(nodes), evals.numpy(), atol=1e-8)
    for p in (1, 2, 3):
        Ap = torch.linalg.matrix_power(A, p)
        exact = float(torch.trace(Ap)) / 40
        assert abs(sd.moment(p) - exact) < 4 * _hutchinson_std(Ap) / 50**0.5


def test_hutchinson_trace_against_exact(hessian_problem):
    H, op, _ = hessian_problem
    est = hutchinson_trace(op, num_probes=60, seed=0)
    exact = float(torch.trace(H))
    assert est.matvecs == 60 and est.samples.shape == (60,)
    sigma = _hutchinson_std(H) * H.shape[0]
    assert abs(est.trace - exact) < 4 * sigma / 60**0.5
    assert est.std_error == pytest.approx(sigma / 60**0.5, rel=0.5)
    again = hutchinson_trace(op, num_probes=60, seed=0)
    assert again.trace == est.trace


def test_eigenvalue_at_zero_converges():
    """tol * max(|theta|, ||T||): a zero eigenvalue converges (tol * |theta| alone never would)."""
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=gen, dtype=torch.float64))
    evals = torch.cat([torch.zeros(1), torch.linspace(0.5, 4.0, 59)]).double()
    A = q @ torch.diag(evals) @ q.T
    A = (A + A.T) / 2
    res = lanczos(LambdaOperator.from_matrix(A), k=2, which="SA", tol=1e-8, seed=0)
    assert res.all_converged
    assert abs(float(res.eigenvalues[0])) < 1e-8
    assert float(res.eigenvalues[1]) == pytest.approx(0.5, rel=1e-8)
    assert res.iterations < 60  # it stopped on convergence, not by exhausting the space
    v = res.eigenvectors[0]
    assert float((A @ v).norm()) < 1e-7


def test_basis_grows_with_iterations_not_max_iter():
    """Memory bound: the basis holds at most (iterations + one block of 32) vectors, not max_iter."""
    n = 20_000
    evals = torch.cat([torch.tensor([10.0, 9.0, 8.0]), torch.rand(n - 3, generator=torch.Generator().manual_seed(0))])
    op = LambdaOperator(lambda v: evals.double() * v, n, dtype=torch.float64)
    res = lanczos(op, k=3, tol=1e-8, max_iter=2000, seed=0)
    assert res.all_converged
    np.testing.assert_allclose(res.eigenvalues.numpy(), [10.0, 9.0, 8.0], rtol=1e-8)
    bound = (res.iterations + 32) * n * 8
    assert 0 < res.basis_bytes <= bound
    assert res.basis_bytes < 2000 * n * 8 / 10  # an up-front max_iter basis would be 10x more
    # kept in float32: half the bytes, eigenvalues still to float32-reorthogonalization accuracy
    low = lanczos(op, k=3, tol=1e-5, max_iter=2000, seed=0, basis_dtype=torch.float32, basis_device="cpu")
    assert low.basis_bytes <= (low.iterations + 32) * n * 4
    np.testing.assert_allclose(low.eigenvalues.numpy(), [10.0, 9.0, 8.0], rtol=1e-5)
    assert low.eigenvectors.dtype == torch.float64
