"""Model-agnostic loss-landscape math: parameter vectors, evaluation, HVPs, Lanczos/SLQ, exact Hessian, interpolation.

Works on any ``nn.Module``, loss function and data; masks are plain ``{param_name: bool tensor}``
dicts. Nothing here imports ``sparse_training``, ``analysis`` or ``figures``.

Three modules share their name with their main function: ``lanczos``, ``evaluate`` and
``interpolate``. ``landscape.lanczos`` (and the other two) is the **module**, so
``import landscape.lanczos as lz`` and ``from landscape.lanczos import lanczos`` behave as Python
users expect. The functions are exported here under distinct names, ``lanczos_eigs``,
``evaluate_model`` and ``interpolate_path``; for old code, the three modules are callable and
forward to their function, so ``from landscape import lanczos; lanczos(op, k=5)`` keeps working.
"""
import sys
import types

from .evaluate import EvalResult, iterate_batches, predict_labels, predict_logits
from .evaluate import evaluate as evaluate_model
from .curves import (
    BezierCurve,
    barrier_above_chord,
    barrier_max_minus_mean,
    bezier_point,
    evaluate_curve,
    train_bezier,
)
from .exact import dense_matrix, exact_hessian
from .hessian import (
    HessianOperator,
    LambdaOperator,
    SymmetricOperator,
    gradient,
    layer_groups,
    layer_operators,
)
from .interpolate import (
    PathResult,
    PlaneResult,
    default_alphas,
    filter_normalize,
    plane,
    plane_coordinates,
    project_to_plane,
    random_direction,
    recalibrate_bn,
    slice_1d,
    slice_2d,
)
from .interpolate import interpolate as interpolate_path
from .lanczos import (
    EigenResult,
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    spectral_density,
)
from .lanczos import lanczos as lanczos_eigs
from .params import ParamSpace, flatten_params, unflatten_params, weights_only


class _CallableModule(types.ModuleType):
    """A module that, called, forwards to its function of the same name (backward compatibility)."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


for _name in ("evaluate", "interpolate", "lanczos"):
    sys.modules[f"{__name__}.{_name}"].__class__ = _CallableModule
from . import evaluate, interpolate, lanczos  # noqa: E402  (the modules, not the functions)

__all__ = [
    "BezierCurve",
    "barrier_above_chord",
    "barrier_max_minus_mean",
    "bezier_point",
    "evaluate_curve",
    "train_bezier",
    "layer_groups",
    "layer_operators",
    "project_to_plane",
    "EigenResult",
    "EvalResult",
    "HessianOperator",
    "LambdaOperator",
    "ParamSpace",
    "PathResult",
    "PlaneResult",
    "SpectralDensity",
    "SymmetricOperator",
    "TraceEstimate",
    "default_alphas",
    "dense_matrix",
    "evaluate",
    "evaluate_model",
    "exact_hessian",
    "filter_normalize",
    "flatten_params",
    "gradient",
    "hutchinson_trace",
    "interpolate",
    "interpolate_path",
    "iterate_batches",
    "lanczos",
    "lanczos_eigs",
    "plane",
    "plane_coordinates",
    "predict_labels",
    "predict_logits",
    "random_direction",
    "recalibrate_bn",
    "slice_1d",
    "slice_2d",
    "spectral_density",
    "unflatten_params",
    "weights_only",
]
