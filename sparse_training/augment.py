"""Data augmentation on tensors: random shifts and horizontal flips of image batches, vectorized.

Every draw comes from a ``torch.Generator`` the caller passes (the trainer seeds one per step from
the run seed), so a run with augmentation gives the same bits on every rerun and after a resume.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import AUGMENT_NAMES
from .errors import UserError


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of ``x`` (N, C, H, W) by its own random offset in ``[-max_shift, max_shift]``
    along each axis. Pixels shifted in from outside repeat the nearest edge pixel (the background of
    MNIST-like images), so no artificial border appears after standardization."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = int(max_shift)
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    off = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(x.device)
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of ``x`` (N, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def check_augment(kind: str, input_shape: tuple[int, ...]) -> None:
    """Refuse an unknown augmentation, or one asked for on data that are not images (C, H, W)."""
    if kind not in AUGMENT_NAMES:
        raise UserError(f"unknown augmentation '{kind}'; choose one of {', '.join(AUGMENT_NAMES)}.")
    if kind != "none" and len(input_shape) != 3:
        raise UserError(f"--augment {kind} needs image data (C, H, W); this dataset gives vectors of shape "
                        f"{tuple(input_shape)}.")


def augment_batch(x: torch.Tensor, kind: str, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Apply augmentation ``kind`` (none, shift, flip, shift+flip) to a training batch."""
    if kind in ("shift", "shift+flip"):
        x = random_shift(x, max_shift, generator)
    if kind in ("flip", "shift+flip"):
        x = random_flip(x, generator)
    return x
