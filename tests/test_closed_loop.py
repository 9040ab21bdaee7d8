"""Closed-loop load model: units of the hit model, capacity, optimum starts, sweep batching and
argument checks (poa_jax.load, poa_jax.serving_sweep)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from poa_jax import load, policies, serving
from poa_jax import serving_sweep as ss
from poa_jax.errors import InputError


def _scaled(p: serving.ServingPreset, s: float) -> serving.ServingPreset:
    """The preset with every time multiplied by ``s`` (every rate divided by ``s``)."""
    g = dataclasses.replace(
        p.gpu, flops=p.gpu.flops / s, hbm_bandwidth=p.gpu.hbm_bandwidth / s,
        nvlink_bandwidth=p.gpu.nvlink_bandwidth / s, nic_bandwidth=p.gpu.nic_bandwidth / s,
    )  # fmt: skip
    return dataclasses.replace(
        p, gpu=g, nvlink_bandwidth=p.nvlink_bandwidth / s, ib_bandwidth=p.ib_bandwidth / s,
        nvlink_latency=p.nvlink_latency * s, ib_latency=p.ib_latency * s,
        residency=p.residency / s, ttft_slo=p.ttft_slo * s, itl_slo=p.itl_slo * s,
    )  # fmt: skip


def test_cache_is_a_flow_by_littles_law():
    """``M_k = B_max/(m·max(α + β B_max, γ B_max))`` requests/s, not ``B_max`` sequences."""
    p = serving.preset("llama70b-1p2d")
    co = serving.coefficients(p)
    md = load.model_arrays(p, 4)
    b = co.decode_bmax
    step = np.maximum(co.decode_alpha + co.decode_beta * b, co.decode_gamma * b)
    np.testing.assert_allclose(md.cache[:2], b / (co.output_tokens * step), rtol=1e-12)
    s = 2.0**-20
    np.testing.assert_allclose(load.model_arrays(_scaled(p, s), 4).cache[:2] * s, md.cache[:2],
                               rtol=1e-9)  # fmt: skip


def test_closed_loop_does_not_depend_on_the_time_unit():
    """Scaling every time by s scales X by 1/s and every latency by s; the hit rate is
    unchanged (the eviction mixed requests/s with a count of sequences: 47% on X, 64× on
    TTFT P99, hit rate 0.49 → 0.0014)."""
    p = serving.preset("llama70b-1p2d")
    c = [8.0, 256.0, 512.0, 4096.0]
    base = load.closed_loop(p, c, policies.dynamo())
    s = 2.0**-20
    a = load.closed_loop(_scaled(p, s), c, policies.dynamo())
    assert base.converged.all() and a.converged.all()
    np.testing.assert_allclose(a.throughput * s, base.throughput, rtol=1e-6)
    np.testing.assert_allclose(a.latency / s, base.latency, rtol=1e-6)
    np.testing.assert_allclose(a.ttft_p99 / s, base.ttft_p99, rtol=1e-6)
    np.testing.assert_allclose(a.hit_rate, base.hit_rate, rtol=1e-6)


def test_closed_loop_stays_below_capacity_and_saturates():
    """A closed loop cannot run above capacity: X·R(X) = C has its root with every ρ < 1 and
    X saturates as C grows (the linear continuation gave ρ_prefill 1.004, 1.099, 1.376)."""
    c = np.array([512.0, 2048.0, 8192.0, 1e5])
    r = load.closed_loop("llama70b-1p2d", c, policies.dynamo())
    assert np.isfinite(r.throughput).all() and np.isfinite(r.latency).all()
    # converged exactly where Little's law met its tolerance (at 1e5 float64 cannot: ~3e-11)
    assert (r.status[:3] == 0).all() and (r.converged == (r.little_residual <= 1e-11)).all()
    np.testing.assert_array_less(r.rho_prefill, 1.0)
    np.testing.assert_array_less(r.rho_decode, 1.0)
    assert (np.diff(r.throughput) >= 0).all() and (np.diff(r.latency) > 0).all()
    # saturation: quadrupling C from 2048 adds < 0.1% throughput
    assert r.throughput[2] < r.throughput[1] * 1.001
    np.testing.assert_array_less(r.little_residual[:3], 1e-9)
    np.testing.assert_allclose(r.throughput * r.latency, c, rtol=1e-8)


def test_closed_loop_far_past_capacity_is_not_called_converged():
    """At C = 1e9 the routing converges but float64 cannot place X finely enough for Little's
    law (residual ~1e-6 against the default 1e-11): the point is out of iterations, not
    converged; a converged point meets both tolerances."""
    r = load.closed_loop("llama70b-1p5d", [64.0, 1e9], policies.dynamo())
    assert np.isfinite(r.throughput).all() and np.isfinite(r.latency).all()
    assert r.status[0] == 0 and r.little_residual[0] <= 1e-11
    assert r.little_residual[1] > 1e-11 and r.status[1] == 1 and not r.converged[1]


def test_closed_loop_optimum_default_starts_beat_equilibrium():
    """The default optimum uses the assignment and the uniform start and keeps the best: it
    is not worse than an equilibrium at the same C (a single start gave R_eq/R_opt = 0.982)."""
    eq = load.closed_loop("llama70b-1p2d", [1e4, 512.0], policies.selfish(), starts=2)
    o = load.closed_loop("llama70b-1p2d", [1e4, 512.0], optimum=True)
    assert o.converged.all()
    assert (eq.latency / o.latency >= 1 - 1e-9).all()


def test_solve_grid_does_not_depend_on_batch_companions():
    """The PoA of a preset is the same alone and with another preset in the batch (the
    optimum took unconverged starts, whose end points depend on the padding)."""
    kw = dict(variants=2, include_baselines=False, chunk=64)
    alone = ss.solve_grid(["llama70b-1p2d"], [64.0, 512.0], **kw)
    both = ss.solve_grid(["llama70b-1p2d", "llama70b-1p5d"], [64.0, 512.0], **kw)
    np.testing.assert_allclose(alone["opt_latency"][0], both["opt_latency"][0], rtol=1e-9)
    np.testing.assert_allclose(alone["poa"][0], both["poa"][0], rtol=1e-9)
    assert (alone["poa"] >= 1.0).all() and (both["poa"] >= 1.0).all()


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"opt_starts": 0}, "opt_starts"),
        ({"starts": 0}, "starts"),
        ({"seed": -1}, "seed"),
        ({"variants": 0}, "variants"),
        ({"max_iters": 0}, "max_iters"),
        ({"tol": -1.0}, "tol"),
        ({"chunk": 0}, "chunk"),
        ({"include_baselines": "yes"}, "include_baselines"),
        ({"concurrency": ["a"]}, "concurrency"),
        ({"concurrency": "8,16"}, "concurrency"),
        ({"presets": []}, "presets"),
        ({"presets": [3]}, r"presets\[0\]"),
    ],
)
def test_solve_grid_validates_every_argument_first(monkeypatch, kw, name):
    def boom(*a, **k):
        raise AssertionError("solved before the arguments were checked")

    monkeypatch.setattr(load, "solve", boom)
    args = {"presets": ["llama70b-1p2d"], "concurrency": [8.0, 16.0]}
    for k in ("presets", "concurrency"):
        if k in kw:
            args[k] = kw.pop(k)
    with pytest.raises(InputError, match=rf"^{name}"):
        ss.solve_grid(args["presets"], args["concurrency"], **kw)
