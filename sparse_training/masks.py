"""The ``Masks`` object: boolean masks over a model's maskable weights (Linear and Conv weights only)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .distributions import active_counts, layer_densities
from .errors import UserError

MASKABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def maskable_names(model: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the maskable weights: Linear and Conv weights, in order."""
    return [f"{mod_name}.weight" if mod_name else "weight"
            for mod_name, mod in model.named_modules() if isinstance(mod, MASKABLE_TYPES)]


def random_layer_mask(shape: torch.Size, n_active: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask of ``shape`` with exactly ``n_active`` ones at uniformly random positions."""
    numel = int(torch.Size(shape).numel())
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=generator)[:n_active]] = True
    return flat.reshape(shape)


class Masks:
    """Boolean masks keyed by parameter name; masked weights stay exactly zero.

    Use :meth:`apply` after initialization and after every optimizer step, :meth:`mask_grads`
    before the step, and :meth:`mask_optimizer_state` so momentum or Adam moments cannot revive
    a masked weight.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self._masks = {k: v.detach().to(torch.bool).clone() for k, v in masks.items()}

    # --- construction -------------------------------------------------------------
    @classmethod
    def random(cls, model: nn.Module, sparsity: float, distribution: str = "uniform",
               first_layer_dense: bool = False, seed: int | None = 0,
               generator: torch.Generator | None = None) -> Masks:
        """Random masks with per-layer densities from ``distribution`` (uniform or erk)."""
        shapes = {n: tuple(p.shape) for n, p in _named_maskable(model)}
        names = list(shapes)
        dense = names[:1] if first_layer_dense else []
        counts = active_counts(shapes, layer_densities(shapes, sparsity, distribution, dense))
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        return cls({n: random_layer_mask(torch.Size(shapes[n]), counts[n], generator) for n in names})

    @classmethod
    def from_counts(cls, model: nn.Module, counts: Mapping[str, int], seed: int = 0) -> Masks:
        """Random masks with exactly ``counts[name]`` active weights per layer."""
        g = torch.Generator().manual_seed(int(seed))
        named = _named_maskable(model)
        if set(counts) != {n for n, _ in named}:
            raise UserError("per-layer counts do not name this model's maskable layers.")
        return cls({n: random_layer_mask(p.shape, min(int(counts[n]), p.numel()), g) for n, p in named})

    @classmethod
    def dense(cls, model: nn.Module) -> Masks:
        """All-ones masks over the maskable weights."""
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in _named_maskable(model)})

    # --- access -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        if mask.shape != self._masks[name].shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, expected {tuple(self._masks[name].shape)}")
        self._masks[name] = mask.to(torch.bool)

    def __contains__(self, name: str) -> bool:
        return name in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def items(self):
        return self._masks.items()

    def as_dict(self) -> dict[str, torch.Tensor]:
        """A plain ``{param_name: bool tensor}`` dict (cloned, on CPU): the checkpoint format."""
        return {k: v.detach().cpu().clone() for k, v in self._masks.items()}

    def to(self, device: torch.device | str) -> Masks:
        """Move the masks to ``device`` in place and return self."""
        self._masks = {k: v.to(device) for k, v in self._masks.items()}
        return self

    def active_counts(self) -> dict[str, int]:
        """Number of active (True) entries per layer."""
        return {k: int(v.sum()) for k, v in self._masks.items()}

    def numel(self) -> int:
        """Total number of maskable weights."""
        return sum(v.numel() for v in self._masks.values())

    def num_active(self) -> int:
        """Total number of active maskable weights."""
        return sum(self.active_counts().values())

    def sparsity(self) -> float:
        """Fraction of maskable weights that are masked."""
        total = self.numel()
        return 0.0 if total == 0 else 1.0 - self.num_active() / total

    def densities(self) -> dict[str, float]:
        """Per-layer density (fraction active)."""
        return {k: float(v.float().mean()) for k, v in self._masks.items()}

    def check_compatible(self, model: nn.Module) -> None:
        """Raise a UserError if these masks do not fit ``model``'s maskable weights."""
        shapes = {n: tuple(p.shape) for n, p in _named_maskable(model)}
        mine = {n: tuple(m.shape) for n, m in self._masks.items()}
        if shapes != mine:
            raise UserError("the masks do not match this model's architecture (different layers or shapes).")

    # --- enforcing ----------------------------------------------------------------
    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every masked weight of ``model`` in place."""
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            params[name].mul_(mask.to(params[name].device))

    @torch.no_grad()
    def mask_grads(self, model: nn.Module) -> None:
        """Zero the gradients of masked weights in place."""
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            g = params[name].grad
            if g is not None:
                g.mul_(mask.to(g.device))

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """Zero every per-parameter optimizer state tensor (momentum, Adam moments, ...) off the mask."""
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            state = optimizer.state.get(params[name])
            if not state:
                continue
            for value in state.values():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    value.mul_(mask.to(value.device))

    def __repr__(self) -> str:
        return f"Masks({len(self)} layers, sparsity={self.sparsity():.4f}, active={self.num_active()}/{self.numel()})"


def _named_maskable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    params = dict(model.named_parameters())
    names = maskable_names(model)
    missing = [n for n in names if n not in params]
    if missing:
        raise UserError(f"maskable layers without weights: {missing}.")
    return [(n, params[n]) for n in names]
