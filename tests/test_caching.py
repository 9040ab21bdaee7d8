"""Discrete selfish caching (issue 4): oracles and brute force written here, not the solver's code.

The reference below enumerates all 2ⁿ profiles with itertools and checks every unilateral
deviation node by node in plain Python/NumPy; it shares nothing with ``poa_jax.caching``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import poa_jax as pj
from poa_jax import caching

# --------------------------------------------------------------------------- the reference


def _node_cost(d, alpha, w, m, profile, i):
    if profile[i]:
        return alpha[i]
    dist = min((d[i][j] for j in range(len(profile)) if profile[j]), default=np.inf)
    return 0.0 if w[i] == 0 else w[i] * min(dist, m[i])


def brute_force(d, alpha, w=None, m=None):
    """All pure NE costs (sorted, worst first) and the optimum, by checking every profile."""
    n = len(d)
    alpha = np.broadcast_to(alpha, (n,)).tolist()
    w = [1.0] * n if w is None else list(w)
    m = [np.inf] * n if m is None else list(m)
    eq, opt = [], np.inf
    for prof in itertools.product([False, True], repeat=n):
        costs = [_node_cost(d, alpha, w, m, prof, i) for i in range(n)]
        sc = sum(costs)
        opt = min(opt, sc)
        stable = True
        for i in range(n):
            dev = list(prof)
            dev[i] = not dev[i]
            if _node_cost(d, alpha, w, m, dev, i) < costs[i] - 1e-9:
                stable = False
                break
        if stable:
            eq.append(sc)
    return sorted(eq, reverse=True), opt


def _random_instance(rng, n):
    pts = rng.random((n, 2)) * rng.uniform(0.5, 3.0)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    alpha = rng.uniform(0.2, 1.5, n)
    w = rng.uniform(0.0, 2.0, n) * (rng.random(n) > 0.1)
    m = np.where(rng.random(n) < 0.3, rng.uniform(0.5, 3.0, n), np.inf)
    return d, alpha, w, m


# --------------------------------------------------------------------------- oracles

ORACLES = {
    # name: (distance, α, PoA, PoS, optimum, equilibrium costs (all, worst first) or None)
    "two_clusters": (caching.cluster_distance(2, 5, 0.0, 0.9), 1.0, 2.75, 2.75, 2.0, [5.5] * 10),
    "star": (caching.star_distance(4, 1.0), 1.5, 14 / 11, 1.0, 5.5, [7.0, 5.5]),
    "k5": (caching.complete_distance(5), 2.0, 1.0, 1.0, 6.0, [6.0] * 5),
    "line12": (caching.line_distance(12), 4.5, 32 / 25.5, 26.5 / 25.5, 25.5, None),
}


def test_presets_are_the_issue_topologies():
    star = caching.star_distance(4)
    assert star[0, 1:].tolist() == [1.0] * 4 and star[1, 2] == 2.0
    cl = caching.cluster_distance(2, 5, 0.0, 0.9)
    assert cl[0, 4] == 0.0 and cl[0, 5] == 0.9
    assert caching.line_distance(12)[0, 11] == 11.0


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_oracles_exact(name):
    d, alpha, poa, pos, opt, eqs = ORACLES[name]
    ref_eq, ref_opt = brute_force(d, alpha)
    assert ref_opt == pytest.approx(opt, abs=1e-12)
    r = pj.price_of_anarchy(pj.SelfishCachingGame(d, alpha))
    assert bool(r.exact) and bool(r.converged)
    assert float(r.poa) == pytest.approx(poa, rel=1e-12)
    assert float(r.price_of_stability) == pytest.approx(pos, rel=1e-12)
    assert float(r.optimum_cost) == pytest.approx(opt, rel=1e-12)
    listed = r.equilibrium_costs[~np.isnan(r.equilibrium_costs)]
    np.testing.assert_allclose(listed, ref_eq, rtol=1e-12)
    assert int(r.equilibrium_count) == len(ref_eq)
    if eqs is not None:
        np.testing.assert_allclose(listed, eqs, rtol=1e-12)
    if name == "line12":  # the issue's numbers
        assert len(ref_eq) == 23 and listed[0] == 32.0 and listed[-1] == 26.5


def test_oracles_batched_in_one_call():
    """The three n = 5 oracles and a padded-free batch: one call, per-instance answers."""
    d = np.stack([caching.star_distance(4), caching.complete_distance(5)])
    r = pj.price_of_anarchy(pj.SelfishCachingGame(d, np.array([[1.5], [2.0]])))
    np.testing.assert_allclose(r.poa, [14 / 11, 1.0], rtol=1e-12)
    assert r.equilibrium_costs.shape == (2, caching.KEEP)
    assert r.worst_equilibrium.shape == (2, 5) and r.worst_equilibrium[0].sum() == 4


@pytest.mark.parametrize("n,batch,seed", [(6, 6, 0), (9, 4, 1), (12, 1, 2)])
def test_random_instances_against_brute_force(n, batch, seed):
    rng = np.random.default_rng(seed)
    inst = [_random_instance(rng, n) for _ in range(batch)]
    d, a, w, m = (np.stack(x) for x in zip(*inst, strict=True))
    game = pj.SelfishCachingGame(d, a, w, m)
    r = pj.price_of_anarchy(game)
    ex = caching.enumerate_profiles(game, keep=0)
    for b in range(batch):
        ref_eq, ref_opt = brute_force(d[b], a[b], w[b], m[b])
        assert float(r.optimum_cost[b]) == pytest.approx(ref_opt, rel=1e-12)
        assert int(r.equilibrium_count[b]) == len(ref_eq)
        listed = r.equilibrium_costs[b][~np.isnan(r.equilibrium_costs[b])]
        np.testing.assert_allclose(listed, ref_eq[: caching.KEEP], rtol=1e-12)
        assert float(r.poa[b]) == pytest.approx(ref_eq[0] / ref_opt, rel=1e-12)
        assert float(r.price_of_stability[b]) == pytest.approx(ref_eq[-1] / ref_opt, rel=1e-12)
        # keep = 0 skips the listing but not the exact worst / best / count / optimum
        assert float(ex.worst_cost[b]) == pytest.approx(ref_eq[0], rel=1e-12)
        assert float(ex.best_cost[b]) == pytest.approx(ref_eq[-1], rel=1e-12)
        assert int(ex.equilibrium_count[b]) == len(ref_eq)
        # the reported profiles are what they claim (checked by the reference)
        prof = r.optimum[b].tolist()
        sc = sum(_node_cost(d[b], a[b], w[b], m[b], prof, i) for i in range(n))
        assert sc == pytest.approx(ref_opt, rel=1e-12)


def _numpy_brute_force(d, alpha, w, m):
    """All 2ⁿ profiles at once in NumPy (for n > 12, where the loops above are slow): SC per
    profile summed node by node in node order, and the pure-NE mask."""
    n = len(d)
    bits = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)  # (P, n)
    off = np.where(np.eye(n, dtype=bool), np.inf, d)
    near = np.where(bits[:, None, :], off[None], np.inf).min(-1)  # nearest other replica
    with np.errstate(invalid="ignore"):
        fetch = np.where(w > 0, w * np.minimum(near, m), 0.0)
    sc = np.zeros(2**n)
    for i in range(n):
        sc = sc + np.where(bits[:, i], alpha[i], fetch[:, i])
    tie = 1e-9 * np.maximum(1.0, alpha)
    stable = np.where(bits, fetch >= alpha - tie, fetch <= alpha + tie).all(-1)
    return bits, sc, stable


def test_several_slabs_against_numpy_brute_force():
    """n = 13: the enumeration walks 2 slabs of 2¹² profiles; the optimum, the NE count, the
    worst and best NE and the listing across slabs match, and the reported costs are the
    node-order sums exactly."""
    rng = np.random.default_rng(11)
    n = 13
    inst = [_random_instance(rng, n) for _ in range(2)]
    d, a, w, m = (np.stack(x) for x in zip(*inst, strict=True))
    ex = caching.enumerate_profiles(pj.SelfishCachingGame(d, a, w, m), keep=8)
    for b in range(2):
        bits, sc, stable = _numpy_brute_force(d[b], a[b], w[b], m[b])
        assert ex.optimum_cost[b] == sc.min()
        assert ex.optimum[b].tolist() == bits[np.argmin(sc)].tolist()
        assert ex.equilibrium_count[b] == stable.sum() > 0
        assert ex.worst_cost[b] == sc[stable].max() and ex.best_cost[b] == sc[stable].min()
        k = min(8, int(stable.sum()))
        np.testing.assert_array_equal(ex.equilibrium_costs[b, :k], np.sort(sc[stable])[::-1][:k])


def test_best_response_finds_true_equilibria():
    rng = np.random.default_rng(5)
    n = 8
    inst = [_random_instance(rng, n) for _ in range(5)]
    d, a, w, m = (np.stack(x) for x in zip(*inst, strict=True))
    br = caching.best_response(pj.SelfishCachingGame(d, a, w, m), starts=12, seed=3)
    assert (br.status == 0).all() and br.stable.all()
    for b in range(5):
        ref_eq, _ = brute_force(d[b], a[b], w[b], m[b])
        for s in range(12):
            prof = br.profiles[b, s].tolist()
            costs = [_node_cost(d[b], a[b], w[b], m[b], prof, i) for i in range(n)]
            assert sum(costs) == pytest.approx(br.costs[b, s], rel=1e-12)
            assert any(abs(sum(costs) - e) < 1e-9 for e in ref_eq)
        found = br.equilibrium_costs[b][~np.isnan(br.equilibrium_costs[b])]
        assert len(found) == br.equilibrium_count[b] and np.all(np.diff(found) <= 0)


def test_large_n_path_brackets_the_optimum():
    """The non-exhaustive path on the line of 12: bounds around the exact 25.5."""
    game = pj.SelfishCachingGame(caching.line_distance(12), 4.5)
    r = caching.price_of_anarchy(game, exhaustive_max=0, starts=32)
    assert not bool(r.exact) and bool(r.converged)
    assert float(r.optimum_lower_bound) <= 25.5 + 1e-9 <= float(r.optimum_cost) + 2e-9
    assert float(r.optimum_lower_bound) > 25.0  # the LP relaxation is nearly tight here
    assert 1.0 <= float(r.poa) <= 32 / 25.5 + 1e-12 and float(r.poa_upper) >= float(r.poa)
    ref_eq, _ = brute_force(caching.line_distance(12), 4.5)
    found = r.equilibrium_costs[~np.isnan(r.equilibrium_costs)]
    assert all(any(abs(f - e) < 1e-9 for e in ref_eq) for f in found)


def test_lagrangian_bound_matches_scipy_lp():
    """The bound never exceeds the LP relaxation value (scipy linprog) and nearly reaches it."""
    linprog = pytest.importorskip("scipy.optimize").linprog
    rng = np.random.default_rng(7)
    n = 7
    d, a, w, _ = _random_instance(rng, n)
    # variables: y_j (n), then x_ij (n*n); min Σ α y + Σ w_i d_ij x_ij
    c = np.concatenate([a, (w[:, None] * d).ravel()])
    a_eq = np.zeros((n, n + n * n))
    for i in range(n):
        a_eq[i, n + i * n : n + (i + 1) * n] = 1.0
    a_ub = np.zeros((n * n, n + n * n))
    for i in range(n):
        for j in range(n):
            a_ub[i * n + j, n + i * n + j] = 1.0
            a_ub[i * n + j, j] = -1.0
    lp = linprog(c, A_ub=a_ub, b_ub=np.zeros(n * n), A_eq=a_eq, b_eq=np.ones(n), bounds=(0, 1))
    lb = float(caching.lower_bound(pj.SelfishCachingGame(d, a, w), steps=2000))
    assert lb <= lp.fun + 1e-7
    assert lb >= lp.fun * (1 - 2e-3)
    _, opt = brute_force(d, a, w)
    assert lp.fun <= opt + 1e-9


def test_no_recompile_for_a_new_batch(compile_counter):
    rng = np.random.default_rng(9)
    batches = []
    for _ in range(2):
        inst = [_random_instance(rng, 6) for _ in range(3)]
        batches.append([np.stack(x) for x in zip(*inst, strict=True)])
    pj.price_of_anarchy(pj.SelfishCachingGame(*batches[0]))
    before = compile_counter.solver_count
    pj.price_of_anarchy(pj.SelfishCachingGame(*batches[1]))
    assert compile_counter.solver_count == before


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(distance=-caching.line_distance(3), placement_cost=1.0), r"distance\[0, 1\].*>= 0"),
        (dict(distance=[[0, 1, 2], [1, 0, 1], [2.5, 1, 0]], placement_cost=1.0), "symmetric"),
        (dict(distance=np.ones((3, 3)), placement_cost=1.0), "diagonal must be 0"),
        (dict(distance=caching.line_distance(3), placement_cost=[1.0, 2.0]), "3 nodes"),
        (dict(distance=caching.line_distance(3), placement_cost=-1.0), "placement_cost"),
        (dict(distance=caching.line_distance(3), placement_cost=1.0, demand=[1, 1, 1, 1]),
         "demand"),
        (dict(distance=np.ones((2, 3)), placement_cost=1.0), r"\(\.\.\., n, n\)"),
    ],
)  # fmt: skip
def test_bad_input_is_named_before_compiling(kwargs, match, compile_counter):
    with pytest.raises(pj.InputError, match=match):
        pj.price_of_anarchy(pj.SelfishCachingGame(**kwargs))
    assert compile_counter.solver_count == 0


def test_directed_costs_allowed_when_asked():
    d = np.array([[0.0, 1.0], [3.0, 0.0]])
    r = pj.price_of_anarchy(pj.SelfishCachingGame(d, 2.0, symmetric=False))
    ref_eq, ref_opt = brute_force(d, 2.0)
    assert float(r.optimum_cost) == pytest.approx(ref_opt)
    assert float(r.poa) == pytest.approx(ref_eq[0] / ref_opt)


def test_paradox_search_agrees_with_brute_force():
    rng = np.random.default_rng(11)
    n1 = 6
    inst = [_random_instance(rng, n1) for _ in range(4)]  # with miss costs (some inf)
    d, a, w, m = (np.stack(x) for x in zip(*inst, strict=True))
    out = caching.paradox_search(d, a, w, miss_cost=m)
    for b in range(4):
        full_eq, _ = brute_force(d[b], a[b], w[b], m[b])
        a2 = a[b].copy()
        a2[0] *= 0.5
        cheap_eq, _ = brute_force(d[b], a2, w[b], m[b])
        assert out["capacity_worst"][b] == pytest.approx(cheap_eq[0] - full_eq[0], abs=1e-9)
        assert out["capacity_best"][b] == pytest.approx(cheap_eq[-1] - full_eq[-1], abs=1e-9)
        # adding the last node: the original nodes' cost at the full game's worst (best)
        # equilibrium against the game without it
        small_eq, _ = brute_force(d[b, :-1, :-1], a[b, :-1], w[b, :-1], m[b, :-1])
        full = _equilibria(d[b], a[b], w[b], m[b])
        assert out["node_worst"][b] == pytest.approx(sum(full[0][1][:-1]) - small_eq[0], abs=1e-9)
        assert out["node_best"][b] == pytest.approx(sum(full[-1][1][:-1]) - small_eq[-1], abs=1e-9)
    assert out["instances"] == 4
    assert out["node_worst"].shape == out["capacity_best"].shape == (4,)


def _equilibria(d, alpha, w, m):
    """Every pure NE as ``(SC, node costs)``, worst first (by brute force, as above)."""
    n = len(d)
    out = []
    for prof in itertools.product([False, True], repeat=n):
        costs = [_node_cost(d, alpha, w, m, prof, i) for i in range(n)]
        if all(
            _node_cost(d, alpha, w, m, prof[:i] + (not prof[i],) + prof[i + 1 :], i)
            >= costs[i] - 1e-9
            for i in range(n)
        ):
            out.append((sum(costs), costs))
    return sorted(out, key=lambda e: -e[0])


def test_paradox_search_in_float32_finds_no_paradox_where_there_is_none():
    """A node added far away (it caches for itself only) changes nothing for the others; in
    float32 the enumeration's rounding must not count as a paradox (it counted ~half)."""
    rng = np.random.default_rng(0)
    b, n1 = 64, 7
    pts = rng.random((b, n1, 2)) * 2
    pts[:, -1] = 100.0
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    a = rng.uniform(0.2, 3.0, (b, n1))
    a[:, -1] = 1.0
    w = rng.uniform(0.2, 2.0, (b, n1))
    out = caching.paradox_search(d, a, w, dtype="float32")
    assert out["node_paradox_worst"] == out["node_paradox_best"] == 0
    assert np.abs(out["node_worst"]).max() < 1e-9  # recomputed in float64 from the profiles
    one = caching.paradox_search(d[0], a[0], w[0], dtype="float32")
    assert one["node_worst"].shape == one["capacity_worst"].shape == ()


