"""Model-agnostic loss-landscape math: parameter vectors, evaluation, HVPs, Lanczos/SLQ, exact Hessian, interpolation.

Works on any ``nn.Module``, loss function and data; masks are plain ``{param_name: bool tensor}``
dicts. Nothing here imports ``sparse_training``, ``analysis`` or ``figures``.
"""
from .evaluate import EvalResult, evaluate, iterate_batches, predict_labels, predict_logits
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
    interpolate,
    plane,
    plane_coordinates,
    project_to_plane,
    random_direction,
    recalibrate_bn,
    slice_1d,
    slice_2d,
)
from .lanczos import (
    EigenResult,
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    lanczos,
    spectral_density,
)
from .params import ParamSpace, flatten_params, unflatten_params, weights_only

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
    "exact_hessian",
    "filter_normalize",
    "flatten_params",
    "gradient",
    "hutchinson_trace",
    "interpolate",
    "iterate_batches",
    "lanczos",
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
