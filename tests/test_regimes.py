"""Knee detector (poa_jax.regimes) on synthetic curves with known knees."""

from __future__ import annotations

import numpy as np
import pytest

from poa_jax import regimes
from poa_jax.errors import InputError

GRID = np.array([8, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512.0])


def test_second_difference_exact_on_parabola():
    c = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    k = regimes.second_difference(c, 3.0 * c**2 + c + 1)
    np.testing.assert_allclose(k[1:-1], 6.0, rtol=1e-12)
    assert k[0] == k[-1] == 0


@pytest.mark.parametrize("corner", [2, 3, 4, 5, 6, 7, 8])
def test_hockey_stick_knee_is_first_point_past_the_corner(corner):
    # Flat, then linear from grid point `corner`: curvature is maximal there, the knee is the
    # next grid point and the interval is (C_corner, C_corner+1].
    c0 = GRID[corner]
    r = np.maximum(1.0, GRID / c0)
    k = regimes.knee(GRID, r)
    assert k.interval == (GRID[corner], GRID[corner + 1])
    assert k.value == GRID[corner + 1]
    assert k.regimes[corner] == "slack" and k.regimes[corner + 1] == "knee"
    assert all(x == "saturated" for x in k.regimes[corner + 2 :])


def test_paper_shaped_knee_in_96_128():
    # Closed-loop shape R = max(R0, C/X_max) with saturation at C* = 100 (between 96 and 128):
    # the largest curvature is at 96 (the last grid point before the corner).
    r = np.maximum(0.4, GRID / 250.0)  # C* = 0.4 × 250 = 100
    assert regimes.knee(GRID, r).interval == (96.0, 128.0)


def test_smooth_singular_curve():
    # R = 1/(1 − C/600): curvature grows all the way, the knee is the last grid point; the
    # curvature past the grid is unknown, so the interval spans both cells next to i* = 384.
    r = 1.0 / (1.0 - GRID / 600.0)
    k = regimes.knee(GRID, r)
    assert k.interval == (256.0, 512.0) and k.value == 512.0


@pytest.mark.parametrize("corner", [100.0, 110.0, 115.0, 120.0, 125.0, 140.0, 170.0, 200.0, 300.0])
def test_knee_interval_holds_the_corner_anywhere_in_a_cell(corner):
    # R = max(R0, C/X_max), saturating at C* = corner: the interval must contain C*, wherever
    # C* falls inside its grid cell (before, a corner in the upper part of a cell was reported
    # one cell late, e.g. C* = 115 as (128, 160]).
    r = np.maximum(0.4, GRID * 0.4 / corner)
    lo, hi = regimes.knee(GRID, r).interval
    assert lo < corner <= hi


def test_no_knee_on_a_line_and_batched():
    k = regimes.knee(GRID, 2.0 * GRID + 1.0)
    assert k.value is None and k.interval is None and set(k.regimes) == {"slack"}
    curves = np.stack([np.maximum(1.0, GRID / GRID[c]) for c in (3, 5, 8)] + [GRID * 0 + 1.0])
    idx, codes = regimes.knees(GRID, curves)
    assert idx.tolist() == [4, 6, 9, -1]
    assert codes.shape == curves.shape and (codes[-1] == 0).all()


def test_spread():
    np.testing.assert_allclose(regimes.spread([[1.0, 2.0], [1.1, 2.0]], axis=0), [0.1, 0.0])


def test_bad_grid():
    with pytest.raises(InputError, match="strictly increasing"):
        regimes.knee([1.0, 3.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="at least 3"):
        regimes.knee([1.0, 2.0], [1.0, 2.0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("at", [1, 5, 9])
def test_rounding_noise_on_a_flat_curve_is_no_knee(dtype, at):
    # One ulp at one point of a flat curve is rounding, not a knee (the old slope-relative
    # threshold flagged it: interval (5.0, 6.0) for a bump at index 5).
    c = np.arange(1.0, 12.0)
    r = np.full(11, 0.4, dtype)
    r[at] += np.spacing(dtype(0.4))
    k = regimes.knee(c, r)
    assert k.value is None and k.interval is None and set(k.regimes) == {"slack"}
    idx, _ = regimes.knees(c, np.stack([r, r]))
    assert idx.tolist() == [-1, -1]


def test_real_knee_survives_in_float32_and_a_large_offset():
    r = np.maximum(0.4, GRID / 250.0)
    assert regimes.knee(GRID, r.astype(np.float32)).interval == (96.0, 128.0)
    assert regimes.knee(GRID, 1e3 + r).interval == (96.0, 128.0)


def test_falling_then_flat_curve_has_no_knee():
    # Positive curvature where a falling curve flattens out is not a knee: latency does not rise.
    r = np.maximum(1.0, 3.0 - GRID / 48.0)
    k = regimes.knee(GRID, r)
    assert k.value is None and set(k.regimes) == {"slack"}


@pytest.mark.parametrize("corner", [9.0, 12.0, 15.5, 20.0])
def test_knee_interval_holds_a_corner_in_the_first_cell(corner):
    # Maximal curvature at the first interior point: κ_0 is padding, so a corner inside
    # (C_0, C_1) (κ_2 = 0) and one at C_1 look alike; the interval must span both cells (it
    # was (16, 32] for C* = 9, reporting the knee a cell late).
    r = np.maximum(1.0, GRID / corner)
    lo, hi = regimes.knee(GRID, r).interval
    assert lo < corner <= hi