def test_benchmark_smoke_mode_runs(tmp_path):
    """``benchmarks/bench_caching.py --smoke`` cannot rot; its reference agrees with poa_jax."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import bench_caching

    res = bench_caching.main(["--smoke", "--json", str(tmp_path / "b.json")])
    disc = res["discrete"]
    assert disc["rate"] > 0 and disc["reference"]["rate"] > 0
    assert all(v.split("/")[0] == v.split("/")[1] for v in disc["reference"]["agreement"].values())
    # float32 batched against the float64 reference (the default --fluid-dtype)
    assert res["fluid"]["dtype"] == "float32"
    assert res["fluid"]["reference"]["eq_sc_rel_diff_max"] < 1e-5
    assert res["fluid"]["reference"]["opt_sc_rel_diff_max"] < 1e-4


def test_fluid_step_benchmark_smoke_mode_runs():
    """``benchmarks/bench_fluid_step.py --smoke`` cannot rot: it times the committed descent and
    its trivial-body floor at each width, and the pass calibration."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import bench_fluid_step

    res = bench_fluid_step.main(["--smoke"])
    kinds = {(r["kernel"], r["lanes"]) for r in res["step"]}
    assert kinds == {(k, n) for k in ("descent", "trivial body") for n in (4, 8)}
    assert all(r["us_per_instance_step"] > 0 for r in res["step"])
    assert set(res["pass_us"]) == {"1", "8"} and all(v > 0 for v in res["pass_us"].values())
    assert [r for r in res["step"] if "passes_per_step" in r][0]["lanes"] == 8


