"""Closed-loop load model: units of the hit model, capacity, optimum starts, sweep batching and
argument checks (poa_jax.load, poa_jax.serving_sweep)."""

from __future__ import annotations

import dataclasses

import jax
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


def test_final_polish_keeps_points_that_met_littles_law():
    """A point whose loop stopped on both tolerances stays converged: the final Newton polish
    keeps its iterate of least residual (near capacity a step from the root landed a few ulps
    off it: 3 of these 24 points came back out of iterations after 5–11 iterations, with
    residuals 1.0e-11–1.9e-11 against the 1e-11 the loop had met)."""
    c = np.geomspace(1e3, 1e5, 24)
    r = load.closed_loop("llama70b-1p5d", c, policies.dynamo())
    early = r.iterations < 400
    assert early.any() and (r.status[early] == 0).all()
    assert (r.converged == ((r.little_residual <= 1e-11) & (r.gap <= 1e-6))).all()


def _one_point(md=None, wl=None):
    md = load.model_arrays("llama70b-1p2d") if md is None else md
    wl = load.workload("llama70b-1p2d") if wl is None else wl
    b = lambda t: jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (2,) + np.shape(a)), t)
    return b(md), b(wl)


_MD = load.model_arrays("llama70b-1p2d")
_WL = load.workload("llama70b-1p2d")


@pytest.mark.parametrize(
    "md, wl, name",
    [
        (_MD, _WL._replace(mix=_WL.mix * 1.5), r"wl\.mix\[0\]: sums to"),
        (_MD, _WL._replace(tokens=-_WL.tokens), r"wl\.tokens\[0, 0\] = -128"),
        (_MD, _WL._replace(shareable=_WL.shareable * 0 + 2), r"wl\.shareable\[0, 0\] = 2"),
        (_MD._replace(budget=np.float64(64.0)), _WL, r"md\.budget\[0\] = 64.0: must be >="),
        (_MD._replace(budget=np.float64(0.0)), _WL, r"md\.budget\[0\] = 0.0"),
        (_MD._replace(alpha=_MD.alpha * 0), _WL, r"md\.alpha\[0, 0\] = 0.0"),
        (_MD._replace(mask=_MD.mask & False), _WL, r"md\.mask\[0\]: every point"),
        (_MD._replace(residency=_MD.residency * 0), _WL, r"md\.residency\[0, 0\]"),
    ],
)
def test_solve_checks_model_and_workload_first(monkeypatch, md, wl, name):
    """``solve`` applies the rules of a checked preset to raw arrays before compiling: a mix
    summing to 1.5, negative tokens, ``η = 2`` or a budget below a prompt were solved and
    reported converged; a zero budget, ``α = 0`` or no worker came back NaN (status 2)."""

    def boom(*a, **k):
        raise AssertionError("solved before the arrays were checked")

    monkeypatch.setattr(load, "_run_lanes", boom)
    with pytest.raises(InputError, match=rf"^{name}"):
        load.solve(*_one_point(md, wl), policies.dynamo(), np.array([64.0, 512.0]))


def test_solve_checks_leading_axes():
    """Every field has a leading axis N (or 1): an unbatched vector field failed inside NumPy
    or JAX (IndexError, broadcast ValueError) instead of naming the field."""
    md, wl = _one_point()
    with pytest.raises(InputError, match=r"^md\.pa: shape \(2,\): must be \(3,\)"):
        load.solve(md, wl, policies.dynamo(), np.array([8.0, 64.0, 512.0]))
    with pytest.raises(InputError, match=r"^md\.alpha: shape \(2,\): must be \(2, 2\)"):
        load.solve(_MD, wl, policies.dynamo(), np.array([8.0, 64.0]))
    # a budget exactly one prompt long is allowed (the prompt fits in one iteration)
    md1, wl1 = _one_point(_MD._replace(budget=np.float64(_WL.tokens.max())))
    r = load.solve(md1, wl1, policies.dynamo(), np.array([8.0, 64.0]))
    assert r.converged.all() and (r.little_residual <= 1e-11).all()


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"max_iters": 2**40}, "max_iters"),
        ({"extra_iters": 2**31}, "extra_iters"),
        ({"newton": 2.5}, "newton"),
        ({"newton": -1}, "newton"),
        ({"seed": -1}, "seed"),
        ({"chunk": 1.5}, "chunk"),
    ],
)
def test_solve_checks_integer_options_first(monkeypatch, kw, name):
    """The iteration bounds fit the int32 loop counters: ``max_iters = 2**40`` wrapped inside
    the compiled loop (``k < 2**40`` False there, True on the host) and ``solve`` never
    returned; fractional ``newton``/``chunk`` were truncated and a negative ``newton`` or
    ``seed`` accepted."""

    def boom(*a, **k):
        raise AssertionError("solved before the options were checked")

    monkeypatch.setattr(load, "_run_lanes", boom)
    with pytest.raises(InputError, match=rf"^{name} = "):
        load.solve(*_one_point(), policies.dynamo(), np.array([8.0, 64.0]), **kw)


def test_tiny_loads_keep_whole_shares():
    """A load of 1e-300 is a load near 0, latency R(0): the routing step floored each class's
    demand (~2e-301) at 1e-300, so its shares summed to 0.2 and R came back 1/5 of R(0),
    reported converged (open loop 0.082 for 0.409; closed loop, selfish, 0.286)."""
    small = np.array([1e-6, 1e-300])
    for r in (
        load.open_loop("llama70b-1p2d", small, policies.selfish()),
        load.closed_loop("llama70b-1p2d", small, policies.selfish()),
    ):
        assert r.converged.all()
        np.testing.assert_allclose(r.shares.sum(-1), 1.0, rtol=1e-9)
        np.testing.assert_allclose(r.latency[1], r.latency[0], rtol=1e-5)


@pytest.mark.parametrize("which", ["worst", "best"])
def test_pick_prefers_a_finite_start_where_none_converged(which):
    """No start converged: the pick is among the finite ones (argmin/argmax read NaN as the
    extreme, so a NaN start was picked over a finite unconverged one); all NaN: any."""
    n_fields = len(load.ClosedLoop._fields)
    thr = np.array([[np.nan, 2.0, 3.0], [1.0, np.nan, 0.5], [np.nan, np.nan, np.nan]])
    conv = np.zeros_like(thr, bool)
    conv[1, 0] = True  # point 1: the converged start wins whatever the others are
    fields = {f: np.zeros_like(thr) for f in load.ClosedLoop._fields}
    fields.update(throughput=thr, converged=conv, latency=np.arange(9.0).reshape(3, 3))
    picked, n_conv = load.pick(load.ClosedLoop(**fields), which)
    assert len(picked) == n_fields
    want = [2.0 if which == "worst" else 3.0, 1.0]
    np.testing.assert_array_equal(picked.throughput[:2], want)
    assert np.isnan(picked.throughput[2])
    np.testing.assert_array_equal(n_conv, [0, 1, 0])
