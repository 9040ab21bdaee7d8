"""Batched numerical kernels that know nothing about LLM serving.

Contract: every kernel solves **one** instance. Arrays are unbatched (``x: (J, K)`` rows ×
resources); callers apply ``jax.vmap``/``jax.jit`` once, at the edge (``poa_jax.batching``).
Kernels never raise on data: outcomes (gap, steps, status) are returned per instance.
"""

from poa_jax.kernels import descent, loop, simplex, vi
from poa_jax.kernels.descent import minimize_on_simplices, softmax_flows
from poa_jax.kernels.loop import CONVERGED, MAX_ITERS, NONFINITE, LoopResult, iterate
from poa_jax.kernels.simplex import project_rows, project_simplex
from poa_jax.kernels.vi import (
    VIResult,
    extragradient,
    frank_wolfe,
    projection,
    relative_gap,
    smoothed_response,
)

__all__ = [
    "CONVERGED",
    "MAX_ITERS",
    "NONFINITE",
    "LoopResult",
    "VIResult",
    "descent",
    "extragradient",
    "frank_wolfe",
    "iterate",
    "loop",
    "minimize_on_simplices",
    "project_rows",
    "project_simplex",
    "projection",
    "relative_gap",
    "simplex",
    "smoothed_response",
    "softmax_flows",
    "vi",
]
