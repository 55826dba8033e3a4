"""Matrix-free symmetric operators: exact full-data Hessian-vector products in a model's active subspace."""
from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import functional_call
from torch.fx.experimental import const_fold
from torch.fx.experimental.proxy_tensor import make_fx

from .distributed import all_reduce_sum, use_distributed
from .evaluate import (
    DEFAULT_BATCH_SIZE,
    Data,
    LossFn,
    materialize_batches,
    model_device,
    model_dtype,
    train_mode,
)
from .params import Include, Masks, ParamSpace

Method = Literal["forward-over-reverse", "double-backward"]
METHODS: tuple[str, ...] = ("forward-over-reverse", "double-backward")
_CACHE_AFTER = 2  # build the linearization cache at this product at a point


class _Folded:
    """One chunk's cached product: the shared split graph, the chunk's data and its intermediates."""

    def __init__(self, template, x: torch.Tensor, y: torch.Tensor, consts) -> None:
        self.template, self.x, self.y, self.consts = template, x, y, consts

    @property
    def nbytes(self) -> int:
        """Bytes of the chunk's cached intermediates."""
        if self.consts is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self.consts.parameters())

    def __call__(self, *tangents: torch.Tensor) -> list[torch.Tensor]:
        t = self.template  # chunks of one shape share it: bind this chunk's data and constants
        t._chunk_x, t._chunk_y = self.x, self.y
        if self.consts is not None:
            setattr(t, t.fx_const_folded_attrs_name, self.consts)
        t.has_folding_been_run = True
        return t(*tangents)