# --------------------------------------------------------------------------- the API audit


def test_empty_batch_and_no_nodes_are_named(compile_counter):
    with pytest.raises(pj.InputError, match=r"empty batch .*\(0,\)"):
        pj.price_of_anarchy(pj.SelfishCachingGame(np.zeros((0, 5, 5)), 1.5))
    with pytest.raises(pj.InputError, match="empty batch"):
        pj.price_of_anarchy(pj.SelfishCachingGame(caching.line_distance(3), np.ones((0, 3))))
    with pytest.raises(pj.InputError, match=r"distance has shape \(0, 0\): needs at least one"):
        pj.SelfishCachingGame(np.zeros((0, 0)), 1.5)  # at construction
    assert compile_counter.solver_count == 0


def test_a_game_alone_and_inside_a_batch_give_the_same_results():
    """n = 18 > 16: best response from random starts drawn from the seed alone, the same for
    every instance, so an instance's numbers do not depend on its batch (bit for bit)."""
    rng = np.random.default_rng(1)
    pts = rng.random((3, 18, 2))
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    a = rng.uniform(0.2, 1.0, (3, 18))
    batch = pj.price_of_anarchy(pj.SelfishCachingGame(d, a))
    assert not batch.exact.any()
    assert batch.poa.dtype == batch.optimum_cost.dtype == batch.poa_upper.dtype
    for b in range(3):
        alone = pj.price_of_anarchy(pj.SelfishCachingGame(d[b], a[b]))
        np.testing.assert_array_equal(alone.poa, batch.poa[b])
        np.testing.assert_array_equal(alone.optimum_cost, batch.optimum_cost[b])
        np.testing.assert_array_equal(alone.equilibrium_costs, batch.equilibrium_costs[b])
        assert isinstance(alone.converged, np.ndarray) and alone.converged.shape == ()
    starts = caching.start_profiles(3, 18, 16, seed=5)
    assert (starts == starts[:1]).all()


