"""Heavy-ball momentum in the projection dynamics (``kernels.vi``, the fused kernel, the solvers).

On the cache-on routing family the plain dynamics leave ~5% of the instances unconverged after
1 000 iterations: they sit near an unstable equilibrium whose unstable direction is weak (the
restricted, scaled Jacobian has an eigenvalue of about −0.005) and escape by a factor
``1 + αδ`` per step. Heavy ball with a restart on every reversal escapes at a rate of order
``√δ`` (benchmarks/RESULTS.md, ninth session).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from poa_jax.kernels import pallas_vi, ragged, vi
from poa_jax.kernels.simplex import project_rows

from poa_jax import batching, policies, solvers, synthetic


def _solve(prep, x0, beta, max_steps=1000):
    def one(g, pol, x):
        mask = jnp.broadcast_to(g.worker_mask[None, :], x.shape)
        it = vi.projection_iteration(
            functools.partial(policies.perceived_cost, pol, g),
            functools.partial(policies.perceived_slope, pol, g),
            g.demand, mask, momentum=beta,
        )  # fmt: skip
        res = vi.run(it, x, tol=1e-5, max_steps=max_steps)
        return res.x, res.gap, res.steps, res.status

    return jax.device_get(jax.jit(jax.vmap(one))(prep.game, prep.policy, x0))


def test_heavy_ball_converges_more_instances_in_fewer_iterations():
    prep = batching.prepare(synthetic.random_games(1, 240), None, "float64")
    x0 = jax.vmap(solvers.greedy_start)(prep.game, prep.policy)
    plain = _solve(prep, x0, 0.0)
    heavy = _solve(prep, x0, solvers.EQ_MOMENTUM)
    conv_p, conv_h = plain[3] == 0, heavy[3] == 0
    assert conv_p.mean() < 0.97  # the family has slow instances (else the test shows nothing)
    assert conv_h.mean() >= conv_p.mean() + 0.02
    assert heavy[2].mean() <= 0.7 * plain[2].mean()
    # Every reported equilibrium: on the simplices, gap (recomputed here) within tolerance.
    x = heavy[0][conv_h]
    d = np.asarray(prep.game.demand)[conv_h]
    assert np.all(x >= 0) and np.allclose(x.sum(-1), d, rtol=1e-12, atol=1e-12)

    def gap(g, pol, x):
        mask = jnp.broadcast_to(g.worker_mask[None, :], x.shape)
        return vi.relative_gap(x, policies.perceived_cost(pol, g, x), g.demand, mask)

    sub = jax.tree_util.tree_map(lambda a: a[np.where(conv_h)[0]], (prep.game, prep.policy))
    g = np.asarray(jax.jit(jax.vmap(gap))(*sub, jnp.asarray(x)))
    assert np.all(g <= 1e-5)


def test_momentum_zero_is_the_plain_iteration():
    """``momentum=0`` (the kernel's default) is the plain dynamics, bit for bit."""
    prep = batching.prepare(synthetic.random_games(4, 16), None, "float64")
    x0 = jax.vmap(solvers.greedy_start)(prep.game, prep.policy)

    def default(g, pol, x):
        mask = jnp.broadcast_to(g.worker_mask[None, :], x.shape)
        it = vi.projection_iteration(functools.partial(policies.perceived_cost, pol, g),
                                     functools.partial(policies.perceived_slope, pol, g),
                                     g.demand, mask)  # fmt: skip
        return vi.run(it, x, tol=1e-5, max_steps=300).x

    a = jax.jit(jax.vmap(default))(prep.game, prep.policy, x0)
    b = _solve(prep, x0, 0.0, max_steps=300)[0]
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("beta", [-0.1, 1.0, float("nan")])
def test_bad_momentum_is_refused(beta):
    mask = jnp.ones((2, 2), bool)
    d = jnp.ones(2)
    with pytest.raises(ValueError, match=r"momentum = .*: must be in \[0, 1\)"):
        vi.projection_iteration(lambda x: x, lambda x: jnp.ones_like(x), d, mask, momentum=beta)
    with pytest.raises(ValueError, match=r"momentum = .*: must be in \[0, 1\)"):
        pallas_vi.projection_kernel(lambda *a: None, tol=1e-5, max_iters=10, momentum=beta)
    with pytest.raises(ValueError, match=r"momentum = .*: must be in \[0, 1\)"):
        ragged.projection_iteration(lambda x: x, lambda x: jnp.ones_like(x), d, jnp.arange(2),
                                    jnp.ones(2, bool), momentum=beta)  # fmt: skip


def test_start_state_carries_no_momentum():
    x0 = jnp.ones((2, 3, 4))
    st = pallas_vi.start_state(x0, jnp.ones((2, 4)), jnp.ones((2, 3, 4), bool))
    assert np.all(np.asarray(st.mom) == 0) and np.all(np.asarray(st.mom_next) == 0)
    np.testing.assert_allclose(
        np.asarray(st.x), np.asarray(jax.vmap(project_rows, (-1, -1, None, -1), -1)(
            x0, jnp.ones((2, 4)), None, jnp.ones((2, 3, 4), bool))))  # fmt: skip
