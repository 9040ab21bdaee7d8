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
    assert (qopt * (9 - qopt)) / eq_profit == pytest.approx(9 / 8, abs=1e-9)


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
