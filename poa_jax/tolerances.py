"""Default tolerances and iteration bounds, keyed by dtype, in one place.

float32 resolves costs to ~1e-7 relative, so the float32 default is a relative gap of 1e-5; it is
*not* one every instance reaches: an audit of the float32 optimum under overload (load 0.9–1.6)
found only 54% of instances converged (float64, at its 1e-9 default, 99.8%). The ``converged``
flags are honest, so such instances are reported, not hidden; use float64 there. float64
defaults to 1e-9, which puts PoA oracles within 1e-8.

A reported gap is never finer than the dtype resolves
(:func:`poa_jax.kernels.vi.gap_resolution`, about ``2·eps``: 2.4e-7 in float32), so a float32
solve at ``tol`` below that reports every instance unconverged rather than "gap 0". The gap is
measured in the working dtype, so a float32 "converged" can hide a true gap of up to ~2× tol
(optima; ~1.1× for equilibria) from the rounding of the costs themselves.
"""

from __future__ import annotations

import numpy as np

__all__ = ["default_tol", "DEFAULT_MAX_ITERS", "DEFAULT_STARTS"]

_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}

#: Iteration bound of every best-response / polish loop.
DEFAULT_MAX_ITERS = 1000
#: Equilibrium starts used by :func:`poa_jax.price_of_anarchy`.
DEFAULT_STARTS = 4


def default_tol(dtype) -> float:
    """Default relative-gap tolerance for ``dtype`` (float32 or float64)."""
    return _TOL[np.dtype(dtype)]
