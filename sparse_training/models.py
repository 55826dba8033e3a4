"""Model registry: LeNet-5, LeNet-300-100, configurable MLPs, MNIST-1D nets, CIFAR VGG-16 and ResNet-18.

Every builder takes ``input_shape`` and ``num_classes`` plus a ``width`` multiplier, so a
same-capacity small-dense network (Tessera et al.) can be found by scaling widths. Each
model records the name of its hidden activation in ``model.nonlinearity`` so initializers
can pick the matching gain.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError


def _corners(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four strided corners of every 2x2 window (top-left, top-right, bottom-left, bottom-right,
    the row-major order max_pool2d scans a window in), odd last rows/columns dropped."""
    h, w = x.shape[-2:]
    x = x[..., : h - h % 2, : w - w % 2]
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def max_pool2x2_values(x: torch.Tensor) -> torch.Tensor:
    """The values of ``F.max_pool2d(x, 2)`` (2x2 windows, stride 2, odd edges dropped) as three
    elementwise maxima of the windows' four strided corners, without the arg-max indices.

    The maxima are exact, so every element equals max_pool2d's (NaN where its window holds a NaN);
    only the sign of a zero may differ where a window holds both -0.0 and +0.0.
    """
    a, b, c, d = _corners(x)
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


@functools.cache
def _kernels():
    """The compiled kernels of :mod:`sparse_training.kernels`, or None where numba cannot be imported."""
    try:
        from . import kernels
    except ImportError:  # numba missing or broken: the usual modules run
        return None
    return kernels


class _ReLUMaxPool2x2(torch.autograd.Function):
    """``max_pool2d(relu(x), 2)`` with the values and the gradient ATen's kernels give, bit for bit,
    each in one compiled pass (:mod:`sparse_training.kernels`).

    ATen sends a window's gradient to its first maximum in row-major order and the ReLU's backward then
    zeroes it where that maximum is not positive; the forward records, per output, which corner won and
    whether it is positive (one byte), and the backward routes the gradient by it.
    :func:`fused_relu_pools` decides where it is used (no ``torch.func`` support).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, code = _kernels().relu_max_pool2x2_forward(x)
        ctx.save_for_backward(code)
        ctx.in_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (code,) = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return _kernels().relu_max_pool2x2_backward(grad, code, ctx.in_shape)
        # double backward (create_graph=True): the same routing, assembled differentiably
        h, w = ctx.in_shape[-2:]
        a, b, c, d = (grad * (code == 4 + k).to(grad.dtype) for k in range(4))
        rows = torch.stack((torch.stack((a, b), -1), torch.stack((c, d), -1)), -3)  # (.., H/2, 2, W/2, 2)
        full = rows.reshape(*ctx.in_shape[:-2], h - h % 2, w - w % 2)
        return F.pad(full, (0, w % 2, 0, h % 2))


_FUSED_POOLS: contextvars.ContextVar[bool] = contextvars.ContextVar("fused_relu_pools", default=False)


@contextlib.contextmanager
def fused_relu_pools() -> Iterator[None]:
    """Inside this block, LeNet-5's ReLU + 2x2 max-pool pairs on a CPU run as one fused autograd
    function wherever reverse-mode gradients are recorded (training steps, metrics gradients): the same
    values and the same first-order gradients, bit for bit, in less time: one compiled pass each way
    (:mod:`sparse_training.kernels`, numba) where ATen's CPU max-pool also finds int64 arg-max indices
    and its backward scatters into a zeroed tensor. Under a ``torch.func`` transform, a forward-AD
    level, no_grad or inference mode, for dtypes other than float32/float64, on other devices, and
    where numba cannot be imported, the usual modules run even inside the block. Double backward
    (``create_graph=True``) works; its products equal ATen's up to float rounding.
    """
    token = _FUSED_POOLS.set(True)
    try:
        yield
    finally:
        _FUSED_POOLS.reset(token)


def _kernel_input(x: torch.Tensor) -> bool:
    """Whether the compiled kernels of :mod:`sparse_training.kernels` can take ``x``: a 4-D float32/float64
    CPU tensor outside forward-mode AD and ``torch.func`` transforms, with numba importable."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and torch.autograd.forward_ad._current_level < 0
            and not torch._C._functorch.is_functorch_wrapped_tensor(x) and _kernels() is not None)


def _fuses(x: torch.Tensor) -> bool:
    """Whether the fused ReLU + max-pool applies to ``x`` here (see :func:`fused_relu_pools`)."""
    return _FUSED_POOLS.get() and x.requires_grad and torch.is_grad_enabled() and _kernel_input(x)