class SymmetricOperator(ABC):
    """A symmetric matrix known only through ``matvec`` on flat 1-D tensors of length ``size``.

    Subclasses implement ``_matvec``; :meth:`matvec` checks the shape and counts calls in
    ``matvecs``.
    """

    def __init__(self) -> None:
        self.matvecs = 0

    @property
    @abstractmethod
    def size(self) -> int:
        """Length of the vectors the operator acts on."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device of the vectors ``matvec`` takes and returns."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """Dtype of the vectors ``matvec`` takes and returns."""

    @abstractmethod
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``M @ v`` for a vector already on the operator's device and dtype."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``M @ v`` for a 1-D tensor of length ``size`` (moved to the operator's device and dtype)."""
        if v.dim() != 1 or v.shape[0] != self.size:
            raise ValueError(f"expected a vector of shape ({self.size},), got {tuple(v.shape)}.")
        self.matvecs += 1
        return self._matvec(v.to(device=self.device, dtype=self.dtype))

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor:
        """``v^T M``, the same as :meth:`matvec` for a symmetric operator."""
        return self.matvec(v)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def as_linear_operator(self) -> LinearOperator:
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` (NumPy in, NumPy out).

        Every SciPy solver (``eigsh``, ``cg``, ``lobpcg``...) then works on it unchanged.
        """
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(np.asarray(x).reshape(-1)))
            return self.matvec(v).detach().cpu().numpy().astype(np_dtype, copy=False)

        return LinearOperator(
            shape=(self.size, self.size), matvec=mv, rmatvec=mv, dtype=np.dtype(np_dtype)
        )


class LambdaOperator(SymmetricOperator):
    """A :class:`SymmetricOperator` from any callable ``v -> M v`` (for tests and dense matrices)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self._fn = fn
        self._size = int(size)
        self._device = torch.device(device)
        self._dtype = dtype

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> LambdaOperator:
        """The operator ``v -> matrix @ v`` of a square (symmetric) tensor, on its device and dtype."""
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"from_matrix needs a square matrix, got shape {tuple(matrix.shape)}.")
        return cls(lambda v: matrix @ v, matrix.shape[0], device=matrix.device, dtype=matrix.dtype)

    @property
    def size(self) -> int:
        return self._size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._fn(v)


class HessianOperator(SymmetricOperator):
    """Exact Hessian of the mean loss over a whole dataset, restricted to a model's active coordinates.

    ``H = sum_c (n_c / N) * H_c`` over chunks ``c`` of ``n_c`` examples, where ``H_c`` is the Hessian of
    ``loss_fn(model(x_c), y_c)`` (a mean over the chunk) with respect to the vector of a
    :class:`ParamSpace` (masked weights held at their values, normally zero). Vectors have length
    ``space.size``.

    The model is evaluated in **eval mode** (BatchNorm uses its running statistics, Dropout is off),
    so the loss is a sum over examples and chunking is exact. The caller's model is not changed:
    parameters and buffers are snapshot at construction (cast to ``dtype``, moved to ``device``) and
    used through ``torch.func.functional_call``; :meth:`set_point` takes a new snapshot.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(outputs, y)``, a mean over the batch (e.g. ``F.cross_entropy``).
        data: a tensor pair ``(x, y)`` (split into ``chunk_size`` rows) or an iterable of batches;
            moved to ``device`` once and kept there.
        masks: ``{param_name: bool tensor}``; parameters absent are fully active.
        include: parameter filter of the :class:`ParamSpace` (default: all parameters).
        dtype: float32 or float64 (default: the model's dtype).
        chunk_size: rows per chunk for a tensor pair.
        device: where to compute (default: the model's device).
        method: ``"forward-over-reverse"`` (``torch.func.jvp`` of ``torch.func.grad``) or
            ``"double-backward"``; if the forward-over-reverse path fails on its first use (a module
            without forward-mode AD), the operator warns and uses double backward from then on.
        cache: with forward-over-reverse, linearize once (the idea of ``torch.func.linearize``):
            at the second product at a point (so one-off products never pay for tracing, about the
            cost of a product or two), trace the chunk's jvp-of-grad graph and constant-fold everything
            that does not depend on the tangent, so every later product evaluates only tangent
            operations (about half the work for conv nets). The primal intermediates of the whole
            dataset are kept, roughly three times the activations; when the first chunk shows that
            they would exceed ``cache_bytes`` (or half the free CUDA memory), or tracing fails,
            products are recomputed in full instead. ``cache_info`` tells what happened.
            When it is built, the cache checks itself: the previous product (a Lanczos or probe
            vector, effectively random), computed directly, is computed again with the cache, and
            the two must agree to ``10 sqrt(eps)`` relative; if not (e.g. a branch that tracing
            baked in from the first chunk of a shape), it switches itself off with a
            ``RuntimeWarning`` and ``cache_info`` says why. The product it is built at is then
            computed with the cache: building costs the tracing, the folding and one cached
            product, no direct product beyond the first. Any other reason to stay off (tracing
            fails on data-dependent control flow, the memory budget) also warns.
        cache_bytes: memory budget of that cache.
        distributed: sum over the ranks of the initialized ``torch.distributed`` process group
            (each rank gives its shard of the data; products, gradient and loss are all-reduced
            and weighted by the global example count). ``None`` (default): when a group of more
            than one rank is initialized. Every rank must make the same calls.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Data,
        masks: Masks | None = None,
        *,
        include: Include | None = None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = DEFAULT_BATCH_SIZE,
        device: torch.device | str | None = None,
        method: Method = "forward-over-reverse",
        cache: bool = True,
        cache_bytes: int = 2 * 2**30,
        distributed: bool | None = None,
    ) -> None:
        super().__init__()
        self.distributed = use_distributed(distributed)
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
        self.model = model
        self.loss_fn = loss_fn
        self.space = ParamSpace(model, masks, include)
        self._device = model_device(model) if device is None else torch.device(device)
        self._dtype = model_dtype(model) if dtype is None else dtype
        if not self._dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {self._dtype}.")
        self.method: Method = method
        self._forward_ok = False  # forward-over-reverse has worked once: later errors are real
        self._cache_wanted = cache
        self.cache_bytes = int(cache_bytes)
        self._folded: list[Callable[..., list[torch.Tensor]]] | None = None
        self.cache_info = "not built yet" if cache else "off"
        self._variables: dict[str, torch.Tensor] = {}
        self._constants: dict[str, torch.Tensor] = {}
        self.set_point(model)
        self._chunks = materialize_batches(data, chunk_size, self._device, self._dtype)
        self.n_local = sum(int(x.shape[0]) for x, _ in self._chunks)
        count = torch.tensor([self.n_local], dtype=torch.float64, device=self._device)
        self.n = int(all_reduce_sum(count, self.distributed).item())  # over all ranks
        if self.n == 0:
            raise ValueError("the data for the Hessian has no examples.")
        self._weights = [int(x.shape[0]) / self.n for x, _ in self._chunks]

    # ------------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        return self.space.size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def num_chunks(self) -> int:
        """Number of chunks one full-data product goes through."""
        return len(self._chunks)

    def point(self) -> torch.Tensor:
        """The active coordinates of the point where the Hessian is taken."""
        return self.space.to_vector(self._variables)

    # ------------------------------------------------------------------ state
    def set_point(self, source: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Take the parameters (and float buffers) from a module or a state_dict as the new point.

        A state_dict must hold every parameter of the model; buffers it lacks keep their old values.
        """
        if isinstance(source, nn.Module):
            tensors = dict(source.named_parameters())
            tensors.update(dict(source.named_buffers()))
        else:
            tensors = dict(source)
        names = set(self.space.names)
        variables: dict[str, torch.Tensor] = {}
        constants = dict(self._constants)
        model_names = [n for n, _ in self.model.named_parameters()]
        model_names += [n for n, _ in self.model.named_buffers()]
        for name in model_names:
            if name not in tensors:
                if name in constants:
                    continue
                raise KeyError(f"{name} is missing from the point given to the Hessian operator.")
            t = tensors[name].detach()
            t = t.to(self._device, self._dtype) if t.is_floating_point() else t.to(self._device)
            if name in names:
                variables[name] = t
            else:
                constants[name] = t
        # torch.func needs primals and tangents in the same order: the space's order.
        self._variables = {n: variables[n] for n in self.space.names}
        self._constants = constants
        self._folded = None  # the cached graphs hold the old point as constants
        self._reference: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
        self._products_here = 0
        if self._cache_wanted:
            self.cache_info = "not built yet"

    # ------------------------------------------------------------------ products
    def _loss(self, variables: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        out = functional_call(self.model, {**self._constants, **variables}, (x,))
        return self.loss_fn(out, y)

    def _hvp_forward(self, tangent: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
        grad_fn = torch.func.grad(lambda p: self._loss(p, x, y))
        with warnings.catch_warnings():  # torch's first forward-AD use warns about torch.jit
            warnings.simplefilter("ignore", DeprecationWarning)
            _, hv = torch.func.jvp(grad_fn, (self._variables,), (tangent,))
        return hv

    def _hvp_double(self, tangent: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
        names = list(self._variables)
        with torch.enable_grad():
            leaves = {n: self._variables[n].detach().requires_grad_(True) for n in names}
            loss = self._loss(leaves, x, y)
            grads = torch.autograd.grad(
                loss, [leaves[n] for n in names], create_graph=True, allow_unused=True
            )
            pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
            hv: dict[str, torch.Tensor] = {n: torch.zeros_like(leaves[n]) for n in names}
            if pairs:
                second = torch.autograd.grad(
                    [g for _, g in pairs],
                    [leaves[n] for n in names],
                    grad_outputs=[tangent[names[i]] for i, _ in pairs],
                    allow_unused=True,
                )
                for n, h in zip(names, second):
                    if h is not None:
                        hv[n] = h
        return hv

    def _hvp_chunk(self, tangent: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
        if self.method == "double-backward":
            return self._hvp_double(tangent, x, y)
        if self._forward_ok:
            return self._hvp_forward(tangent, x, y)
        try:
            hv = self._hvp_forward(tangent, x, y)
        except Exception as exc:  # torch.func raises many types for unsupported modules
            warnings.warn(
                f"forward-over-reverse HVP failed ({type(exc).__name__}: {exc}); "
                "using double backward instead.",
                RuntimeWarning,
                stacklevel=4,
            )
            self.method = "double-backward"
            return self._hvp_double(tangent, x, y)
        self._forward_ok = True
        return hv

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        tangent = self.space.from_vector(v)
        total = torch.zeros_like(v)
        with train_mode(self.model, False), torch.no_grad():
            self._products_here += 1
            if (
                self._folded is None
                and self._reference is not None
                and self.method == "forward-over-reverse"
                and self._products_here >= _CACHE_AFTER
            ):
                self._build_cache(*self._reference)
                self._reference = None
            if self._folded is not None:
                self._cached_product(self._folded, tangent, total)
            else:
                self._direct_product(tangent, total)
                if self.cache_info == "not built yet" and self.method == "forward-over-reverse":
                    # kept to check the cache against when it is built (copies: the caller owns v)
                    self._reference = (self.space.from_vector(v.clone()), total.clone())
        return all_reduce_sum(total, self.distributed)

    def _cached_product(self, folded: list, tangent: dict[str, torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        """Add this rank's ``H v`` from the linearization cache into ``total``."""
        names = list(self._variables)
        flat = [tangent[n] for n in names]
        for graph, w in zip(folded, self._weights):
            total.add_(self.space.to_vector(dict(zip(names, graph(*flat)))), alpha=w)
        return total

    def _direct_product(self, tangent: dict[str, torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        """Add this rank's uncached ``H v`` into ``total``."""
        for (x, y), w in zip(self._chunks, self._weights):
            hv = self._hvp_chunk(tangent, x, y)
            total.add_(self.space.to_vector(hv), alpha=w)
        return total

    def _cache_agrees(self, folded: list, tangent: dict[str, torch.Tensor], direct: torch.Tensor
                      ) -> tuple[bool, float]:
        """The cached local product of ``tangent`` against its ``direct`` one: (agree, relative error)."""
        cached = self._cached_product(folded, tangent, torch.zeros_like(direct))
        scale = float(torch.linalg.vector_norm(direct))
        err = float(torch.linalg.vector_norm(cached - direct)) / max(scale, 1e-300)
        tol = 10 * torch.finfo(self._dtype).eps ** 0.5
        return (err <= tol or scale == 0.0 and float(torch.linalg.vector_norm(cached)) == 0.0), err

    # ------------------------------------------------------------------ linearization cache
    def _trace_chunk_hvp(self, x: torch.Tensor, y: torch.Tensor) -> torch.fx.GraphModule:
        """FX graph of ``(tangents..., x, y) -> H_chunk tangents`` with the point baked in."""
        names = list(self._variables)
        primals = [self._variables[n] for n in names]

        def hvp_of(tangents: list[torch.Tensor], xc: torch.Tensor, yc: torch.Tensor):
            grad_fn = torch.func.grad(lambda p: self._loss(p, xc, yc))
            with fwAD.dual_level():
                duals = {n: fwAD.make_dual(p, t) for n, p, t in zip(names, primals, tangents)}
                out = grad_fn(duals)
                res = []
                for n, p in zip(names, primals):
                    t = fwAD.unpack_dual(out[n]).tangent
                    res.append(torch.zeros_like(p) if t is None else t)
                return res

        tangents = [torch.zeros((), dtype=p.dtype, device=p.device).expand_as(p) for p in primals]
        with warnings.catch_warnings():  # torch's first forward-AD use warns about torch.jit
            warnings.simplefilter("ignore", DeprecationWarning)
            return make_fx(hvp_of)(tangents, x, y)

    @staticmethod
    def _split(graph: torch.fx.GraphModule, x: torch.Tensor, y: torch.Tensor):
        """The traced graph with the data as attributes, split into a tangent-free part and the rest.

        Done once per chunk shape; :meth:`_fold` then evaluates the tangent-free part per chunk.
        """
        with warnings.catch_warnings():  # deep-copying pytree specs and splitting warn harmlessly
            warnings.simplefilter("ignore")
            g = copy.deepcopy(graph.graph)
            gm = torch.fx.GraphModule(graph, g)
            gm.register_buffer("_chunk_x", x)
            gm.register_buffer("_chunk_y", y)
            placeholders = [node for node in g.nodes if node.op == "placeholder"]
            for node, attr in zip(placeholders[-2:], ("_chunk_x", "_chunk_y")):
                with g.inserting_after(node):
                    node.replace_all_uses_with(g.get_attr(attr))
                g.erase_node(node)
            gm.recompile()
            return const_fold.split_const_subgraphs(gm)

    @staticmethod
    def _fold(template, x: torch.Tensor, y: torch.Tensor) -> _Folded:
        """A chunk's tangent-free intermediates (kept, not copied as torch's ``run_folding`` does)."""
        consts = None
        if template.const_subgraph_module is not None and template.fx_const_folded_attrs_name:
            sub = template.const_subgraph_module
            sub._chunk_x, sub._chunk_y = x, y
            out = sub()
            as_param = lambda t: nn.Parameter(  # noqa: E731 - wraps without copying
                t if isinstance(t, torch.Tensor) else torch.tensor([t], device=x.device), requires_grad=False)
            consts = nn.ParameterList([as_param(t) for t in out]) if isinstance(out, tuple) else as_param(out)
        return _Folded(template, x, y, consts)

    def _cache_budget(self) -> int:
        budget = self.cache_bytes
        if self._device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self._device)
            budget = min(budget, free // 2)
        return budget

    def _build_cache(self, tangent: dict[str, torch.Tensor], direct: torch.Tensor) -> None:
        """Trace and fold every chunk's product; keep it if it reproduces ``direct`` (this rank's product of ``tangent``)."""
        templates: dict[tuple, object] = {}
        folded = []
        used = 0
        try:
            for x, y in self._chunks:
                key = (tuple(x.shape), tuple(y.shape))
                if key not in templates:
                    templates[key] = self._split(self._trace_chunk_hvp(x, y), x, y)
                graph = self._fold(templates[key], x, y)
                used += graph.nbytes
                projected = used * self.n_local / sum(int(c.shape[0]) for c, _ in self._chunks[: len(folded) + 1])
                if projected > self._cache_budget():
                    self.cache_info = (
                        f"off: would need about {projected / 2**20:.0f} MiB, over the budget"
                    )
                    warnings.warn(f"HVP cache {self.cache_info}; products are recomputed in full.",
                                  RuntimeWarning, stacklevel=4)
                    return
                folded.append(graph)
        except Exception as exc:  # tracing can fail on data-dependent code: recompute instead
            self.cache_info = f"off: tracing failed ({type(exc).__name__})"
            warnings.warn(f"HVP cache {self.cache_info}; products are recomputed in full.",
                          RuntimeWarning, stacklevel=4)
            return
        agree, err = self._cache_agrees(folded, tangent, direct)
        if not agree:
            self.cache_info = (
                f"off: cached products disagreed with direct ones (relative error {err:.1e}; "
                "data-dependent control flow in the model?)"
            )
            warnings.warn(f"HVP cache {self.cache_info}; products are recomputed in full.",
                          RuntimeWarning, stacklevel=4)
            return
        self._folded = folded
        self._forward_ok = True
        self.cache_info = f"on: {used / 2**20:.0f} MiB of primal intermediates"

    def gradient(self) -> torch.Tensor:
        """Gradient of the full-data mean loss in the active subspace (reverse mode, chunked)."""
        names = list(self._variables)
        total = torch.zeros(self.size, dtype=self._dtype, device=self._device)
        with train_mode(self.model, False), torch.enable_grad():
            leaves = {n: self._variables[n].detach().requires_grad_(True) for n in names}
            for (x, y), w in zip(self._chunks, self._weights):
                grads = torch.autograd.grad(
                    self._loss(leaves, x, y), [leaves[n] for n in names], allow_unused=True
                )
                g = {n: torch.zeros_like(leaves[n]) if t is None else t for n, t in zip(names, grads)}
                total.add_(self.space.to_vector(g), alpha=w)
        return all_reduce_sum(total, self.distributed)

    @torch.no_grad()
    def loss(self) -> float:
        """The full-data mean loss at the current point (eval mode)."""
        total = torch.zeros(1, dtype=torch.float64, device=self._device)
        with train_mode(self.model, False):
            for (x, y), w in zip(self._chunks, self._weights):
                total += w * self._loss(self._variables, x, y).double()
        return float(all_reduce_sum(total, self.distributed))


def gradient(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    masks: Masks | None = None,
    *,
    include: Include | None = None,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
) -> torch.Tensor:
    """Gradient of the mean loss over all of ``data`` in the active subspace (eval mode, chunked).

    Arguments as for :class:`HessianOperator` (``distributed``: ``data`` is this rank's shard and
    the gradient is all-reduced); the result has length ``ParamSpace(model, masks, include).size``.
    """
    op = HessianOperator(
        model, loss_fn, data, masks, include=include, dtype=dtype, chunk_size=chunk_size,
        device=device, cache=False, distributed=distributed,
    )
    return op.gradient()


def layer_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Parameter names grouped by the module that owns them (``fc1`` -> ``fc1.weight``, ``fc1.bias``).

    Modules appear in ``named_parameters`` order; a layer's block of the Hessian is taken over its
    group's coordinates.
    """
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return {layer: tuple(names) for layer, names in groups.items()}


def layer_operators(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    masks: Masks | None = None,
    *,
    groups: Mapping[str, tuple[str, ...]] | None = None,
    **kwargs,
) -> dict[str, HessianOperator]:
    """One :class:`HessianOperator` per layer: the diagonal block of the Hessian over that layer's active coordinates.

    The block of layer ``l`` is ``H[I_l, I_l]`` with ``I_l`` the layer's coordinates in the full
    active space (weights where the mask is True, and its biases); the other layers are held fixed,
    so its eigenvalues are the curvature along directions that move only that layer. ``groups``
    maps a layer name to its parameter names (default :func:`layer_groups`); other keyword
    arguments go to :class:`HessianOperator`.
    """
    groups = layer_groups(model) if groups is None else groups
    ops: dict[str, HessianOperator] = {}
    for layer, names in groups.items():
        wanted = frozenset(names)
        layer_masks = {n: m for n, m in (masks or {}).items() if n in wanted}
        ops[layer] = HessianOperator(
            model, loss_fn, data, layer_masks, include=lambda n, p, w=wanted: n in w, **kwargs
        )
    return ops


__all__ = [
    "HessianOperator",
    "LambdaOperator",
    "SymmetricOperator",
    "gradient",
    "layer_groups",
    "layer_operators",
]
