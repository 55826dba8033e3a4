"""Model-agnostic loss-landscape math: parameter vectors, evaluation, HVPs, Lanczos/SLQ, exact Hessian, interpolation."""