def relu_max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(F.relu(x), 2)``; the fused function of :func:`fused_relu_pools` where it applies."""
    return _ReLUMaxPool2x2.apply(x) if _fuses(x) else F.max_pool2d(F.relu(x), 2)


class _SparseConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight * mask, bias)`` (stride 1, no padding) computed over the active weights only
    (:mod:`sparse_training.kernels`); the weight gradient is zero where the mask is False."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                mask: torch.Tensor) -> torch.Tensor:
        taps = _kernels().conv_taps(mask, x.shape[-1])
        ctx.save_for_backward(x, weight, mask)
        ctx.taps, ctx.has_bias = taps, bias is not None
        return _kernels().sparse_conv2d_forward(x, weight, bias, taps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward (create_graph=True): the same products, differentiably
            grad_x = (torch.nn.grad.conv2d_input(x.shape, weight * mask, grad)
                      if ctx.needs_input_grad[0] else None)
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad) * mask
            grad_b = grad.sum((0, 2, 3))
        else:
            grad_x, grad_w, grad_b = _kernels().sparse_conv2d_backward(x, weight, ctx.taps, grad,
                                                                        ctx.needs_input_grad[0])
        return grad_x, grad_w, (grad_b if ctx.has_bias else None), None


# id(weight) -> its mask, set by sparse_kernels
_SPARSE_MASKS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("sparse_kernels", default=None)

SPARSE_MAX_DENSITY = 0.1  # above it oneDNN's dense convolution is the faster one (benchmarks.train_step)


@contextlib.contextmanager
def sparse_kernels(model: nn.Module, masks, max_density: float = SPARSE_MAX_DENSITY) -> Iterator[None]:
    """Inside this block, LeNet-5's convolutions on a CPU compute only the weights its ``masks`` keep
    (a :class:`~sparse_training.masks.Masks` or a dict of boolean tensors by parameter name) where a
    layer's density is at most ``max_density``: about that fraction of the dense multiply-adds, in
    compiled loops (:mod:`sparse_training.kernels`).

    The values equal ``F.conv2d`` with the masked weights up to float rounding (another summation
    order), so results are reproducible run to run but not bit-identical to the dense path. Weights
    the mask drops are never read, and **their gradient is zero**: use the block only where the
    masked gradient is wanted (training steps of a masked run, masked gradient-flow rows, evaluation),
    never for a dense gradient such as RigL's growth criterion. ``masks=None`` makes it a no-op.
    Under a ``torch.func`` transform or a forward-AD level, for other dtypes, devices or conv
    settings, the usual convolution runs. Double backward works (by dense products, masked).
    """
    mapping = None
    if masks is not None and _kernels() is not None:
        mapping = {}
        for name, param in model.named_parameters():
            if name in masks and param.dim() == 4:
                mask = masks[name]
                if mask.device.type == "cpu" and float(mask.sum()) <= max_density * mask.numel():
                    mapping[id(param)] = mask
    token = _SPARSE_MASKS.set(mapping or None)
    try:
        yield
    finally:
        _SPARSE_MASKS.reset(token)


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, over the active weights only inside :func:`sparse_kernels` where it applies."""
    mapping = _SPARSE_MASKS.get()
    mask = mapping.get(id(conv.weight)) if mapping is not None else None
    if (mask is None or not _kernel_input(x) or conv.weight.dtype != x.dtype
            or torch._C._functorch.is_functorch_wrapped_tensor(conv.weight) or conv.stride != (1, 1)
            or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1
            or conv.padding_mode != "zeros"):
        return conv(x)
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad
                                    or (conv.bias is not None and conv.bias.requires_grad)):
        return _SparseConv2d.apply(x, conv.weight, conv.bias, mask)
    return _kernels().sparse_conv2d_forward(x, conv.weight, conv.bias, _kernels().conv_taps(mask, x.shape[-1]))


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)``, faster where nothing is differentiated: on the CPU under
    ``torch.inference_mode`` (evaluation) it computes only the values (:func:`max_pool2x2_values`),
    several times faster than ATen's CPU kernel, which also finds the indices its backward needs.

    Everywhere else (training, gradients, Hessian products, ``torch.func`` transforms, forward-mode
    AD, which inference mode switches off, and CUDA) it is ``F.max_pool2d(x, 2)`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_inference_mode_enabled():
            return max_pool2x2_values(x)
        return F.max_pool2d(x, 2)


class SReLU(nn.Module):
    """S-shaped ReLU (Jin et al. 2016), the activation of SET and of Tessera et al.'s study.

    Piecewise linear with four learnable parameters per unit (``num_features`` of them, or one set
    shared by all units): ``t_r + a_r (x - t_r)`` for ``x >= t_r``, ``x`` between the thresholds,
    ``t_l + a_l (x - t_l)`` for ``x <= t_l``. It starts as a leaky ReLU of slope 0.2 (``t_l = 0``,
    ``a_l = 0.2``, ``t_r = 1``, ``a_r = 1``; the right part is then the identity), so it has the
    same init gain as that leaky ReLU and every parameter gets a gradient from the first step.
    """

    INIT = {"t_left": 0.0, "a_left": 0.2, "t_right": 1.0, "a_right": 1.0}

    def __init__(self, num_features: int = 1):
        super().__init__()
        self.t_left, self.a_left, self.t_right, self.a_right = (
            nn.Parameter(torch.full((num_features,), v)) for v in self.INIT.values())

    def reset_parameters(self) -> None:
        """Back to the initial leaky-ReLU shape."""
        with torch.no_grad():
            for name, value in self.INIT.items():
                getattr(self, name).fill_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # one value per unit / channel (dim 1)
        tl, al, tr, ar = (p.reshape(shape) for p in (self.t_left, self.a_left, self.t_right, self.a_right))
        right = tr + ar * (x - tr)
        left = tl + al * (x - tl)
        return torch.where(x >= tr, right, torch.where(x <= tl, left, x))


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "prelu": nn.PReLU,
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "srelu": SReLU,
}


def make_activation(name: str, num_features: int = 1) -> nn.Module:
    """Return a fresh activation module by name (relu|prelu|swish|elu|sigmoid|tanh|srelu).

    ``num_features`` is the number of units the activation follows; only SReLU uses it (one set of
    parameters per unit). PReLU keeps one shared slope.
    """
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise UserError(
            f"unknown activation '{name}'; choose one of {', '.join(ACTIVATIONS)}."
        ) from None
    return factory(num_features) if factory is SReLU else factory()


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    return int(math.prod(input_shape))


class LeNet5(nn.Module):
    """LeNet-5 as in Evci et al.: valid 5x5 convs (6, 16), 2x2 max-pools, 256-120-84-10, ReLU."""

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10, width: float = 1.0,
                 activation: str = "relu", sizes: tuple[int, int, int, int] | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise UserError(f"lenet5 needs image input (C, H, W); this dataset gives {tuple(input_shape)}.")
        if sizes is not None and len(sizes) != 4:
            raise UserError(f"lenet5 takes 4 sizes (conv1, conv2, fc1, fc2 channels/units), not {tuple(sizes)}.")
        c, h, w = input_shape
        c1, c2, f1, f2 = (_scaled(n, width) for n in (sizes or (6, 16, 120, 84)))
        self.conv1 = nn.Conv2d(c, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        hh, ww = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if hh < 1 or ww < 1:
            raise UserError(f"lenet5 needs images of at least 16x16 pixels, not {h}x{w}.")
        self.fc1 = nn.Linear(c2 * hh * ww, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)
        self.act = make_activation(activation)
        self.pool = MaxPool2x2()
        self.nonlinearity = activation

    def _act_pool(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.act) is nn.ReLU and type(self.pool) is MaxPool2x2 and _fuses(x):
            return _ReLUMaxPool2x2.apply(x)
        return self.pool(self.act(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act_pool(conv2d(self.conv1, x))
        x = self._act_pool(conv2d(self.conv2, x))
        x = torch.flatten(x, 1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


class MLP(nn.Module):
    """Fully connected network with optional BatchNorm and identity skip connections.

    Hidden layer ``i`` maps ``widths[i-1] -> widths[i]``; with ``skip=True`` a hidden layer whose
    input and output widths agree adds its input to its output (a residual MLP block).
    """

    def __init__(self, input_shape=(784,), num_classes: int = 10, widths=(300, 100),
                 activation: str = "relu", batchnorm: bool = False, skip: bool = False,
                 width: float = 1.0):
        super().__init__()
        dims = [_flat_dim(tuple(input_shape))] + [_scaled(w, width) for w in widths]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(
            (nn.BatchNorm1d(b) if batchnorm else nn.Identity()) for b in dims[1:]
        )
        self.acts = nn.ModuleList(make_activation(activation, b) for b in dims[1:])
        self.head = nn.Linear(dims[-1], num_classes)
        self.skip = skip
        self.nonlinearity = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer, norm, act in zip(self.layers, self.norms, self.acts):
            y = act(norm(layer(x)))
            x = x + y if self.skip and y.shape == x.shape else y
        return self.head(x)


class MNIST1DCNN(nn.Module):
    """The 1-D CNN of the MNIST-1D paper: three stride-2 convs of 25 channels, then a linear head."""

    def __init__(self, input_shape=(40,), num_classes: int = 10, width: float = 1.0,
                 activation: str = "relu"):
        super().__init__()
        length = input_shape[-1]
        ch = _scaled(25, width)
        self.conv1 = nn.Conv1d(1, ch, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(ch, ch, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(ch, ch, 3, stride=2, padding=1)
        out_len = length
        for k, s, p in ((5, 2, 1), (3, 2, 1), (3, 2, 1)):
            out_len = (out_len + 2 * p - k) // s + 1
        self.head = nn.Linear(ch * out_len, num_classes)
        self.act = make_activation(activation)
        self.nonlinearity = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, -1)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        return self.head(torch.flatten(x, 1))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """CIFAR VGG-16: 13 3x3 convs (optional BatchNorm), five max-pools, one linear classifier."""

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10, width: float = 1.0,
                 batchnorm: bool = True, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        c = input_shape[0]
        for v in _VGG16:
            if v == "M":
                layers.append(MaxPool2x2())
                continue
            out = _scaled(int(v), width)
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(make_activation(activation))
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.nonlinearity = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BatchNorm and an identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem, four stages of two basic blocks (64-128-256-512), linear head."""

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10, width: float = 1.0,
                 activation: str = "relu"):
        super().__init__()
        widths = [_scaled(w, width) for w in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = make_activation(activation)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(2):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, activation))
                cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.nonlinearity = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.act(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _lenet300(input_shape, num_classes, width=1.0, activation="relu", batchnorm=False, sizes=None):
    if sizes is not None and len(sizes) != 2:
        raise UserError(f"lenet300 takes 2 sizes (hidden units), not {tuple(sizes)}.")
    return MLP(input_shape, num_classes, tuple(sizes or (300, 100)), activation, batchnorm, False, width)


def _mlp(input_shape, num_classes, width=1.0, activation="relu", batchnorm=False, skip=False,
         depth=3, hidden=256):
    return MLP(input_shape, num_classes, (hidden,) * depth, activation, batchnorm, skip, width)


def _mnist1d_mlp(input_shape, num_classes, width=1.0, activation="relu", batchnorm=False):
    return MLP(input_shape, num_classes, (100, 100), activation, batchnorm, False, width)


def _lenet5(input_shape, num_classes, width=1.0, activation="relu", sizes=None):
    return LeNet5(input_shape, num_classes, width, activation, sizes)


def _mnist1d_cnn(input_shape, num_classes, width=1.0, activation="relu"):
    return MNIST1DCNN(input_shape, num_classes, width, activation)


def _vgg16(input_shape, num_classes, width=1.0, activation="relu", batchnorm=True):
    return VGG16(input_shape, num_classes, width, batchnorm, activation)


def _resnet18(input_shape, num_classes, width=1.0, activation="relu"):
    return ResNet18(input_shape, num_classes, width, activation)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": _lenet5,
    "lenet300": _lenet300,
    "mlp": _mlp,
    "mnist1d-mlp": _mnist1d_mlp,
    "mnist1d-cnn": _mnist1d_cnn,
    "vgg16": _vgg16,
    "resnet18": _resnet18,
}

DEFAULT_INPUT = {
    "lenet5": (1, 28, 28), "lenet300": (1, 28, 28), "mlp": (1, 28, 28),
    "mnist1d-mlp": (40,), "mnist1d-cnn": (40,), "vgg16": (3, 32, 32), "resnet18": (3, 32, 32),
}


def build_model(name: str, input_shape: tuple[int, ...] | None = None, num_classes: int = 10,
                **options) -> nn.Module:
    """Build a model by registry name.

    ``options`` may hold ``width`` (multiplier on every hidden width), ``activation``,
    ``batchnorm``, for ``mlp`` also ``depth``, ``hidden`` and ``skip``, and for ``lenet5`` /
    ``lenet300`` explicit hidden ``sizes`` (4 / 2 of them).
    Parameters come out with PyTorch's default init; call :func:`sparse_training.init.initialize`.
    """
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}.")
    accepted = list(inspect.signature(MODELS[name]).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"model '{name}' does not take {', '.join(unknown)}; it takes {', '.join(accepted)}.")
    shape = tuple(input_shape) if input_shape is not None else DEFAULT_INPUT[name]
    return MODELS[name](shape, num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (weights, biases, norm parameters)."""
    return sum(p.numel() for p in model.parameters())
