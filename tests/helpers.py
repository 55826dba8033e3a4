"""Small test problems shared by several test modules."""
from __future__ import annotations

import torch
from torch import nn


def masked_mlp(seed: int = 0):
    """A 10-16-8-3 tanh MLP with 50% random masks (weights zeroed off-mask) and 200 points."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    masks = {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in model.named_parameters() if p.dim() > 1}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    x = torch.randn(200, 10, generator=gen)
    y = torch.randint(0, 3, (200,), generator=gen)
    return model, masks, (x, y)
