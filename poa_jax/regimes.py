r"""Regimes of a load sweep and the knee (DESIGN §2.5; the paper's Proposition 4(iii)).

From aggregate latency ``R_i`` at loads ``C_0 < C_1 < … < C_{n−1}`` (concurrency or rate), the
curvature is the second divided difference on the (non-uniform) grid

    s_i = (R_{i+1} − R_i)/(C_{i+1} − C_i)                  (slope of segment i)
    κ_i = 2·(s_i − s_{i−1}) / (C_{i+1} − C_{i−1})

for interior points ``i = 1..n−2`` (exact for a parabola). With ``i* = argmax κ_i`` the point of
maximal curvature, the corner lies in one of the two cells next to ``C_{i*}``: the one whose
other end has the larger curvature (``κ_{i*+1} ≥ κ_{i*−1}``: ``(C_{i*}, C_{i*+1}]``, else
``(C_{i*−1}, C_{i*}]``; when ``i*`` is the first or the last interior point the curvature
beyond the grid is unknown, so is the side, and the interval is ``(C_{i*−1}, C_{i*+1}]``).
That cell is the **knee interval**, and the **knee** is its upper end, the first grid point
past the corner. Regimes:

    slack      C_i < knee          (latency flat: below the knee)
    knee       C_i = knee
    saturated  C_i > knee

A curve without a significant positive curvature has no knee: every point is *slack* and the
knee is ``None``. The curvature at ``i*`` is significant when it exceeds both

* ``1e-9·max|slope|/span`` (a straight line, or a concave curve, up to rounding), and
* the curvature that a perturbation of ``rtol·max|R|`` at the single point ``i*`` would give,
  ``2·rtol·max|R|·(1/h_{i*−1} + 1/h_{i*})/(C_{i*+1} − C_{i*−1})`` (``h`` the grid steps), with
  ``rtol = max(1e-9, 64·ε)`` and ``ε`` the machine epsilon of the latency's dtype (float64 for
  non-float input; ``7.6e-6`` for float32): a flat curve with rounding noise has no knee;

and the latency rises after it (``s_{i*} > 0``: a knee is where a flat curve starts to climb).

Vectorised NumPy over leading axes (host-side post-processing of a sweep).

Example:
  >>> import numpy as np
  >>> from poa_jax import regimes
  >>> c = np.array([8, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512.0])
  >>> r = np.maximum(1.0, c / 96.0)                 # flat, then linear from C = 96
  >>> regimes.knee(c, r).interval
  (96.0, 128.0)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from poa_jax.errors import InputError

__all__ = ["second_difference", "Knee", "knee", "knees", "knee_intervals", "REGIMES", "spread"]

REGIMES = ("slack", "knee", "saturated")


def _check(loads, latency):
    c = np.asarray(loads, np.float64)
    r = np.asarray(latency, np.float64)
    if c.ndim != 1 or c.size < 3:
        raise InputError(f"loads: must be a 1-D grid of at least 3 points, got shape {c.shape}")
    if not np.all(np.diff(c) > 0):
        raise InputError("loads: must be strictly increasing")
    if r.shape[-1] != c.size:
        raise InputError(f"latency: last axis {r.shape[-1]} must match the {c.size} loads")
    return c, r


def _rtol(latency) -> float:
    """Relative rounding tolerance of a curve: ``max(1e-9, 64·ε)`` of its float dtype."""
    dt = getattr(latency, "dtype", None)
    if dt is None:
        dt = np.asarray(latency).dtype
    eps = np.finfo(dt).eps if np.issubdtype(dt, np.floating) else np.finfo(np.float64).eps
    return max(1e-9, 64.0 * float(eps))


def second_difference(loads, latency) -> np.ndarray:
    """``κ (..., n)`` on the grid; ``κ_0 = κ_{n−1} = 0`` (end points have no curvature)."""
    c, r = _check(loads, latency)
    s = np.diff(r, axis=-1) / np.diff(c)  # (..., n−1) slopes
    k = 2.0 * np.diff(s, axis=-1) / (c[2:] - c[:-2])
    pad = np.zeros(r.shape[:-1] + (1,))
    return np.concatenate([pad, k, pad], axis=-1)


class Knee(NamedTuple):
    """The knee of one curve."""

    index: int | None  # i* + 1, the knee's grid index
    value: float | None  # C_{i*+1}
    interval: tuple[float, float] | None  # (C_{i*}, C_{i*+1}]
    regimes: tuple[str, ...]  # one per grid point
    curvature: np.ndarray  # (n,)


def knees(loads, latency) -> tuple[np.ndarray, np.ndarray]:
    """Batched: knee grid index ``(...)`` (−1 where none) and regime codes ``(..., n)``
    (0 slack, 1 knee, 2 saturated)."""
    idx, codes, _ = knee_intervals(loads, latency)
    return idx, codes


def knee_intervals(loads, latency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`knees`, plus the grid index of the knee interval's lower end ``(...)``: the
    interval is ``(C[lo], C[idx]]`` (−1 where no knee)."""
    c, r = _check(loads, latency)
    rtol = _rtol(latency)
    h = np.diff(c)
    s = np.diff(r, axis=-1) / h  # (..., n−1) slopes
    kap = second_difference(c, r)
    scale = np.max(np.abs(s), axis=-1) / (c[-1] - c[0])
    i_star = np.argmax(kap, axis=-1)
    k_star = np.take_along_axis(kap, i_star[..., None], -1)[..., 0]
    # Curvature of a one-point perturbation of rtol·max|R| at each interior point.
    bump = 2.0 * (1.0 / h[:-1] + 1.0 / h[1:]) / (c[2:] - c[:-2])
    bump = np.concatenate([[np.inf], bump, [np.inf]])[i_star]
    with np.errstate(invalid="ignore"):
        noise = rtol * np.max(np.abs(r), axis=-1) * bump
        rising = np.take_along_axis(s, np.minimum(i_star, c.size - 2)[..., None], -1)[..., 0] > 0
        has = (k_star > 1e-9 * np.maximum(scale, 1e-300)) & (k_star > noise) & rising
    has &= np.all(np.isfinite(r), axis=-1)
    # Which cell next to i* holds the corner: the side whose curvature is the larger. A corner
    # inside (C_{i*-1}, C_{i*}) makes κ_{i*-1} > 0 = κ_{i*+1}; one at or past C_{i*}, the other
    # way round (a tie, a corner exactly at C_{i*}, keeps the upper cell). At the last interior
    # point the curvature past the grid is unknown, and at the first one the curvature before
    # it (κ_0 is padding, not a measurement: a corner inside (C_0, C_1) gives κ_2 = 0 = κ_0,
    # the tie of a corner at C_1): the interval spans both cells.
    n = c.size
    k_lo = np.take_along_axis(kap, np.maximum(i_star - 1, 0)[..., None], -1)[..., 0]
    k_hi = np.take_along_axis(kap, np.minimum(i_star + 1, n - 1)[..., None], -1)[..., 0]
    edge = (i_star + 1 >= n - 1) | (i_star <= 1)
    lower = (k_lo > k_hi) & ~edge
    idx = np.where(has, np.where(lower, i_star, i_star + 1), -1)
    lo = np.where(has, np.where(lower | edge, i_star - 1, i_star), -1)
    grid = np.arange(c.size)
    codes = np.where(grid < idx[..., None], 0, np.where(grid == idx[..., None], 1, 2))
    codes = np.where(has[..., None], codes, 0)
    return idx, codes, lo


def knee(loads, latency) -> Knee:
    """The knee of one curve ``latency (n,)`` over ``loads (n,)``."""
    c, r = _check(loads, latency)
    if r.ndim != 1:
        raise InputError("knee: latency must be 1-D (use knees() for batches)")
    idx, codes, lo = knee_intervals(c, latency)  # the latency's dtype sets the rounding tol
    i = int(idx)
    labels = tuple(REGIMES[int(v)] for v in codes)
    kap = second_difference(c, r)
    if i < 0:
        return Knee(None, None, None, labels, kap)
    return Knee(i, float(c[i]), (float(c[int(lo)]), float(c[i])), labels, kap)


def spread(values, axis: int = 0) -> np.ndarray:
    """Relative spread ``(max − min)/min`` along ``axis`` (e.g. PoA across router settings)."""
    v = np.asarray(values, np.float64)
    lo = np.nanmin(v, axis=axis)
    return (np.nanmax(v, axis=axis) - lo) / np.where(lo != 0, lo, np.nan)