def test_local_search_start_of_the_wrong_length_is_named(compile_counter):
    star = pj.SelfishCachingGame(caching.star_distance(4), 1.5)
    with pytest.raises(pj.InputError, match="x0 has shape \\(4,\\): its last axis must be the 5"):
        caching.local_search(star, np.zeros(4, bool))
    with pytest.raises(pj.InputError, match="x0 has shape \\(2, 5\\): must broadcast"):
        caching.local_search(star, np.zeros((2, 5), bool))
    assert compile_counter.solver_count == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tol=-5.0), "tol = -5.0: must be finite and > 0"),
        (dict(method="nonsense"), "method 'nonsense'.*must be 'auto'"),
        (dict(starts=0), "starts = 0: must be an integer >= 1"),
        (dict(starts=True), "starts = True"),
        (dict(seed=-1), "seed = -1"),
        (dict(keep=-1), "keep = -1"),
        (dict(max_rounds=2.5), "max_rounds = 2.5"),
        (dict(bound_steps=0), "bound_steps = 0"),
        (dict(exhaustive_max="16"), "exhaustive_max = '16'"),
    ],
)
def test_options_are_checked_on_either_path(kwargs, match, compile_counter):
    """n = 5 takes the exhaustive path, which uses none of these: they are checked anyway."""
    star = pj.SelfishCachingGame(caching.star_distance(4), 1.5)
    with pytest.raises(pj.InputError, match=match):
        caching.price_of_anarchy(star, **kwargs)
    assert compile_counter.solver_count == 0


