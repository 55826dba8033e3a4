"""Evaluation without gradients: loss, accuracy, logits and labels over a dataset in batches."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum, use_distributed

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
# A pair of tensors (x, y) split into batches here, or an iterable of (x, y) batches (a DataLoader).
Data = tuple[torch.Tensor, torch.Tensor] | Iterable[Batch]

DEFAULT_BATCH_SIZE = 1000


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and accuracy over ``n`` examples (accuracy is NaN unless ``y`` holds integer classes)."""

    loss: float
    accuracy: float
    n: int


def is_tensor_pair(data: object) -> bool:
    """True when ``data`` is a pair ``(x, y)`` of tensors with the same number of rows."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
        and data[0].dim() > 0
        and data[1].dim() > 0
        and data[0].shape[0] == data[1].shape[0]
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); CPU for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of a model's first floating parameter; float32 when there is none."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def iterate_batches(
    data: Data,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    x_dtype: torch.dtype | None = None,
) -> Iterator[Batch]:
    """Yield ``(x, y)`` batches on ``device``: slices of a tensor pair, or the batches of an iterable.

    ``batch_size=None`` yields a tensor pair as one batch. Batches of an iterable are taken as
    they come. A floating ``x`` is cast to ``x_dtype`` when given.
    """
    if is_tensor_pair(data):
        x, y = data  # type: ignore[misc]
        n = x.shape[0]
        step = n if batch_size is None else int(batch_size)
        if step < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        for i in range(0, n, step):
            yield _move(x[i : i + step], y[i : i + step], device, x_dtype)
        return
    if isinstance(data, torch.Tensor):
        raise TypeError("data must be a pair (x, y) of tensors or an iterable of (x, y) batches.")
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("each batch must be a tuple (x, y, ...) of tensors.")
        yield _move(batch[0], batch[1], device, x_dtype)


def materialize_batches(
    data: Data,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    x_dtype: torch.dtype | None = None,
) -> list[Batch]:
    """All batches of ``data`` as a list on ``device`` (moved once, reused on every pass).

    A tensor pair is moved (and cast) once and then sliced, so the batches are views.
    """
    if is_tensor_pair(data):
        x, y = _move(data[0], data[1], device, x_dtype)  # type: ignore[index]
        return list(iterate_batches((x, y), batch_size))
    return list(iterate_batches(data, batch_size, device, x_dtype))


def _move(
    x: torch.Tensor, y: torch.Tensor, device: torch.device | str | None, x_dtype: torch.dtype | None
) -> Batch:
    if x_dtype is not None and x.is_floating_point():
        x = x.to(device=device, dtype=x_dtype, non_blocking=True)
    elif device is not None:
        x = x.to(device, non_blocking=True)
    if device is not None:
        y = y.to(device, non_blocking=True)
    return x, y


@contextlib.contextmanager
def train_mode(model: nn.Module, training: bool):
    """Put ``model`` in train (True) or eval (False) mode inside the block; restore every module after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def count_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Number of rows whose arg-max is the integer class label; None when ``y`` is not class labels."""
    if logits.dim() != 2 or y.dim() != 1 or y.is_floating_point() or y.is_complex():
        return None
    return (logits.argmax(dim=1) == y).sum()


@torch.inference_mode()  # nothing here is differentiated (and CPU max-pools take their value-only path)
def evaluate_batches(
    model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, *, distributed: bool | None = False
) -> EvalResult:
    """Mean loss and accuracy of ``model`` (used as is: mode and device untouched) over ready batches.

    ``loss_fn`` must be a mean over the batch; batch losses are weighted by batch size. Sums stay
    on the device until the end, so CUDA is not synchronized per batch. With ``distributed`` the
    batches are this rank's shard and the sums are all-reduced over the process group.
    """
    # [loss sum, correct, examples, batches without class labels], on the model's device
    sums = None
    for x, y in batches:
        logits = model(x)
        if sums is None:
            sums = torch.zeros(4, dtype=torch.float64, device=logits.device)
        bs = x.shape[0]
        sums[0] += loss_fn(logits, y).detach().double() * bs
        c = count_correct(logits, y)
        if c is None:
            sums[3] += 1
        else:
            sums[1] += c
        sums[2] += bs
    enabled = use_distributed(distributed)
    if sums is None:
        sums = torch.zeros(4, dtype=torch.float64, device=model_device(model))
    total, correct, n, unlabeled = all_reduce_sum(sums, enabled).tolist()
    if n == 0:
        raise ValueError("the data yielded no examples to evaluate.")
    accuracy = correct / n if unlabeled == 0 else float("nan")
    return EvalResult(loss=total / n, accuracy=accuracy, n=int(n))


def evaluate(
    model: nn.Module,
    data: Data,
    loss_fn: LossFn = F.cross_entropy,
    *,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
) -> EvalResult:
    """Mean loss and accuracy of ``model`` in eval mode over ``data``, without gradients.

    Batches are moved to the device one at a time (the dataset is never copied whole).

    Args:
        model: any module mapping ``x`` to logits; its mode is restored afterwards.
        data: a tensor pair ``(x, y)`` or an iterable of ``(x, y)`` batches.
        loss_fn: ``loss_fn(logits, y)`` averaged over the batch (default cross-entropy).
        batch_size: rows per batch when ``data`` is a tensor pair.
        device: where the data goes; the model's device by default (the model is not moved).
        distributed: ``data`` is this rank's shard of a ``torch.distributed`` process group and
            the result is over all ranks' data (default: when a group of more than one rank is up).
    """
    device = model_device(model) if device is None else torch.device(device)
    with train_mode(model, False):
        return evaluate_batches(
            model, iterate_batches(data, batch_size, device), loss_fn, distributed=distributed
        )


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: torch.Tensor | Data,
    *,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits of ``model`` in eval mode for inputs ``x`` (a tensor), a pair ``(x, y)`` or batches.

    The result stays on ``device`` (the model's by default), rows in data order.
    """
    device = model_device(model) if device is None else torch.device(device)
    if isinstance(data, torch.Tensor):
        data = (data, torch.zeros(data.shape[0], dtype=torch.long))
    with train_mode(model, False), torch.inference_mode():
        out = [model(x) for x, _ in iterate_batches(data, batch_size, device)]
    if not out:
        raise ValueError("the data yielded no examples to predict.")
    return torch.cat(out)  # outside inference mode: a normal tensor the caller may change in place


def predict_labels(
    model: nn.Module,
    data: torch.Tensor | Data,
    *,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predicted classes (arg-max of the logits) of ``model`` in eval mode, as an int64 tensor."""
    return predict_logits(model, data, batch_size=batch_size, device=device).argmax(dim=1)
