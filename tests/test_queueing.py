"""Tail latency (poa_jax.queueing) against closed forms and seeded Monte-Carlo queues.

The simulations use Lindley's recursion ``W_{n+1} = max(0, W_n + S_n − A_{n+1})`` and a
batch-means confidence interval (the samples are correlated): the run is cut into ``B`` batches,
the statistic is computed per batch, and the CI is the whole-run statistic ± 3 standard errors
of the batch statistics (≈ 99.7%).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from poa_jax import queueing as qu


def _lindley(rng, lam, service, n):
    a = rng.exponential(1.0 / lam, n)
    w = np.empty(n)
    w[0] = 0.0
    for i in range(1, n):  # cheap enough at n = 2e5 for a test
        w[i] = max(0.0, w[i - 1] + service[i - 1] - a[i])
    return w


def _batch_ci(x, stat, batches=20):
    # Centre: the statistic on the whole run (a batch quantile is biased low for small batches);
    # half-width: 3 standard errors from the spread of the batch statistics.
    vals = np.array([stat(b) for b in np.array_split(x, batches)])
    se = vals.std(ddof=1) / math.sqrt(batches)
    return stat(x) - 3 * se, stat(x) + 3 * se


@pytest.fixture(scope="module")
def mm1_samples():
    rng = np.random.default_rng(7)
    lam, mu, n = 0.6, 1.0, 400_000
    s = rng.exponential(1.0 / mu, n)
    w = _lindley(rng, lam, s, n)
    return lam, mu, (w + s)[5_000:]  # sojourn = wait + own service; burn-in dropped


def test_mm1_quantile_closed_form():
    assert float(qu.mm1_sojourn_quantile(0.99, 0.5, 1.0)) == pytest.approx(math.log(100) / 0.5)
    assert float(qu.mm1_sojourn_cdf(math.log(100) / 0.5, 0.5, 1.0)) == pytest.approx(0.99)
    assert math.isinf(float(qu.mm1_sojourn_quantile(0.99, 1.0, 1.0)))


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_mm1_percentiles_match_simulation(mm1_samples, q):
    lam, mu, t = mm1_samples
    lo, hi = _batch_ci(t, lambda b: np.quantile(b, q))
    assert lo <= float(qu.mm1_sojourn_quantile(q, lam, mu)) <= hi


def test_mg1_tail_is_exact_for_mm1():
    # With exponential service (c_s² = 1) the M/G/1 form reproduces the M/M/1 sojourn quantile.
    lam, mu = 0.7, 1.0
    for q in (0.5, 0.9, 0.99):
        got = qu.mg1_sojourn_quantile(q, lam, 1.0 / mu, scv=1.0, shift=0.0)
        # wait quantile of M/M/1: P(W > t) = ρ e^{−(μ−λ)t}; sojourn differs by the own service
        want = max(0.0, math.log(lam / mu / (1 - q)) / (mu - lam))
        assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_md1_mean_wait_matches_simulation():
    rng = np.random.default_rng(11)
    lam, s, n = 0.8, 1.0, 200_000
    w = _lindley(rng, lam, np.full(n, s), n)[5_000:]
    lo, hi = _batch_ci(w, np.mean)
    assert lo <= float(qu.mg1_mean_wait(lam, s, 0.0)) <= hi  # Pollaczek–Khinchine (exact)
    # The exponential tail is an approximation for deterministic service (the heavy-traffic
    # limit): at ρ = 0.8 it over-estimates P90 by ~6% and P99 by ~10% — conservative, within 15%.
    for q in (0.9, 0.99):
        approx = float(qu.mg1_sojourn_quantile(q, lam, s, 0.0, shift=0.0))
        sim = np.quantile(w, q)
        assert sim <= approx <= 1.15 * sim
    assert np.mean(w == 0) == pytest.approx(1 - lam, abs=0.01)


def test_mixture_quantile_matches_simulation():
    # Two M/M/1 workers, requests split 70/30: the pooled sojourn time is the mixture.
    rng = np.random.default_rng(3)
    parts = []
    for lam, mu, share in ((0.63, 1.0, 0.7), (0.27, 0.5, 0.3)):
        n = int(300_000 * share)
        s = rng.exponential(1.0 / mu, n)
        parts.append(((_lindley(rng, lam, s, n) + s)[2_000:], lam, mu, share))
    for q in (0.5, 0.9, 0.99):
        got = float(qu.mixture_quantile(
            q, jnp.array([0.7, 0.3]), jnp.zeros(2), jnp.ones(2),
            jnp.array([1.0 - 0.63, 0.5 - 0.27]),
        ))  # fmt: skip
        # CI by batch means over paired batches of both workers' samples
        b = 40
        vals = []
        for i in range(b):
            xs = [np.array_split(p[0], b)[i] for p in parts]
            wts = [np.full(len(x), p[3] / len(x)) for x, p in zip(xs, parts, strict=True)]
            x, wt = np.concatenate(xs), np.concatenate(wts)
            order = np.argsort(x)
            cdf = np.cumsum(wt[order]) / wt.sum()
            vals.append(x[order][np.searchsorted(cdf, q)])
        vals = np.array(vals)
        se = vals.std(ddof=1) / math.sqrt(b)
        assert vals.mean() - 3 * se <= got <= vals.mean() + 3 * se
        # and the bisection is exact on the model's own CDF
        cdf = qu.mixture_cdf(got, jnp.array([0.7, 0.3]), jnp.zeros(2), jnp.ones(2),
                             jnp.array([0.37, 0.23]))  # fmt: skip
        assert float(cdf) == pytest.approx(q, abs=1e-12)


def test_mm1_sojourn_cdf_unstable_queue_is_zero():
    # λ ≥ μ: the queue grows without bound, the sojourn time is infinite, P(T ≤ t) = 0
    # (the old formula returned 1 − e^{t} = −1.718 at λ = 2, μ = 1, t = 1).
    got = np.asarray(qu.mm1_sojourn_cdf(jnp.asarray([1.0, 5.0, 0.0]), 2.0, 1.0))
    np.testing.assert_array_equal(got, 0.0)
    assert float(qu.mm1_sojourn_cdf(1.0, 1.0, 1.0)) == 0.0  # critical load λ = μ
    assert float(qu.mm1_sojourn_cdf(1.0, 0.5, 1.0)) == pytest.approx(-math.expm1(-0.5))


@pytest.mark.parametrize("x64", [False, True])
def test_module_doctest_float32_and_float64(x64):
    import doctest

    import jax

    with jax.enable_x64(x64):
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for t in finder.find(qu, "poa_jax.queueing", globs={}):
            runner.run(t)
        assert runner.failures == 0 and runner.tries > 0
