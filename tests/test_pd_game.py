"""Γ_PD (poa_jax.pd_game): closed-form oracles, the baselines' formulas, the serving game."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from poa_jax import pd_game as pd
from poa_jax.errors import InputError


@pytest.mark.parametrize(
    "w1,w2,g",
    [(2.0, 1.0, 10.0), (1.0, 1.0, 4.0), (3.0, 0.5, 7.0), (1.0, 9.0, 3.0), (5.0, 0.1, 2.0)],
)
def test_variational_equilibrium_log_utilities(w1, w2, g):
    # U_i = w_i log(1 + g_i): equal marginals w1/(1 + g1) = w2/(1 + G − g1).
    want = (w1 * (g + 2) - (w1 + w2)) / (w1 + w2)
    want = min(max(want, 0.0), g)
    got = pd.variational_equilibrium_2(lambda x: w1 * jnp.log1p(x), lambda x: w2 * jnp.log1p(x), g)
    assert float(got) == pytest.approx(want, abs=1e-9)


def test_cournot_duopoly():
    # p = 10 − Q, c = 1: equilibrium 3 each; joint optimum Q = 4.5; welfare ratio 9/8.
    def profit(i, q):
        return q[i] * (10.0 - q.sum()) - q[i]

    q, change = pd.nash_equilibrium(profit, [0.0, 0.0], [10.0, 10.0])
    np.testing.assert_allclose(q, [3.0, 3.0], atol=1e-6)
    assert change < 1e-6
    # joint optimum: one decision maker on total quantity Q, profit Q(9 − Q)
    (qopt,), _ = pd.nash_equilibrium(lambda i, a: a[0] * (9.0 - a[0]), [0.0], [10.0])
    assert qopt == pytest.approx(4.5, abs=1e-6)
    eq_profit = float(profit(0, jnp.asarray(q)) + profit(1, jnp.asarray(q)))
    # q within 1e-6 of 3 each moves the equilibrium profit Q(9 − Q) = 18 by up to 3·2e-6 and
    # the ratio by up to 3.75e-7 (the optimum's profit is flat at 4.5): that is the tolerance.
    assert (qopt * (9 - qopt)) / eq_profit == pytest.approx(9 / 8, abs=4e-7)


def test_kelly_mechanism_poa():
    # Proportional allocation of one unit, payoff a_i w_i/Σw − w_i, a = (1, √2 − 1):
    # efficiency loss (1 + √2)/2 (optimum: everything to user 1, welfare 1).
    a = jnp.array([1.0, math.sqrt(2) - 1])

    def payoff(i, w):
        return a[i] * w[i] / jnp.maximum(w.sum(), 1e-300) - w[i]

    w, change = pd.nash_equilibrium(payoff, [0.0, 0.0], [1.0, 1.0])
    x = w / w.sum()
    assert change < 1e-9
    assert 1.0 / float((np.asarray(a) * x).sum()) == pytest.approx((1 + math.sqrt(2)) / 2, abs=1e-7)


def test_aiconfigurator_worked_example():
    # 2 prefill workers at 100 req/s, 3 decode at 50 req/s, TP 4 → 20 GPUs:
    # min(0.9·200, 0.92·150) / 20 = min(180, 138)/20 = 6.9 req/s per GPU.
    assert float(pd.aiconfigurator_score(200.0, 150.0, 20)) == pytest.approx(6.9)
    # Search: per-worker 100 and 50 req/s, at most 4 workers, TP 1. By hand:
    # (1,1): min(90, 46)/2 = 23; (1,2): min(90, 92)/3 = 30; (1,3): min(90,138)/4 = 22.5;
    # (2,1): min(180,46)/3 = 15.3; (2,2): min(180,92)/4 = 23; (3,1): min(270,46)/4 = 11.5.
    n_p, n_d, score = pd.aiconfigurator_split(100.0, 50.0, 4, 1)
    assert (n_p, n_d) == (1, 2) and score == pytest.approx(30.0)


def test_dynamo_planner_worked_example():
    # 1000 req/s × 128 prompt tokens = 128 000 tokens/s against 50 000 tokens/s per prefill
    # engine → ceil(2.56) = 3; exactly divisible demand is not rounded up.
    assert pd.dynamo_planner(128_000.0, 50_000.0) == 3
    assert pd.dynamo_planner(100_000.0, 50_000.0) == 2
    np.testing.assert_array_equal(pd.dynamo_planner([0.0, 1.0, 51.0], 25.0), [0, 1, 3])


def test_serving_pd_game_invariants():
    rates = np.array([100.0, 400.0, 800.0, 1600.0])
    r = pd.solve_pd("llama70b-1p2d", rates, 16)  # 4 workers of TP 4
    assert r.workers == 4
    for split in (r.selfish, r.variational, r.optimum):
        assert (split.sum(-1) <= 4).all()
    assert (r.poa_selfish >= 1).all() and (r.poa_variational >= 1).all()
    assert (r.goodput_optimum >= r.goodput_variational - 1e-12).all()
    # Rationing happens when demands exceed the budget, and then the budget is used up.
    over = r.demands.sum(-1) > 4
    assert (r.selfish[over].sum(-1) == 4).all()
    assert over.any()


def test_pd_bad_inputs():
    with pytest.raises(InputError, match="ttft_slo"):
        pd.solve_pd("llama70b-1p2d", [100.0], 16, ttft_slo=0.0)
    with pytest.raises(InputError, match="itl_slo"):
        pd.solve_pd("llama70b-1p2d", [100.0], 16, itl_slo=-1.0)
    with pytest.raises(InputError, match="at least one worker"):
        pd.solve_pd("llama70b-1p2d", [100.0], 3)
    with pytest.raises(InputError, match="does not exist.*llama70b-1p5d"):
        pd.solve_pd("llama-7b", [100.0], 16)
    with pytest.raises(InputError, match="rate"):
        pd.solve_pd("llama70b-1p2d", [0.0], 16)


# --------------------------------------------------------------------------- audit fixes

P70 = "llama70b-1p2d"


def test_splits_do_not_depend_on_the_jax_dtype():
    # The tables are float64 whatever the global setting: float32 used to pick (2,4),(3,6),(4,7)
    # here (an extra worker gains 4e-12..2.5e-10 attainment, below float32 resolution).
    import jax

    rates = [1525.0, 2300.0, 2775.0]
    with jax.enable_x64(False):
        r32 = pd.solve_pd(P70, rates, 48)
    r64 = pd.solve_pd(P70, rates, 48)
    for f in ("demands", "selfish", "variational", "optimum", "dynamo", "aiconfigurator"):
        np.testing.assert_array_equal(getattr(r32, f), getattr(r64, f), err_msg=f)
    np.testing.assert_array_equal(r64.optimum, [[3, 4], [4, 6], [4, 8]])
    np.testing.assert_allclose(r32.goodput_optimum, r64.goodput_optimum, rtol=1e-12)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(rates=[]), r"rates: must hold at least one load"),
        (dict(rates=[[1.0, 2.0]]), r"rates: must be a scalar or a 1-D array .* shape \(1, 2\)"),
        (dict(rates=None), r"rates = None"),
        (dict(rates=["a"]), r"rates: must be numbers"),
        (dict(rates=[True]), r"rates: must be numbers"),
        (dict(rates=[1.0, -2.0]), r"rate\[1\] = -2.0: must be finite and > 0"),
        (dict(rates=[1e300]), r"rate\[0\] = 1e\+300: .*int64"),
        (dict(price="x"), r"price = 'x': must be a real number"),
        (dict(price=None), r"price = None: must be a real number"),
        (dict(price=np.array([1e-3, 2e-3])), r"price = .*must be a real number"),
        (dict(price=-1.0), r"price = -1.0: must be finite and >= 0"),
        (dict(ttft_slo=True), r"ttft_slo = True: must be a real number"),
        (dict(itl_slo=float("inf")), r"itl_slo = inf: must be finite and > 0"),
        (dict(gpus=10**6), r"gpus = 1000000: must be <= MAX_GPUS = 4096"),
        (dict(gpus=16.0), r"gpus = 16.0: must be an integer"),
        (dict(p=3, ttft_slo=0.5), r"preset: expected a ServingPreset or a name, got int"),
    ],
)
def test_solve_pd_bad_input_names_field_and_rule(kw, match):
    args = dict(p=P70, rates=[100.0], gpus=16) | kw
    p, rates, gpus = args.pop("p"), args.pop("rates"), args.pop("gpus")
    with pytest.raises(InputError, match=match):
        pd.solve_pd(p, rates, gpus, **args)


def test_solve_pd_accepts_numpy_scalars():
    r = pd.solve_pd(P70, np.float32(100.0), np.int64(16), ttft_slo=np.float32(0.5), price=0)
    r0 = pd.solve_pd(P70, [100.0], 16)
    np.testing.assert_array_equal(r.optimum, r0.optimum)


def test_shareable_one_charges_one_token():
    # η = 1: pool_utilities charges one uncached token; engine_rates used to divide by 0
    # (prefill rate inf, zero Dynamo prefill replicas).
    import dataclasses

    from poa_jax import serving

    p1 = dataclasses.replace(serving.preset(P70), shareable=1.0)
    pr, dr = pd.engine_rates(p1)
    assert math.isfinite(pr) and pr > 0 and math.isfinite(dr)
    pr_one = pd.engine_rates(dataclasses.replace(p1, prompt_tokens=128, shareable=1 - 1 / 128))
    assert pr == pytest.approx(pr_one[0], rel=1e-12)  # n = 1 token either way
    r = pd.solve_pd(p1, [100.0, 1000.0], 16)
    assert (r.dynamo >= 1).all()


def test_dynamo_planner_rejects_overflow_and_nan():
    with pytest.raises(InputError, match=r"demand\[0\] / engine_rate = 1e\+300 replicas"):
        pd.dynamo_planner([1e300], 1.0)
    with pytest.raises(InputError, match=r"demand\[1\] = nan"):
        pd.dynamo_planner([1.0, float("nan")], 1.0)
    with pytest.raises(InputError, match=r"engine_rate = nan"):
        pd.dynamo_planner([1.0], float("nan"))
    assert pd.dynamo_planner(5.0, np.inf) == 0


def test_aiconfigurator_split_matches_brute_force_with_fewer_gpu_ties():
    from fractions import Fraction as F

    rng = np.random.default_rng(0)
    for _ in range(300):
        pr, dr = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        w, tp = int(rng.integers(2, 12)), int(rng.integers(1, 5))
        got = pd.aiconfigurator_split(float(pr), float(dr), w, tp)
        best = min(
            (-min(F(9, 10) * a * pr, F(92, 100) * b * dr) / (a + b), a + b, a, b)
            for a in range(1, w)
            for b in range(1, w - a + 1)
        )
        assert got[:2] == best[2:], (pr, dr, w, tp, got, best)
        assert got[2] == pytest.approx(float(-best[0]) / tp, rel=1e-12)


def test_aiconfigurator_split_is_fast_on_large_budgets():
    import time

    t = time.perf_counter()
    n_p, n_d, _ = pd.aiconfigurator_split(3.7, 1.3, 4096, 1)
    assert time.perf_counter() - t < 0.5  # the O(W²) Python loop took ~7 s
    assert n_p + n_d <= 4096 and n_p >= 1 and n_d >= 1


def test_poa_is_one_when_nothing_meets_the_slo():
    # Documented: PoA = 1 (not inf) when both the equilibrium and the optimum have goodput 0.
    r = pd.solve_pd(P70, [100.0], 16, ttft_slo=1e-9)
    assert r.goodput_optimum[0] == 0 and r.goodput_selfish[0] == 0
    assert r.poa_selfish[0] == 1.0 and r.poa_variational[0] == 1.0