def test_best_response_checks_tol():
    with pytest.raises(pj.InputError, match="tol = -1"):
        caching.best_response(pj.SelfishCachingGame(caching.star_distance(4), 1.5), tol=-1)


def test_ratios_are_in_the_game_dtype():
    star = pj.SelfishCachingGame(caching.star_distance(4), 1.5)
    r64 = caching.price_of_anarchy(star, dtype=np.float64)
    assert float(r64.poa) == 14 / 11 and r64.poa.dtype == np.float64
    r32 = caching.price_of_anarchy(star, dtype=np.float32)
    for f in ("poa", "price_of_stability", "poa_upper", "optimum_cost", "equilibrium_costs"):
        assert getattr(r32, f).dtype == np.float32, f
    assert r32.poa == np.float32(7.0) / np.float32(5.5)
    for f in ("converged", "exact", "status", "iterations", "equilibrium_count"):
        assert isinstance(getattr(r32, f), np.ndarray), f


@pytest.mark.parametrize(
    "kwargs,match",
    [
        # plain numbers, not np.float64(3.0)
        (dict(distance=[[0, 1.0], [3.0, 0]], placement_cost=1.0),
         r"distance\[0, 1\] = 1\.0 but SelfishCachingGame\.distance\[1, 0\] = 3\.0: must be sym"),
        (dict(distance=[[2.0, 1.0], [1.0, 0]], placement_cost=1.0),
         r"distance\[0, 0\] = 2\.0: the diagonal must be 0"),
        (dict(distance=caching.line_distance(2), placement_cost=None),
         "placement_cost: required, got None"),
        (dict(distance=caching.line_distance(2) * (1 + 1j), placement_cost=1.0),
         "distance: must be real"),
        (dict(distance=caching.line_distance(2), placement_cost=[1.0, 1j]),
         "placement_cost: must be real"),
    ],
)  # fmt: skip
def test_bad_values_are_named_plainly(kwargs, match, compile_counter):
    with pytest.raises(pj.InputError, match=match) as err:
        pj.price_of_anarchy(pj.SelfishCachingGame(**kwargs))
    assert "np.float64" not in str(err.value)
    assert compile_counter.solver_count == 0


