"""Weight matching for sparse networks: permutation specs, and units of one network permuted to match another's.

Hidden units can be reordered without changing what a network computes (Hecht-Nielsen 1990):
permute the output units of a layer, and the input axis of every layer that reads them, the same
way. Entezari et al. (2022), "The Role of Permutation Invariance in Linear Mode Connectivity",
conjecture that once this symmetry is accounted for, SGD solutions are linearly connected; Ainsworth
et al. (2022), "Git Re-Basin", find the permutation by *weight matching*: maximise
``sum_l <W_l^A, P_l W_l^B P_{l-1}^T>`` by coordinate descent, one permutation at a time, each step a
linear assignment problem.

For a sparse network the permutation carries the mask along: permuting network B permutes its mask
with its weights, so the permuted network is as sparse as before, layer by layer, and the straight
line from A to the permuted B runs through the union of A's mask and B's permuted mask (weights
outside both are zero at both ends, so interpolating the masked weights is all it takes).

A :class:`PermutationSpec` says which axes of which state_dict entries share a permutation::

    spec = PermutationSpec({
        "fc1": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)],
        "fc2": [("fc2.weight", 0), ("fc2.bias", 0), ("fc3.weight", 1)],
    })

An entry may be ``(key, axis, block)``: the axis then holds ``block`` consecutive entries per unit,
as the input of a linear layer after ``torch.flatten`` of a ``(C, H, W)`` feature map does
(``block = H * W``). The builders write these lists from module names:

- :func:`chain_spec` for a chain of Linear/Conv layers, each optionally followed by modules with a
  value per unit (BatchNorm weight, bias and running statistics; per-unit activation parameters)::

      spec = chain_spec(model.state_dict(), [("conv1", "bn1"), ("conv2", "bn2"), "fc1", "fc2"])

  (the flatten between ``conv2`` and ``fc1`` is found from the shapes);
- :meth:`PermutationSpec.from_units` for anything else, one permutation per line, as
  ``name: (producers, consumers)``: the modules whose outputs are the permuted units (axis 0 of
  each of their entries with that many units) and the layers that read them (axis 1 of their
  weight). A residual stream is one permutation with several producers: the stem and every block
  whose output is added to it, e.g. for a ResNet stage with an identity shortcut::

      spec = PermutationSpec.from_units(model.state_dict(), {
          "stem": (["conv1", "bn1", "block1.conv2", "block1.bn2"], ["block1.conv1", "fc"]),
          "block1": (["block1.conv1", "block1.bn1"], ["block1.conv2"]),
      })

The last layer's outputs (the classes) and the first layer's inputs are never permuted.
:func:`spec_error` checks a spec: the largest change of a model's outputs under a random
permutation of it (float rounding only, when the spec is right).

:func:`weight_matching` finds the permutations that bring network B closest to network A;
:func:`apply_permutation` applies them to a state_dict and its masks. Permutations are LongTensors
``p`` with ``permuted[..., i, ...] = original[..., p[i], ...]`` along each axis they act on.
Everything here is plain torch, numpy and scipy; nothing knows the toolkit's model classes (their
specs are in ``analysis.align``).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

Tensors = Mapping[str, torch.Tensor]
Permutations = dict[str, torch.Tensor]
AxisEntry = tuple[str, int, int]  # (state_dict key, axis, block)


def _entry(item: Sequence, perm: str) -> AxisEntry:
    if isinstance(item, str) or len(item) not in (2, 3):
        raise ValueError(f"permutation {perm}: each entry is (key, axis) or (key, axis, block), not {item!r}.")
    key, axis = str(item[0]), int(item[1])
    block = int(item[2]) if len(item) == 3 else 1
    if axis < 0 or block < 1:
        raise ValueError(f"permutation {perm}: {key} needs a non-negative axis and a block of at least 1, not "
                         f"axis {axis}, block {block}.")
    return key, axis, block


@dataclass(frozen=True)
class PermutationSpec:
    """Which (state_dict key, axis) pairs each permutation acts on.

    ``perms`` maps a permutation's name to its entries ``(key, axis)`` or ``(key, axis, block)``
    (``block`` consecutive entries of the axis per unit); they are stored as 3-tuples. An axis of a
    key carries at most one permutation. Keys no permutation names are left as they are.
    ``widths`` (filled in by the builders) gives each permutation's number of units when known:
    tensors of other widths are then refused even where their shapes agree among themselves.
    """

    perms: Mapping[str, Sequence[tuple]]
    widths: Mapping[str, int] | None = None
    by_key: dict[str, dict[int, tuple[str, int]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        perms: dict[str, tuple[AxisEntry, ...]] = {}
        by_key: dict[str, dict[int, tuple[str, int]]] = {}
        for name, items in self.perms.items():
            entries = tuple(_entry(item, name) for item in items)
            if not entries:
                raise ValueError(f"permutation {name} acts on nothing; give it at least one (key, axis).")
            for key, axis, block in entries:
                axes = by_key.setdefault(key, {})
                if axis in axes:
                    raise ValueError(f"axis {axis} of {key} is given to both {axes[axis][0]} and {name}; "
                                     "an axis carries one permutation.")
                axes[axis] = (name, block)
            perms[str(name)] = entries
        if self.widths is not None:
            if set(self.widths) != set(perms):
                raise ValueError("widths must give the number of units of every permutation and of no other.")
            object.__setattr__(self, "widths", {n: int(self.widths[n]) for n in perms})
        object.__setattr__(self, "perms", perms)
        object.__setattr__(self, "by_key", by_key)

    @property
    def names(self) -> tuple[str, ...]:
        """The permutations' names, in the spec's order."""
        return tuple(self.perms)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every state_dict key some permutation acts on."""
        return tuple(self.by_key)

    def sizes(self, tensors: Tensors, *, partial: bool = False) -> dict[str, int]:
        """The number of units of each permutation in ``tensors``, checking that every entry agrees.

        Raises a ValueError (one sentence) when a key is missing (unless ``partial``: then keys
        absent from ``tensors`` are skipped, but each permutation must act on one present key), an
        axis is out of range, a block does not divide its axis, or two entries disagree on a size.
        """
        out: dict[str, int] = {}
        for name, entries in self.perms.items():
            for key, axis, block in entries:
                if key not in tensors:
                    if partial:
                        continue
                    raise ValueError(f"the tensors have no entry {key}, which permutation {name} acts on; "
                                     "they come from another architecture than the spec.")
                shape = tuple(tensors[key].shape)
                if axis >= len(shape) or shape[axis] % block:
                    raise ValueError(f"{key} has shape {shape}, which has no axis {axis} of whole blocks of "
                                     f"{block} for permutation {name}; the tensors come from another architecture.")
                n = shape[axis] // block
                if out.setdefault(name, n) != n:
                    raise ValueError(f"permutation {name} has {out[name]} units elsewhere but {n} on axis {axis} of "
                                     f"{key} (shape {shape}); the tensors come from another architecture.")
            if name not in out:
                raise ValueError(f"the tensors have none of the entries permutation {name} acts on; they come "
                                 "from another architecture than the spec.")
            if self.widths is not None and out[name] != self.widths[name]:
                raise ValueError(f"permutation {name} acts on {self.widths[name]} units but the tensors have "
                                 f"{out[name]}; they come from another architecture than the spec.")
        return out

    @classmethod
    def from_units(cls, state: Tensors, units: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> PermutationSpec:
        """A spec from ``{name: (producers, consumers)}`` of module names of ``state`` (a state_dict).

        A permutation's size is axis 0 of its first producer's ``weight`` (else of its first entry).
        Producers contribute axis 0 of each of their own entries (``module.leaf``) with that many
        rows: weight, bias, BatchNorm running statistics, per-unit activation parameters; scalars
        and shared values are left alone. Consumers contribute axis 1 of their ``weight``, in blocks
        when it is a multiple of the size (a flattened feature map).
        """
        perms: dict[str, list[AxisEntry]] = {}
        widths: dict[str, int] = {}
        for name, (producers, consumers) in units.items():
            if not producers:
                raise ValueError(f"permutation {name} has no producer; name the layer whose outputs it permutes.")
            own = [k for k in _own_entries(state, producers[0]) if state[k].dim() >= 1]
            if not own:
                raise ValueError(f"the state_dict has no entry of module {producers[0]} (permutation {name}).")
            weight = f"{producers[0]}.weight"
            size = int(state[weight if weight in own else own[0]].shape[0])
            entries = [e for module in producers for e in unit_axes(state, module, size)]
            entries += [e for module in consumers for e in input_axes(state, module, size)]
            perms[name] = entries
            widths[name] = size
        return cls(perms, widths)


def _own_entries(state: Tensors, module: str) -> list[str]:
    """The keys ``module.leaf`` of ``state`` (the module's own parameters and buffers, not its children's)."""
    prefix = f"{module}." if module else ""
    return [k for k in state if k.startswith(prefix) and "." not in k[len(prefix):]]


def unit_axes(state: Tensors, module: str, size: int) -> list[AxisEntry]:
    """``(key, 0, 1)`` for every own entry of ``module`` in ``state`` with ``size`` rows (dim >= 1).

    Entries of other sizes (a slope shared by all units, a step counter) are left out; a module with
    no entry at all in ``state`` (a misspelt name) is a ValueError.
    """
    own = _own_entries(state, module)
    if not own:
        raise ValueError(f"the state_dict has no entry of module {module}.")
    return [(k, 0, 1) for k in own if state[k].dim() >= 1 and state[k].shape[0] == size]


def input_axes(state: Tensors, module: str, size: int) -> list[AxisEntry]:
    """``[(module.weight, 1, block)]``: the input axis of a Linear/Conv layer that reads ``size`` units."""
    key = f"{module}.weight"
    if key not in state or state[key].dim() < 2:
        raise ValueError(f"module {module} has no weight with an input axis in the state_dict.")
    width = int(state[key].shape[1])
    if width % size:
        raise ValueError(f"{key} reads {width} inputs, not a multiple of the {size} units before it.")
    return [(key, 1, width // size)]


def chain_spec(state: Tensors, layers: Sequence[str | Sequence[str]]) -> PermutationSpec:
    """The spec of a chain of layers: the outputs of each layer but the last feed the next.

    Each item is a layer's module name or a tuple ``(layer, module, ...)`` of it and the modules
    that follow it with a value per unit (BatchNorm, per-unit activations). The permutation of a
    layer's outputs is named after the layer. Flattening a feature map into a linear layer is
    found from the shapes (the linear layer reads a multiple of the channels).
    """
    groups = [(item,) if isinstance(item, str) else tuple(item) for item in layers]
    if len(groups) < 2:
        raise ValueError("a chain needs at least two layers (one hidden layer of units to permute).")
    return PermutationSpec.from_units(state, {g[0]: (g, [nxt[0]]) for g, nxt in zip(groups[:-1], groups[1:])})


# --- permuting ------------------------------------------------------------------------------------
def _take(t: torch.Tensor, axis: int, perm: torch.Tensor, block: int) -> torch.Tensor:
    perm = perm.to(t.device)
    if block > 1:
        perm = (perm.view(-1, 1) * block + torch.arange(block, device=t.device)).reshape(-1)
    return t.index_select(axis, perm)


def _permuted(t: torch.Tensor, axes: Mapping[int, tuple[str, int]], perms: Mapping[str, torch.Tensor],
              skip: int | None = None) -> torch.Tensor:
    for axis, (name, block) in axes.items():
        if axis != skip:
            t = _take(t, axis, perms[name], block)
    return t


def _check_perms(spec: PermutationSpec, perms: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> None:
    missing = [n for n in sizes if n not in perms]
    if missing:
        raise ValueError(f"no permutation given for {missing[0]}; give one for every permutation of the spec.")
    for name, n in sizes.items():
        p = torch.as_tensor(perms[name])
        if p.dim() != 1 or len(p) != n or not torch.equal(torch.sort(p.cpu()).values, torch.arange(n)):
            raise ValueError(f"the permutation given for {name} is not a permutation of its {n} units.")


def _check_masks(masks: Tensors | None, tensors: Tensors, what: str) -> None:
    for key, m in (masks or {}).items():
        if key not in tensors:
            raise ValueError(f"{what} has a mask for {key}, which the weights do not have.")
        if tuple(m.shape) != tuple(tensors[key].shape):
            raise ValueError(f"{what}: the mask of {key} has shape {tuple(m.shape)} but the weight has "
                             f"{tuple(tensors[key].shape)}.")


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, torch.Tensor], state_dict: Tensors,
                      masks: Tensors | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """``(state_dict, masks)`` with every axis of the spec permuted: weights, biases, BatchNorm
    statistics and masks together.

    Returns new dicts of new tensors (entries no permutation touches are copies); the inputs are
    never changed. Every key of the spec must be in ``state_dict`` (ValueError otherwise); masks
    are ``{key: bool tensor}`` for keys of ``state_dict``, permuted along the same axes.
    """
    sizes = spec.sizes(state_dict)
    _check_perms(spec, perms, sizes)
    _check_masks(masks, state_dict, "masks")
    perms = {n: torch.as_tensor(perms[n], dtype=torch.long) for n in sizes}

    def permute(tensors: Tensors) -> dict[str, torch.Tensor]:
        return {k: (_permuted(v, spec.by_key[k], perms) if k in spec.by_key else v.clone())
                for k, v in tensors.items()}

    return permute(state_dict), (permute(masks) if masks is not None else None)


def invert_permutation(perms: Mapping[str, torch.Tensor]) -> Permutations:
    """The inverse of each permutation: applying ``perms`` then the result changes nothing."""
    return {n: torch.argsort(torch.as_tensor(p)) for n, p in perms.items()}


def random_permutation(spec: PermutationSpec, tensors: Tensors, seed: int = 0) -> Permutations:
    """A uniformly random permutation of every permutation of ``spec`` (sizes from ``tensors``), seeded."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randperm(k, generator=gen) for n, k in spec.sizes(tensors, partial=True).items()}


# --- matching -------------------------------------------------------------------------------------
def _matched(params: Tensors, masks: Tensors | None, spec: PermutationSpec) -> dict[str, torch.Tensor]:
    """The spec's entries of ``params`` as float64 CPU tensors, times their masks."""
    out = {}
    for key in spec.keys:
        if key in params:
            t = params[key].detach().to("cpu", torch.float64)
            if masks is not None and key in masks:
                t = t * masks[key].to("cpu", torch.float64)
            out[key] = t
    return out


def weight_matching(spec: PermutationSpec, params_a: Tensors, params_b: Tensors,
                    masks_a: Tensors | None = None, masks_b: Tensors | None = None, *,
                    seed: int = 0, max_iter: int = 100) -> Permutations:
    """Permutations of network B's units that bring its masked weights closest (L2) to network A's.

    Weight matching (Ainsworth et al. 2022) by coordinate descent: in each sweep, in an order drawn
    from ``seed``, every permutation is in turn re-solved as a linear assignment problem
    (``scipy.optimize.linear_sum_assignment``) on the similarity ``S[i, j]`` = sum over the entries
    it acts on of the inner product of unit ``i`` of A with unit ``j`` of B, B's other axes
    permuted by the current other permutations. A new permutation is kept only when it raises
    ``sum <A, perm(B)>`` over the matched entries, so the distance ``|A - perm(B)|`` never grows;
    the descent stops after a sweep that changes nothing, or after ``max_iter`` sweeps.

    The weights are multiplied by their masks (``{key: bool tensor}``; masked weights are zero in a
    sparse checkpoint anyway). ``params_a`` and ``params_b`` must have the same keys and shapes;
    entries of the spec absent from both are left out of the similarity (pass parameters only to
    keep BatchNorm running statistics out of it; :func:`apply_permutation` still permutes them).

    Returns ``{name: LongTensor}`` for :func:`apply_permutation` on B. Deterministic for a seed.
    Raises a ValueError (one sentence) for tensors that do not fit the spec or each other.
    """
    if set(params_a) != set(params_b):
        extra = sorted(set(params_a) ^ set(params_b))
        raise ValueError(f"the two networks have different entries (e.g. {extra[0]}); they are not one architecture.")
    for key, t in params_a.items():
        if tuple(t.shape) != tuple(params_b[key].shape):
            raise ValueError(f"{key} has shape {tuple(t.shape)} in A but {tuple(params_b[key].shape)} in B; "
                             "they are not one architecture.")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    sizes = spec.sizes(params_a, partial=True)
    _check_masks(masks_a, params_a, "masks_a")
    _check_masks(masks_b, params_b, "masks_b")
    wa, wb = _matched(params_a, masks_a, spec), _matched(params_b, masks_b, spec)
    perms = {n: torch.arange(k) for n, k in sizes.items()}
    names = list(sizes)
    rng = np.random.default_rng(seed)

    def score(name: str) -> float:
        """``sum <A, perm(B)>`` over the entries permutation ``name`` acts on."""
        return sum(float((wa[k] * _permuted(wb[k], spec.by_key[k], perms)).sum())
                   for k, _, _ in spec.perms[name] if k in wa)

    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(names)):
            name, n = names[i], sizes[names[i]]
            sim = torch.zeros(n, n, dtype=torch.float64)
            for key, axis, _ in spec.perms[name]:
                if key not in wa:
                    continue
                b = _permuted(wb[key], spec.by_key[key], perms, skip=axis)
                sim += wa[key].movedim(axis, 0).reshape(n, -1) @ b.movedim(axis, 0).reshape(n, -1).T
            _, cols = linear_sum_assignment(sim.numpy(), maximize=True)
            candidate = torch.as_tensor(cols, dtype=torch.long)
            if torch.equal(candidate, perms[name]):
                continue
            old, current = score(name), perms[name]
            perms[name] = candidate
            # the true objective decides (the similarity is exact unless a key carries `name` twice)
            if score(name) > old + 1e-12 * max(1.0, abs(old)):
                changed = True
            else:
                perms[name] = current
        if not changed:
            break
    return perms


# --- checking a spec ------------------------------------------------------------------------------
@torch.no_grad()
def spec_error(model: nn.Module, spec: PermutationSpec, x: torch.Tensor, *, seed: int = 0) -> float:
    """How far a random permutation of ``model`` (by ``spec``) moves its outputs on ``x``, in eval mode.

    The largest absolute change of an output, relative to the largest absolute output: float
    rounding (about 1e-6 in float32) for a right spec, order 1 for a spec that misses a coupling
    (a residual connection, a normalization layer). ``model`` is not changed.
    """
    state = model.state_dict()
    perms = random_permutation(spec, state, seed)
    permuted, _ = apply_permutation(spec, perms, state)
    other = copy.deepcopy(model).eval()
    other.load_state_dict(permuted)
    reference = copy.deepcopy(model).eval()
    y0, y1 = reference(x), other(x)
    return float((y1 - y0).abs().max() / y0.abs().max().clamp_min(torch.finfo(y0.dtype).tiny))


__all__ = [
    "PermutationSpec",
    "apply_permutation",
    "chain_spec",
    "input_axes",
    "invert_permutation",
    "random_permutation",
    "spec_error",
    "unit_axes",
    "weight_matching",
]
