"""Gradient-flow measures logged during training: masked gradient norm, per-layer norms, EGF (Tessera et al.)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .masks import Masks
from .models import fused_relu_pools


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (e.g. BatchNorm running stats) on exit, so a measurement leaves no trace."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def layer_of(param_name: str) -> str:
    """The layer (module) a parameter belongs to: 'fc1.weight' -> 'fc1'."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


METRICS_SEED = 20220222  # the fixed draw of the metrics batch: the same for every run


def fixed_batches(n: int, size: int, examples: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint fixed batches of training indices: the metrics batch and the fixed growth batch.

    ``random``: a permutation drawn with a fixed seed, the same for every run; ``first``: the first
    ``size`` training examples, then the next ``size`` (rigl_tf2's two 1,000-image validation batches).
    When ``n < 2 * size`` the growth batch is the last ``size`` examples (it then overlaps).
    """
    if examples == "first":
        perm = torch.arange(n)
    elif examples == "random":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(METRICS_SEED))
    else:
        raise ValueError(f"unknown metrics examples {examples!r}; use random or first")
    size = min(size, n)
    metric = perm[:size]
    grow = perm[size:2 * size] if n >= 2 * size else perm[-size:]
    return metric, grow


def metric_indices(n: int, size: int, examples: str = "random") -> torch.Tensor:
    """Indices of the trainer's fixed metrics batch (the first of :func:`fixed_batches`); analyses use it
    to evaluate on the examples the trainer measured gradient flow on."""
    return fixed_batches(n, size, examples)[0]


def batch_independent(model: nn.Module, train_mode: bool = True) -> bool:
    """Whether each example's output depends on that example alone: no BatchNorm (batch statistics)
    and no dropout (random masks) in training mode. Then a gradient may be summed over chunks."""
    if not train_mode:
        return True
    return not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
                   for m in model.modules())


def masked_gradient(model: nn.Module, masks: Masks | None, x: torch.Tensor, y: torch.Tensor,
                    train_mode: bool = True, chunk: int | None = None) -> tuple[dict[str, torch.Tensor], float, float]:
    """Gradient of the mean cross-entropy on ``(x, y)`` with masked weights' entries zeroed.

    The model runs in training mode (BatchNorm uses batch statistics, as in a training step; with
    ``train_mode=False`` in eval mode) and its buffers are restored afterwards. The loss has no L2
    term (weight decay lives in the optimizer). Returns ``(grads, loss, accuracy)``.

    ``chunk``: where the model is :func:`batch_independent`, sum the gradient over chunks of that many
    examples (the same gradient up to float rounding; on a CPU a LeNet-5 gradient over 1,000 images is
    ~1.3x faster in chunks of 125, which stay in cache). Otherwise the whole batch goes at once.
    """
    was_training = model.training
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    model.train(train_mode)
    n = len(x)
    if chunk is None or chunk >= n or not batch_independent(model, train_mode):
        chunk = n
    with preserved_buffers(model):
        total: list[torch.Tensor] | None = None
        loss_sum = x.new_zeros((), dtype=torch.float64)
        correct = 0
        for xs, ys in zip(x.split(chunk), y.split(chunk)):
            with fused_relu_pools():  # LeNet-5's ReLU + max-pools: the same bits, faster on a CPU
                logits = model(xs)
            loss = F.cross_entropy(logits, ys) if chunk == n else F.cross_entropy(logits, ys, reduction="sum")
            grads = torch.autograd.grad(loss, [p for _, p in params])
            total = list(grads) if total is None else [a.add_(b) for a, b in zip(total, grads)]
            loss_sum += loss.detach().double()
            correct += int((logits.argmax(1) == ys).sum())
    model.train(was_training)
    if chunk < n:
        total = [g / n for g in total]
        loss_value = float(loss_sum) / n
    else:
        loss_value = float(loss_sum)
    out = {}
    for (name, _), g in zip(params, total):
        if masks is not None and name in masks:
            g = g * masks[name].to(g.device)
        out[name] = g.detach()
    # as float32 mean of the hits: the float32 rounding of correct / n, as it has always been logged
    return out, loss_value, (torch.tensor(float(correct)) / n).item()


def gradient_flow(grads: dict[str, torch.Tensor], masks: Masks | None,
                  maskable: list[str]) -> dict[str, float]:
    """Gradient-flow measures from masked gradients.

    - ``grad_norm``: L2 norm over all parameters; ``grad_norm_l1``: L1 norm;
    - ``egf1``/``egf2``: mean over maskable layers of ``||g_l * m_l||_p`` (Effective Gradient Flow);
    - ``egf2_per_weight``: the same with each layer's L2 norm divided by its active weight count;
    - ``grad_norm/<layer>``: L2 norm of each layer's (weight and bias) gradient.
    """
    flat = torch.cat([g.reshape(-1).double() for g in grads.values()])
    row: dict[str, float] = {
        "grad_norm": flat.norm(2).item(),
        "grad_norm_l1": flat.norm(1).item(),
    }
    l1, l2, l2w = [], [], []
    for name in maskable:
        g = grads[name].double()
        active = int(masks[name].sum()) if masks is not None and name in masks else g.numel()
        l1.append(g.norm(1).item())
        l2.append(g.norm(2).item())
        l2w.append(g.norm(2).item() / max(active, 1))
    n = max(len(maskable), 1)
    row["egf1"] = sum(l1) / n
    row["egf2"] = sum(l2) / n
    row["egf2_per_weight"] = sum(l2w) / n
    per_layer: dict[str, float] = {}
    for name, g in grads.items():
        key = layer_of(name)
        per_layer[key] = per_layer.get(key, 0.0) + g.double().pow(2).sum().item()
    for key, sq in per_layer.items():
        row[f"grad_norm/{key}"] = sq**0.5
    return row




def param_distance(model: nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """L2 distance between the model's parameters and ``reference`` (a state_dict of parameters)."""
    sq = 0.0
    for name, p in model.named_parameters():
        sq += (p.detach().double() - reference[name].to(p.device).double()).pow(2).sum().item()
    return sq**0.5