def test_symmetric_must_be_a_bool():
    with pytest.raises(pj.InputError, match="symmetric = 'no': must be True or False"):
        pj.SelfishCachingGame(caching.line_distance(2), 1.0, symmetric="no")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: caching.complete_distance(-1), "complete_distance: n = -1: must be an integer"),
        (lambda: caching.complete_distance(3, -1.0), "complete_distance: d = -1.0"),
        (lambda: caching.cluster_distance(2, 2, across=-1), "cluster_distance: across = -1"),
        (lambda: caching.cluster_distance(0, 2), "cluster_distance: nodes = 0"),
        (lambda: caching.cluster_distance(2, 2.5), "cluster_distance: per_node = 2.5"),
        (lambda: caching.line_distance(3, float("nan")), "line_distance: spacing = nan"),
        (lambda: caching.star_distance(0), "star_distance: leaves = 0"),
        (lambda: caching.star_distance(3, leaf_to_leaf=-2.0), "star_distance: leaf_to_leaf"),
    ],
)
def test_presets_check_their_arguments(call, match):
    with pytest.raises(pj.InputError, match=match):
        call()


def test_preset_docstrings_run():
    import doctest

    fns = (caching.complete_distance, caching.cluster_distance, caching.line_distance,
           caching.star_distance)  # fmt: skip
    runner = doctest.DocTestRunner()
    for fn in fns:
        for t in doctest.DocTestFinder().find(fn, globs={}):
            runner.run(t)
    assert runner.failures == 0 and runner.tries >= 2 * len(fns)


