"""The landscape package's names: submodules are modules, public functions import from the package."""
from __future__ import annotations

import importlib
import types

import torch


def test_submodules_are_modules_and_functions_have_distinct_names():
    import landscape
    import landscape.evaluate as ev
    import landscape.interpolate as ip
    import landscape.lanczos as lz

    for mod, fn in ((lz, "lanczos"), (ev, "evaluate"), (ip, "interpolate")):
        assert isinstance(mod, types.ModuleType)
        assert mod is importlib.import_module(f"landscape.{fn}")
        assert callable(getattr(mod, fn)) and not isinstance(getattr(mod, fn), types.ModuleType)
    assert landscape.lanczos_eigs is lz.lanczos
    assert landscape.evaluate_model is ev.evaluate
    assert landscape.interpolate_path is ip.interpolate
    assert lz.spectral_density is landscape.spectral_density


def test_public_names_import_from_the_package():
    import landscape

    for name in landscape.__all__:
        assert getattr(landscape, name) is not None, name
    from landscape import HessianOperator, LambdaOperator, hutchinson_trace, lanczos, lanczos_eigs  # noqa: F401

    # old code that called `from landscape import lanczos` as a function still works
    op = LambdaOperator.from_matrix(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)))
    old, new = lanczos(op, k=2, tol=1e-10), lanczos_eigs(op, k=2, tol=1e-10)
    assert torch.equal(old.eigenvalues, new.eigenvalues)
    assert torch.allclose(new.eigenvalues, torch.tensor([10.0, 9.0], dtype=torch.float64))
