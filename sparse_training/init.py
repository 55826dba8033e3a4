"""Initializations for sparse networks: dense (He-style), Liu et al. (density-scaled) and sparse (Evci et al.).

All schemes draw weight ``w_ij`` with variance ``gain**2 / fan_ij``; they differ in the fan:

- ``dense``: the dense layer's fan (fan-in = in-features x kernel size), then masked;
- ``liu``: the dense std divided by sqrt(layer density);
- ``sparse``: the fan counted over *active* connections of each unit: for output unit ``i``
  fan_in_i = number of active incoming weights, for input unit ``j`` fan_out_j = number of active
  outgoing weights (for conv layers counted over channels x kernel); ``fanavg`` averages the two.
  A weight whose fan is zero gets zero.
- ``glorot``: Keras' default ``glorot_uniform`` (with sampler ``uniform``): the dense fans averaged,
  gain 1 in every layer, i.e. U(-a, a) with a = sqrt(6 / (fan_in + fan_out)); then masked.

Hidden layers use the gain of the model's activation (``model.nonlinearity``) unless ``gain="one"``
(Keras' VarianceScaling scale 1.0, as rigl_tf2's unit-scaled init); the output layer (the last
maskable layer) uses gain 1. Biases start at zero. Everything is vectorized.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import UserError
from .masks import Masks, maskable_names
from .models import SReLU

SCHEMES = ("dense", "liu", "sparse")  # the schemes Evci et al. compare (analysis.signal's default)
ALL_SCHEMES = (*SCHEMES, "glorot")  # plus Keras' default, for the paper-faithful presets
GAINS = ("activation", "one")
MODES = ("fanin", "fanout", "fanavg")
SAMPLERS = ("normal", "uniform")

# Gains preserve the second moment through the activation. ReLU, PReLU (slope 0.25), ELU, swish and
# SReLU (leaky slope 0.2 at init) use the ReLU-family value; the saturating ones PyTorch's values.
_GAINS = {
    "relu": math.sqrt(2.0),
    "prelu": math.sqrt(2.0 / (1 + 0.25**2)),
    "elu": math.sqrt(2.0),
    "swish": math.sqrt(2.0),
    "srelu": math.sqrt(2.0 / (1 + 0.2**2)),  # starts as a leaky ReLU of slope 0.2 (models.SReLU)
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "linear": 1.0,
}


def activation_gain(name: str) -> float:
    """The init gain for an activation name."""
    try:
        return _GAINS[name]
    except KeyError:
        raise UserError(f"no init gain known for activation '{name}'.") from None


def _fans(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element fan-in and fan-out (broadcastable to the weight) counted over active weights."""
    m = mask.to(torch.float64)
    reduce_in = tuple(d for d in range(m.dim()) if d != 0)  # in-channels x kernel
    reduce_out = tuple(d for d in range(m.dim()) if d != 1)  # out-channels x kernel
    fan_in = m.sum(dim=reduce_in, keepdim=True)
    fan_out = m.sum(dim=reduce_out, keepdim=True)
    return fan_in, fan_out


def weight_std(weight_shape: torch.Size, mask: torch.Tensor | None, scheme: str, gain: float,
               mode: str = "fanin") -> torch.Tensor:
    """The per-element standard deviation for a weight of ``weight_shape`` under ``scheme``."""
    if scheme not in ALL_SCHEMES:
        raise UserError(f"unknown init '{scheme}'; choose one of {', '.join(ALL_SCHEMES)}.")
    if mode not in MODES:
        raise UserError(f"unknown init mode '{mode}'; choose one of {', '.join(MODES)}.")
    if scheme == "glorot":
        mode, gain = "fanavg", 1.0
    full = torch.ones(weight_shape, dtype=torch.bool)
    use_mask = mask if (scheme == "sparse" and mask is not None) else full
    fan_in, fan_out = _fans(use_mask)
    fan = {"fanin": fan_in, "fanout": fan_out, "fanavg": (fan_in + fan_out) / 2}[mode]
    fan = fan.expand(weight_shape)
    std = torch.where(fan > 0, gain / fan.clamp_min(1e-12).sqrt(), torch.zeros((), dtype=torch.float64))
    if scheme == "liu" and mask is not None:
        density = mask.to(torch.float64).mean()
        std = std / density.sqrt() if density > 0 else torch.zeros_like(std)
    return std


@torch.no_grad()
def initialize(model: nn.Module, masks: Masks | None = None, scheme: str = "dense",
               mode: str = "fanin", sampler: str = "normal", seed: int = 0,
               generator: torch.Generator | None = None, gain: str = "activation",
               reference: nn.Module | None = None) -> None:
    """Initialize ``model`` in place with ``scheme`` and apply ``masks``.

    ``gain``: ``activation`` uses the hidden activation's gain in hidden layers, ``one`` gain 1.

    Draws are made on the CPU from ``generator`` (or a fresh one seeded with ``seed``) so the
    same seed gives the same bits on any device. With ``reference`` (scheme ``dense`` only), each
    maskable layer draws from the distribution the same layer of ``reference`` gets: Tessera et
    al.'s rule for a sparse-wide network paired with a dense-narrow ``reference``.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown init distribution '{sampler}'; choose one of {', '.join(SAMPLERS)}.")
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    params = dict(model.named_parameters())
    names = maskable_names(model)
    if gain not in GAINS:
        raise UserError(f"unknown init gain '{gain}'; choose one of {', '.join(GAINS)}.")
    ref_shapes = None
    if reference is not None:
        if scheme != "dense":
            raise UserError(f"a reference network's init distribution applies to init 'dense', not '{scheme}'.")
        ref_params = dict(reference.named_parameters())
        ref_shapes = [ref_params[n].shape for n in maskable_names(reference)]
        if len(ref_shapes) != len(names):
            raise UserError("the reference network has a different number of maskable layers.")
    hidden_gain = activation_gain(getattr(model, "nonlinearity", "relu")) if gain == "activation" else 1.0
    for i, name in enumerate(names):
        w = params[name]
        layer_gain = 1.0 if i == len(names) - 1 else hidden_gain
        mask = masks[name].cpu() if masks is not None and name in masks else None
        if ref_shapes is None:
            std = weight_std(w.shape, mask, scheme, layer_gain, mode)
        else:  # a dense layer's std is one value: the reference layer's, over this layer's shape
            std = weight_std(ref_shapes[i], None, scheme, layer_gain, mode).reshape(-1)[0].expand(w.shape)
        if sampler == "normal":
            noise = torch.randn(w.shape, generator=g, dtype=torch.float64)
        else:  # uniform on [-sqrt(3), sqrt(3)] has unit variance
            noise = (torch.rand(w.shape, generator=g, dtype=torch.float64) * 2 - 1) * math.sqrt(3.0)
        value = noise * std
        if mask is not None:
            value = value * mask
        w.copy_(value.to(w.dtype))
        bias = params.get(name[: -len("weight")] + "bias")
        if bias is not None:
            bias.zero_()
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_parameters()
        elif isinstance(mod, nn.PReLU):
            mod.weight.fill_(0.25)
        elif isinstance(mod, SReLU):
            mod.reset_parameters()
    if masks is not None:
        masks.apply(model)