@pytest.mark.parametrize("dtype,scale", [(np.float32, 1e-6), (np.float64, 1e-10)])
@pytest.mark.parametrize("name", ["two_clusters", "star"])
def test_equilibria_do_not_depend_on_the_unit_of_cost(name, dtype, scale):
    """Every cost times ``scale`` (transfer times in seconds, say): the same equilibria, PoA
    and PoS. The tie margin was ``tie·max(1, α_i)``, absolute below 1, so every profile of the
    two clusters passed as an equilibrium at these scales (1023 of them, PoA 5)."""
    d, alpha, poa, pos, _, eqs = ORACLES[name]
    game = pj.SelfishCachingGame(d * scale, alpha * scale)
    r = caching.price_of_anarchy(game, dtype=dtype)
    assert int(r.equilibrium_count) == len(eqs)
    assert float(r.poa) == pytest.approx(poa, rel=1e-5)
    assert float(r.price_of_stability) == pytest.approx(pos, rel=1e-5)
    everyone = np.ones(d.shape[0], bool)  # every node caching: no equilibrium in either game
    assert not caching.is_equilibrium(game, everyone, dtype=dtype)
    br = caching.best_response(game, x0=everyone[None], dtype=dtype)
    assert not br.profiles[0].all() and br.stable.all()


@pytest.mark.parametrize(
    "call,match",
    [
        # (3, 4) for n = 3 was reshaped into four starts of three nodes, silently
        (lambda g: caching.best_response(g, x0=np.ones((3, 4), bool)),
         r"x0 has shape \(3, 4\): its last axis must be the 3 nodes"),
        (lambda g: caching.best_response(g, x0=np.full((1, 3), 0.3)),
         r"x0\[0, 0\] = 0\.3: must be a boolean"),
        (lambda g: caching.best_response(g, x0=[[np.nan, 0, 1]]), r"x0\[0, 0\] = nan"),
        (lambda g: caching.local_search(g, [1, 0, 2]), r"x0\[2\] = 2\.0: must be a boolean"),
        (lambda g: caching.social_cost(g, True),  # was an IndexError
         r"x has shape \(\): its last axis must be the 3 nodes"),
        (lambda g: caching.is_equilibrium(g, [0.2, 0, 1]), r"x\[0\] = 0\.2: must be a boolean"),
    ],
)  # fmt: skip
def test_profiles_given_are_checked(call, match, compile_counter):
    with pytest.raises(pj.InputError, match=match):
        call(pj.SelfishCachingGame(caching.line_distance(3), 1.0))
    assert compile_counter.solver_count == 0


