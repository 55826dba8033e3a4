"""Parameter vectors: flatten/unflatten tensors and a ParamSpace of a model's active (unmasked) coordinates."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Masks = Mapping[str, torch.Tensor]
Include = Callable[[str, torch.Tensor], bool]

# State-dict entries that are buffers, not parameters, in torch's normalization layers.
# A ParamSpace built from a bare state_dict cannot ask the module, so it goes by name.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def flatten_params(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors (or a name->tensor mapping, in its order) into one detached 1-D tensor."""
    items = tensors.values() if isinstance(tensors, Mapping) else tensors
    parts = [t.detach().reshape(-1) for t in items]
    if not parts:
        raise ValueError("flatten_params got no tensors; pass at least one parameter.")
    return torch.cat(parts)


def unflatten_params(
    vec: torch.Tensor, like: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Split a 1-D tensor into tensors shaped like ``like`` (same names and order); views of ``vec``."""
    if vec.dim() != 1:
        raise ValueError(f"unflatten_params needs a 1-D tensor, got shape {tuple(vec.shape)}.")
    total = sum(t.numel() for t in like.values())
    if vec.numel() != total:
        raise ValueError(f"vector has {vec.numel()} entries but the tensors hold {total}.")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, t in like.items():
        out[name] = vec[offset : offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out


def is_buffer_name(name: str) -> bool:
    """True for state-dict keys of normalization-layer buffers (running stats), which are not parameters."""
    return name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES


def weights_only(name: str, p: torch.Tensor) -> bool:
    """An ``include`` filter keeping weight matrices and kernels (dim > 1), dropping biases and norm parameters."""
    return p.dim() > 1


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: torch.Size
    numel: int
    index: torch.Tensor | None  # flat indices of the active entries (CPU, int64); None = all active
    offset: int  # where this parameter's active entries start in the vector

    @property
    def count(self) -> int:
        return self.numel if self.index is None else int(self.index.numel())


class ParamSpace:
    """The vector of a model's active coordinates, and the maps between it and parameter tensors.

    The vector holds, in ``named_parameters`` order, every included parameter's entries where its
    mask is True (all entries of parameters absent from ``masks``). Distances, directions, Hessians
    and eigenvectors are taken in this space. Running statistics of BatchNorm are buffers, never
    coordinates.

    Args:
        source: an ``nn.Module`` (its ``named_parameters``), a state_dict or name->tensor mapping
            (buffer entries such as ``running_mean``/``running_var``/``num_batches_tracked`` and
            non-floating tensors are skipped), or an iterable of ``(name, tensor)`` pairs.
        masks: ``{param_name: bool tensor}`` of the masked weights; other parameters are dense.
        include: ``include(name, tensor) -> bool`` selects parameters (default: all), e.g.
            :func:`weights_only` to leave out biases and norm parameters.
    """

    def __init__(
        self,
        source: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        masks: Masks | None = None,
        include: Include | None = None,
    ) -> None:
        named = _named_tensors(source)
        masks = dict(masks or {})
        unknown = sorted(set(masks) - set(named))
        if unknown:
            raise ValueError(
                f"masks name parameters the model does not have ({', '.join(unknown[:3])}); "
                "use names from model.named_parameters()."
            )
        entries: list[_Entry] = []
        offset = 0
        for name, t in named.items():
            if include is not None and not include(name, t):
                continue
            index = None
            if name in masks:
                m = torch.as_tensor(masks[name])
                if tuple(m.shape) != tuple(t.shape):
                    raise ValueError(
                        f"mask for {name} has shape {tuple(m.shape)} but the parameter has "
                        f"{tuple(t.shape)}."
                    )
                m = m.detach().to("cpu").reshape(-1).bool()
                if not bool(m.all()):
                    index = torch.nonzero(m, as_tuple=False).reshape(-1)
            entry = _Entry(name, t.shape, t.numel(), index, offset)
            entries.append(entry)
            offset += entry.count
        if not entries:
            raise ValueError("the parameter space is empty; check `include` and the model.")
        self._entries = entries
        self._by_name = {e.name: e for e in entries}
        self._size = offset
        self._index_cache: dict[torch.device, list[torch.Tensor | None]] = {}

    # ------------------------------------------------------------------ description
    @property
    def size(self) -> int:
        """Number of active coordinates (the vector length)."""
        return self._size

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the included parameters, in vector order."""
        return tuple(e.name for e in self._entries)

    @property
    def shapes(self) -> dict[str, torch.Size]:
        """Shape of every included parameter."""
        return {e.name: e.shape for e in self._entries}

    @property
    def counts(self) -> dict[str, int]:
        """Number of active coordinates of every included parameter."""
        return {e.name: e.count for e in self._entries}

    @property
    def slices(self) -> dict[str, slice]:
        """Where each parameter's active entries lie in the vector."""
        return {e.name: slice(e.offset, e.offset + e.count) for e in self._entries}

    @property
    def indices(self) -> dict[str, torch.Tensor]:
        """Flat indices (into ``param.reshape(-1)``) of each parameter's active entries, CPU int64."""
        return {
            e.name: torch.arange(e.numel) if e.index is None else e.index for e in self._entries
        }

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean masks (CPU) of the parameters that have inactive entries."""
        out = {}
        for e in self._entries:
            if e.index is not None:
                m = torch.zeros(e.numel, dtype=torch.bool)
                m[e.index] = True
                out[e.name] = m.view(e.shape)
        return out

    @property
    def full_size(self) -> int:
        """Total number of entries of the included parameters, active or not."""
        return sum(e.numel for e in self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return (
            f"ParamSpace(size={self.size}, full_size={self.full_size}, "
            f"params={len(self._entries)}, masked={sum(e.index is not None for e in self._entries)})"
        )

    # ------------------------------------------------------------------ maps
    def _indices_on(self, device: torch.device) -> list[torch.Tensor | None]:
        if device not in self._index_cache:
            self._index_cache[device] = [
                None if e.index is None else e.index.to(device) for e in self._entries
            ]
        return self._index_cache[device]

    def to_vector(
        self,
        source: nn.Module | Mapping[str, torch.Tensor],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Gather the active coordinates of a module, state_dict or name->tensor mapping into a vector.

        The result is detached; its dtype and device are the source's unless given.
        """
        named = source if isinstance(source, Mapping) else dict(source.named_parameters())
        parts = []
        for i, entry in enumerate(self._entries):
            if entry.name not in named:
                raise KeyError(f"{entry.name} is missing from the parameters given to to_vector.")
            t = named[entry.name].detach()
            if tuple(t.shape) != tuple(entry.shape):
                raise ValueError(
                    f"{entry.name} has shape {tuple(t.shape)}, the space expects {tuple(entry.shape)}."
                )
            if device is not None or dtype is not None:
                t = t.to(device=device, dtype=dtype)
            flat = t.reshape(-1)
            if entry.index is None:
                parts.append(flat)
            else:
                parts.append(flat.index_select(0, self._indices_on(flat.device)[i]))
        return torch.cat(parts)

    def split(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``vec``, one per parameter, holding its active entries (1-D)."""
        self._check(vec)
        return {e.name: vec[e.offset : e.offset + e.count] for e in self._entries}

    def from_vector(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter-shaped tensors from a vector, zeros off the mask.

        Differentiable (also under ``torch.func``); dense parameters are views of ``vec``.
        """
        self._check(vec)
        out: dict[str, torch.Tensor] = {}
        indices = self._indices_on(vec.device)
        for entry, idx in zip(self._entries, indices):
            seg = vec[entry.offset : entry.offset + entry.count]
            if idx is None:
                out[entry.name] = seg.view(entry.shape)
            else:
                full = vec.new_zeros(entry.numel).index_copy(0, idx, seg)
                out[entry.name] = full.view(entry.shape)
        return out

    @torch.no_grad()
    def load_into(self, model: nn.Module, vec: torch.Tensor, *, zero_off_mask: bool = True) -> None:
        """Write a vector into ``model``'s parameters in place (masked entries set to zero by default).

        Parameters outside the space are left as they are.
        """
        self._check(vec)
        params = dict(model.named_parameters())
        for i, entry in enumerate(self._entries):
            p = params[entry.name]
            seg = vec[entry.offset : entry.offset + entry.count].to(device=p.device, dtype=p.dtype)
            if entry.index is None:
                p.copy_(seg.view(entry.shape))
                continue
            idx = self._indices_on(p.device)[i]
            if p.is_contiguous():
                if zero_off_mask:
                    p.zero_()
                p.view(-1).index_copy_(0, idx, seg)
            else:
                flat = p.reshape(-1).clone()
                if zero_off_mask:
                    flat.zero_()
                p.copy_(flat.index_copy_(0, idx, seg).view(entry.shape))

    def zeros(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A zero vector of the space."""
        return torch.zeros(self._size, dtype=dtype, device=device)

    def randn(
        self,
        generator: torch.Generator,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A standard Gaussian vector of the space, drawn from ``generator`` (on its device), then moved."""
        vec = torch.randn(self._size, generator=generator, device=generator.device, dtype=torch.float64)
        return vec.to(device=device, dtype=dtype)

    def distance(
        self,
        a: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor,
        b: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor,
    ) -> float:
        """Euclidean distance between two points (modules, state_dicts or vectors) in this space."""
        va = a if isinstance(a, torch.Tensor) else self.to_vector(a, dtype=torch.float64)
        vb = b if isinstance(b, torch.Tensor) else self.to_vector(b, dtype=torch.float64)
        return float(torch.linalg.vector_norm(va.double() - vb.to(va.device).double()))

    def _check(self, vec: torch.Tensor) -> None:
        if vec.dim() != 1 or vec.numel() != self._size:
            raise ValueError(
                f"expected a vector of length {self._size} for this space, got shape {tuple(vec.shape)}."
            )


def _named_tensors(
    source: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return dict(source.named_parameters())
    items: Sequence[tuple[str, torch.Tensor]]
    items = list(source.items()) if isinstance(source, Mapping) else list(source)
    return {
        name: t
        for name, t in items
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not is_buffer_name(name)
    }
