"""Exact dense Hessians over the active coordinates, for small models, tests and small-scale studies."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .evaluate import DEFAULT_BATCH_SIZE, Data, LossFn, materialize_batches, model_device, train_mode
from .hessian import SymmetricOperator
from .params import Include, Masks, ParamSpace


def exact_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    masks: Masks | None = None,
    *,
    include: Include | None = None,
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The dense ``n x n`` Hessian of the full-data mean loss w.r.t. the active coordinates.

    Computed by reverse-over-reverse differentiation (``torch.func.jacrev`` of ``jacrev``) of the
    loss as a function of the :class:`ParamSpace` vector, chunk by chunk weighted by chunk size,
    in eval mode — an independent route from :class:`HessianOperator`'s forward-over-reverse
    products. Memory grows as ``n`` times the activations: for small models only.
    """
    device = model_device(model) if device is None else torch.device(device)
    space = ParamSpace(model, masks, include)
    tensors = {n: t.detach() for n, t in model.named_parameters()}
    tensors.update({n: t.detach() for n, t in model.named_buffers()})
    tensors = {
        n: t.to(device, dtype) if t.is_floating_point() else t.to(device) for n, t in tensors.items()
    }
    constants = {n: t for n, t in tensors.items() if n not in space}
    point = space.to_vector(tensors)
    chunks = materialize_batches(data, chunk_size, device, dtype)
    total_n = sum(int(x.shape[0]) for x, _ in chunks)
    if total_n == 0:
        raise ValueError("the data for the Hessian has no examples.")

    hessian = torch.zeros(space.size, space.size, dtype=dtype, device=device)
    with train_mode(model, False):
        for x, y in chunks:

            def loss_of(vec: torch.Tensor, x=x, y=y) -> torch.Tensor:
                params = {**constants, **space.from_vector(vec)}
                return loss_fn(functional_call(model, params, (x,)), y)

            hessian += torch.func.jacrev(torch.func.jacrev(loss_of))(point) * (x.shape[0] / total_n)
    return hessian


def dense_matrix(operator: SymmetricOperator) -> torch.Tensor:
    """The dense matrix of any operator, column by column from unit vectors (``n`` matvecs)."""
    eye = torch.eye(operator.size, dtype=operator.dtype, device=operator.device)
    return torch.stack([operator.matvec(e) for e in eye], dim=1)