def test_no_equilibrium_gives_nan_ratios_on_either_path():
    """A directed game without a pure equilibrium: PoA and PoS NaN, not converged, on the exact
    path and on the best-response path (whose PoS was +inf: the best of none)."""
    d = np.array([[0, 3, 1, 1], [1, 0, 3, 1], [3, 1, 0, 3], [2, 2, 1, 0]], float)
    assert brute_force(d, 2.0) == ([], 6.0)
    game = pj.SelfishCachingGame(d, 2.0, symmetric=False)
    for exhaustive_max in (16, 0):
        r = caching.price_of_anarchy(game, exhaustive_max=exhaustive_max)
        assert np.isnan(r.poa) and np.isnan(r.price_of_stability), exhaustive_max
        assert not r.converged and r.status == 1 and r.equilibrium_count == 0


def test_keep_zero_on_either_path():
    """``keep = 0`` lists no equilibrium on the exact path; the best-response path refused it."""
    star = pj.SelfishCachingGame(caching.star_distance(4), 1.5)
    full = caching.price_of_anarchy(star, exhaustive_max=0)
    for exhaustive_max in (16, 0):
        r = caching.price_of_anarchy(star, keep=0, exhaustive_max=exhaustive_max)
        assert r.equilibrium_costs.shape == (0,)
        assert float(r.poa) == pytest.approx(14 / 11)
    r = caching.price_of_anarchy(star, keep=0, exhaustive_max=0)
    assert r.poa == full.poa and r.equilibrium_count == full.equilibrium_count


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda g: caching.enumerate_profiles(g, chunk=1.5), "chunk = 1.5: must be an integer"),
        (lambda g: caching.enumerate_profiles(g, chunk=-1), "chunk = -1"),
        (lambda g: caching.enumerate_profiles(g, chunk=0), "chunk = 0"),
        (lambda g: caching.enumerate_profiles(g, keep=True), "keep = True"),
        (lambda g: caching.lower_bound(g, lr="0.1"), "lr = '0.1': must be finite and > 0"),
        (lambda g: caching.lower_bound(g, lr=None), "lr = None"),
    ],
)
def test_solver_options_are_named(call, match, compile_counter):
    with pytest.raises(pj.InputError, match=match):
        call(pj.SelfishCachingGame(caching.line_distance(3), 1.0))
    assert compile_counter.solver_count == 0


def test_best_response_path_bounds_the_price_of_stability():
    """Above ``exhaustive_max`` the PoS is best found / best profile found, no bound (local
    search can miss the optimum the LP bound certifies: 1.0 reported against 1.146 here); best
    found / ``optimum_lower_bound`` is the upper bound the docstring names."""
    rng = np.random.default_rng(1)
    pts = rng.random((32, 10, 2)) * rng.uniform(0.5, 3, (32, 1, 1))
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    a, w = rng.uniform(0.1, 2.0, (32, 10)), rng.uniform(0, 2, (32, 10))
    game = pj.SelfishCachingGame(d, a, w)
    exact = caching.price_of_anarchy(game)
    found = caching.price_of_anarchy(game, exhaustive_max=0, starts=4)
    best = found.price_of_stability * found.optimum_cost
    assert (best / found.optimum_lower_bound >= exact.price_of_stability * (1 - 1e-12)).all()
    assert (found.price_of_stability < exact.price_of_stability * (1 - 1e-9)).any()


def test_paradox_search_does_not_depend_on_the_unit_of_cost():
    """The same games with every cost times 1e-6: the same paradoxes (the rise threshold was
    ``TIE·max(1, SC)``, absolute below 1, and missed this one)."""
    rng = np.random.default_rng(11)
    pts = rng.random((64, 6, 2)) * 2
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    a, w = rng.uniform(0.2, 1.5, (64, 6)), rng.uniform(0.2, 2.0, (64, 6))
    unit = caching.paradox_search(d, a, w, dtype="float32")
    small = caching.paradox_search(d * 1e-6, a * 1e-6, w, dtype="float32")
    assert unit["node_paradox_worst"] == 1
    for k in ("node_paradox_worst", "node_paradox_best", "capacity_paradox_worst",
              "capacity_paradox_best"):  # fmt: skip
        assert small[k] == unit[k], k
