"""The latency family: every constructor against its classic closed form, finite differences and
``scipy.integrate.quad``; the linear continuation past ``ρ_max·κ``; gradients at the edges."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import poa_jax as pj
from poa_jax import latency as L

INF = float("inf")

# name -> (constructor kwargs, the classic formula in NumPy, the load x̄ where it stops applying)
CASES = {
    "affine": (dict(a=0.7, b=1.3), lambda x: 0.7 + 1.3 * x, INF),
    "polynomial_p1": (dict(a=0.2, c=0.9, p=1.0), lambda x: 0.2 + 0.9 * x, INF),
    "polynomial_p1.5": (dict(a=0.2, c=0.9, p=1.5), lambda x: 0.2 + 0.9 * x**1.5, INF),
    "polynomial_p4": (dict(a=0.0, c=2.0, p=4.0), lambda x: 2.0 * x**4, INF),
    "bpr": (
        dict(t0=1.5, capacity=2.0, alpha=0.15, beta=4.0),
        lambda x: 1.5 * (1 + 0.15 * (x / 2.0) ** 4),
        INF,
    ),
    "mm1": (dict(mu=2.5), lambda x: 1.0 / (2.5 - x), 0.99 * 2.5),
    "mm1_rho0.9": (dict(mu=1.0, rho_max=0.9), lambda x: 1.0 / (1.0 - x), 0.9),
    "davidson": (
        dict(t0=0.8, capacity=3.0, j=0.25),
        lambda x: 0.8 * (1 + 0.25 * x / (3.0 - x)),
        0.99 * 3.0,
    ),
}
MAKERS = {
    "affine": L.affine,
    "polynomial": L.polynomial,
    "bpr": L.bpr,
    "mm1": L.mm1,
    "davidson": L.davidson,
}


def _make(name: str) -> tuple[pj.Latency, object, float]:
    kwargs, formula, xbar = CASES[name]
    return MAKERS[name.split("_")[0]](**kwargs), formula, xbar


def _grid(xbar: float) -> np.ndarray:
    top = 4.0 if np.isinf(xbar) else 0.97 * xbar
    return np.linspace(0.0, top, 41)


def _scalar(lat: pj.Latency, method: str):
    f = jax.jit(lambda x: getattr(lat, method)(x))
    return lambda x: float(f(jnp.float64(x)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_matches_classic_formula(name):
    lat, formula, xbar = _make(name)
    x = _grid(xbar)
    np.testing.assert_allclose(np.asarray(lat.value(x)), formula(x), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(float(lat.saturation()), xbar, rtol=1e-15)


@pytest.mark.parametrize("name", sorted(CASES))
def test_derivative_matches_finite_differences(name):
    lat, formula, xbar = _make(name)
    x = _grid(xbar)[1:]  # one-sided at 0 is checked by the gradient tests below
    h = 1e-6 * np.maximum(x, 1.0)
    fd = (formula(x + h) - formula(x - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(lat.derivative(x)), fd, rtol=1e-7, atol=1e-9)
    # jax.grad goes through the custom JVP: it must give the same derivative.
    grad = jax.vmap(jax.grad(lambda t: lat.value(t)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(lat.derivative(x)), rtol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_second_derivative_matches_finite_differences(name):
    lat, _, xbar = _make(name)
    x = _grid(xbar)[1:]
    h = 1e-5 * np.maximum(x, 1.0)
    d = lambda t: np.asarray(lat.derivative(t))
    fd = (d(x + h) - d(x - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(lat.second_derivative(x)), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(CASES))
def test_integral_matches_quad(name):
    lat, formula, xbar = _make(name)
    value = _scalar(lat, "value")
    for x in _grid(xbar)[::5]:
        ref, err = integrate.quad(value, 0.0, x, epsabs=1e-13, epsrel=1e-13, limit=200)
        assert abs(float(lat.integral(x)) - ref) <= 1e-11 * max(1.0, abs(ref)), (x, ref)
        # and against the classic formula itself (independent of the library's value)
        ref2, _ = integrate.quad(formula, 0.0, x, epsabs=1e-13, epsrel=1e-13, limit=200)
        assert abs(float(lat.integral(x)) - ref2) <= 1e-11 * max(1.0, abs(ref2)), (x, ref2)


SINGULAR = [n for n in sorted(CASES) if np.isfinite(CASES[n][2])]


@pytest.mark.parametrize("name", SINGULAR)
def test_continuation_matches_value_and_slope(name):
    lat, formula, xbar = _make(name)
    kappa = float(np.asarray(lat.kappa))
    v0, s0 = float(lat.value(xbar)), float(lat.derivative(xbar))
    # at x̄ the family still holds: the continuation starts from the true value and slope
    np.testing.assert_allclose(v0, formula(xbar), rtol=1e-12)
    h = 1e-7 * xbar
    np.testing.assert_allclose(s0, (formula(xbar) - formula(xbar - h)) / h, rtol=1e-5)
    # past x̄ it is exactly the tangent line: value and slope match, left and right
    over = xbar + np.array([1e-9, 1e-3, 0.5, 1.0, 10.0, 1e3]) * kappa
    np.testing.assert_allclose(np.asarray(lat.value(over)), v0 + s0 * (over - xbar), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(lat.derivative(over)), s0, rtol=1e-15)
    assert np.all(np.asarray(lat.second_derivative(over)) == 0.0)
    left = float(lat.value(xbar * (1 - 1e-12)))
    np.testing.assert_allclose(left, v0, rtol=1e-9)
    # the integral continues the potential: quad across the kink, with the kink as a breakpoint
    value = _scalar(lat, "value")
    for x in (1.2 * xbar, 2.0 * kappa, 5.0 * kappa):
        ref, _ = integrate.quad(value, 0.0, x, points=[xbar], epsabs=1e-12, epsrel=1e-13)
        np.testing.assert_allclose(float(lat.integral(x)), ref, rtol=1e-11)


@pytest.mark.parametrize("name", SINGULAR)
def test_overload_is_finite_never_nan(name):
    lat, _, _ = _make(name)
    kappa = float(np.asarray(lat.kappa))
    x = kappa * np.array([0.999, 1.0, 1.0 + 1e-12, 1.5, 2.0, 1e3, 1e8])
    for method in ("value", "derivative", "second_derivative", "integral"):
        out = np.asarray(getattr(lat, method)(x))
        assert np.all(np.isfinite(out)), (method, out)
    val = np.asarray(lat.value(x))
    assert np.all(np.diff(val) > 0)  # still increasing past capacity
    g = jax.vmap(jax.grad(lambda t: lat.value(t)))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(g)))


def test_negative_load_is_clamped_to_zero():
    lat = L.Latency(a=0.5, b=1.0, c=1.0, p=2.0, d=0.3, kappa=2.0)
    np.testing.assert_allclose(float(lat.value(-1.0)), float(lat.value(0.0)), rtol=0)
    assert float(lat.integral(-1.0)) == 0.0


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.5])
@pytest.mark.parametrize("kappa", [INF, 2.0])
def test_grad_finite_at_zero_and_infinite_kappa(p, kappa):
    lat = L.Latency(a=0.4, b=0.3, c=0.7, p=p, d=0.5, kappa=kappa)
    g = float(jax.grad(lambda t: lat.value(t))(0.0))
    # ℓ'(0) = b + c·p·0^(p−1) + d/κ: the power term counts only for p = 1
    want = 0.3 + (0.7 if p == 1.0 else 0.0) + (0.5 / kappa if np.isfinite(kappa) else 0.0)
    assert np.isfinite(g)
    np.testing.assert_allclose(g, want, rtol=1e-15)
    # second order through jax.grad as well: finite (the JVP of ℓ' is defined)
    g2 = jax.grad(jax.grad(lambda t: lat.value(t)))(0.5)
    assert np.isfinite(float(g2))
    # κ = ∞ switches the singular term off everywhere, value included
    if np.isinf(kappa):
        x = np.linspace(0, 5, 11)
        np.testing.assert_allclose(np.asarray(lat.value(x)), 0.4 + 0.3 * x + 0.7 * x**p, rtol=1e-14)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("kappa", [INF, 2.0])
def test_second_derivative_at_zero_load(p, kappa):
    # ℓ''(0) = c·p·(p−1)·0^(p−2) + 2d/κ²: 2c for p = 2 (0^0 = 1), 0 for p = 1 and p > 2.
    lat = L.Latency(a=0.4, b=0.3, c=0.7, p=p, d=0.5, kappa=kappa)
    want = (2 * 0.7 if p == 2.0 else 0.0) + (2 * 0.5 / kappa**2 if np.isfinite(kappa) else 0.0)
    np.testing.assert_allclose(float(lat.second_derivative(0.0)), want, rtol=1e-15)
    h = 1e-6  # one-sided: ℓ' is smooth from the right at 0 for these p
    fd = (float(lat.derivative(h)) - float(lat.derivative(0.0))) / h
    np.testing.assert_allclose(float(lat.second_derivative(0.0)), fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("kappa", [INF, 2.0])
def test_integral_gradient_is_value_at_every_load(p, kappa):
    # Λ' = ℓ exactly, 0 included (autodiff through the clamp halved it; x^(p−1) gave NaN at p = 1).
    lat = L.Latency(a=0.4, b=0.3, c=0.7, p=p, d=0.5, kappa=kappa)
    x = jnp.asarray([0.0, 1e-3, 0.5, 1.9, 2.5, 10.0])
    g = jax.vmap(jax.grad(lambda t: lat.integral(t)))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(lat.value(x)), rtol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_grad_of_derivative_is_second_derivative(name):
    # jax.hessian of ℓ (and of x·ℓ(x)) is exact, not ℓ'' silently taken as 0.
    lat, _, xbar = _make(name)
    top = 4.0 if np.isinf(xbar) else 1.5 * xbar  # into the linear continuation
    x = jnp.asarray(np.linspace(0.1, top, 13))
    g2 = jax.vmap(jax.grad(jax.grad(lambda t: lat.value(t))))(x)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(lat.second_derivative(x)), rtol=1e-14)
    hess = jax.vmap(jax.hessian(lambda t: t * lat.value(t)))(x)
    want = 2 * lat.derivative(x) + x * lat.second_derivative(x)
    np.testing.assert_allclose(np.asarray(hess), np.asarray(want), rtol=1e-13)


def _workers(k=5, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        a=rng.uniform(0, 1, k),
        b=rng.uniform(0, 1, k),
        c=rng.uniform(0, 1, k),
        p=np.array([1.0, 2.0, 3.0, 4.0, 1.5]),
        d=rng.uniform(0.1, 1, k),
        kappa=np.array([1.0, 2.0, INF, 3.0, 1.5]),
    )


def _loads(params, batch=3, seed=1):
    scale = np.where(np.isinf(params["kappa"]), 1.0, params["kappa"])
    return np.random.default_rng(seed).uniform(0, 0.9, (batch, len(scale))) * scale


def test_batched_parameters_broadcast_per_worker():
    # One Latency for K heterogeneous workers (fields (1, K)); loads (B, K), batch axis B.
    params = _workers()
    lat = L.Latency(**{n: v[None, :] for n, v in params.items()})
    x = _loads(params)
    out = np.asarray(lat.value(x))
    assert out.shape == x.shape
    for i in range(x.shape[1]):
        one = L.Latency(**{n: v[i] for n, v in params.items()})
        np.testing.assert_allclose(out[:, i], np.asarray(one.value(x[:, i])), rtol=1e-15)


def test_rank_mismatched_load_broadcasts_under_strict_promotion():
    params = _workers()
    x = _loads(params)
    out = np.asarray(L.Latency(**params).value(x))  # fields (K,), load (B, K)
    assert out.shape == x.shape
    s = L.PrefillTime(a=np.ones(5), b=np.ones(5), c=np.ones(5))
    assert np.asarray(s.value(x)).shape == x.shape


def test_prefill_time_is_distserve_quadratic():
    s = L.distserve_prefill(18.10, 0.1019, 7.12e-6)
    n = np.array([0.0, 128.0, 2048.0])
    np.testing.assert_allclose(np.asarray(s.value(n)), 18.10 + 0.1019 * n + 7.12e-6 * n**2)
    np.testing.assert_allclose(np.asarray(s.derivative(n)), 0.1019 + 2 * 7.12e-6 * n)
