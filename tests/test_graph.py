"""Graph games: shortest-path kernels, Braess, the TNTP networks, the parallel special case,
the disaggregated topologies, and bad input.

Published answers (Bar-Gera's TNTP repository): SiouxFalls UE Beckmann objective
4 231 335.28710744 and link flows (``SiouxFalls_flow.tntp``), system optimum total travel time
7 194 256.05; the TNTP Braess example's flows 4, 2, 2, 2, 4, cost 552, optimum 498, PoA 92/83.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from poa_jax.kernels import graphs
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

import poa_jax as pj
from poa_jax import topology as T

SIOUX_UE_BECKMANN = 4_231_335.28710744
SIOUX_SO_TSTT = 7_194_256.05


# --------------------------------------------------------------------------- kernels


def _random_graph(rng, v, e):
    tail = rng.integers(0, v, e)
    head = (tail + rng.integers(1, v, e)) % v  # no self-loops
    return tail, head


@pytest.mark.parametrize("seed", range(4))
def test_shortest_paths_match_scipy_dijkstra(seed):
    rng = np.random.default_rng(seed)
    v, e = 12, 40
    tail, head = _random_graph(rng, v, e)
    cost = rng.uniform(0.1, 5.0, e)
    cost[rng.uniform(size=e) < 0.15] = np.inf  # absent links
    origins = np.array([0, 3, 7])
    inl = graphs.in_links(head, v)
    thru = np.ones(v, bool)
    sp = jax.jit(lambda c: graphs.shortest_paths(c, tail, origins, inl, thru))
    dist, pred = sp(jnp.asarray(cost))
    # scipy keeps the cheapest of parallel links
    w = np.full((v, v), np.inf)
    for t, h, c in zip(tail, head, cost, strict=True):
        w[t, h] = min(w[t, h], c)
    fin = np.isfinite(w)
    ref = dijkstra(csr_matrix((w[fin], np.nonzero(fin)), shape=(v, v)), indices=origins)
    np.testing.assert_allclose(np.asarray(dist), ref, rtol=1e-12)
    # predecessor links are consistent with the distances
    dist, pred = np.asarray(dist), np.asarray(pred)
    for oi in range(len(origins)):
        for node in range(v):
            if pred[oi, node] >= 0:
                link = pred[oi, node]
                assert head[link] == node
                assert dist[oi, tail[link]] + cost[link] == pytest.approx(dist[oi, node])


def test_shortest_paths_respect_centroids_and_aon_matches_brute_force():
    # 0 → 1 → 3 is short but node 1 is a centroid (below first thru node 2): only 0 → 2 → 3.
    tail = np.array([0, 1, 0, 2])
    head = np.array([1, 3, 2, 3])
    cost = jnp.array([1.0, 1.0, 5.0, 5.0])
    thru = np.array([False, False, True, True])
    inl = graphs.in_links(head, 4)
    origins = np.array([0])
    dist, pred = graphs.shortest_paths(cost, tail, origins, inl, thru)
    assert float(dist[0, 3]) == 10.0 and float(dist[0, 1]) == 1.0
    flows = graphs.all_or_nothing(pred, tail, np.array([0, 0]), np.array([3, 1]),
                                  jnp.array([2.0, 0.5]), 4)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(flows), [0.5, 0.0, 2.0, 2.0])


# --------------------------------------------------------------------------- Braess


def _braess(bridge: list[bool]):
    # s=0, a=1, b=2, t=3; s→a: x, s→b: 1, a→t: 1, b→t: x, a→b: 0 (the bridge)
    lat = pj.Latency(a=[0.0, 1.0, 1.0, 0.0, 0.0], b=[1.0, 0.0, 0.0, 1.0, 0.0])
    mask = np.ones((len(bridge), 5), bool)
    mask[:, 4] = bridge
    return pj.GraphGame(
        tail=np.array([0, 0, 1, 2, 1]), head=np.array([1, 2, 3, 3, 2]), latency=lat,
        origins=np.array([0]), destinations=np.array([3]), demand=np.ones((len(bridge), 1)),
        num_nodes=4, link_mask=mask,
    )  # fmt: skip


def test_braess_unit_form_poa():
    r = pj.price_of_anarchy(_braess([True, False]), tol=1e-10)
    np.testing.assert_allclose(r.poa, [4 / 3, 1.0], rtol=1e-8)
    np.testing.assert_allclose(r.equilibrium.social_cost, [2.0, 1.5], rtol=1e-8)
    np.testing.assert_allclose(r.equilibrium.link_flows[0], [1, 0, 0, 1, 1], atol=1e-7)
    # SC is flat to first order in the bridge flow at the optimum (linear links): flows to 1e-4
    np.testing.assert_allclose(r.optimum.link_flows[0], [0.5, 0.5, 0.5, 0.5, 0], atol=1e-4)
    assert r.converged.all()
    # without the bridge its link carries nothing
    assert r.equilibrium.link_flows[1, 4] == 0.0


def test_tntp_braess_example():
    net, trips, _ = pj.tntp.bundled("Braess-Example")
    g = pj.read_tntp(net, trips)
    r = pj.price_of_anarchy(g, tol=1e-10)
    np.testing.assert_allclose(r.equilibrium.link_flows, [4, 2, 2, 2, 4], atol=1e-6)
    np.testing.assert_allclose(r.equilibrium.social_cost, 552.0, rtol=1e-8)
    np.testing.assert_allclose(r.optimum.social_cost, 498.0, rtol=1e-8)
    np.testing.assert_allclose(r.poa, 92 / 83, rtol=1e-8)
    # the Frank–Wolfe method reaches the same equilibrium
    fw = pj.solve_equilibrium(g, method="frank_wolfe", tol=1e-8)
    assert fw.converged
    np.testing.assert_allclose(fw.link_flows, [4, 2, 2, 2, 4], atol=1e-4)


def test_batched_demand_scalings_equal_looped_and_potential_is_beckmann():
    net, trips, _ = pj.tntp.bundled("Braess-Example")
    scales = np.array([0.5, 1.0, 3.0])
    batch = pj.solve_equilibrium(pj.read_tntp(net, trips, demand_scale=scales), tol=1e-10)
    for i, s in enumerate(scales):
        one = pj.solve_equilibrium(pj.read_tntp(net, trips, demand_scale=s), tol=1e-10)
        np.testing.assert_allclose(batch.link_flows[i], one.link_flows, atol=1e-7)
        np.testing.assert_allclose(batch.social_cost[i], one.social_cost, rtol=1e-9)
    # Beckmann potential by quadrature of the BPR links (independent of the library)
    tn = pj.tntp.read_net(net)
    f = batch.link_flows
    grid = np.linspace(0.0, 1.0, 2001)
    t = tn.travel_time(f[..., None, :] * grid[:, None])  # (N, G, E)
    beck = (np.trapezoid(t, grid, axis=-2) * f).sum(-1)
    np.testing.assert_allclose(batch.potential, beck, rtol=1e-6)
    assert np.all(batch.gap <= 1e-10) and np.all(batch.average_excess_cost >= 0)


def test_write_tntp_flows_round_trip(tmp_path):
    net, trips, _ = pj.tntp.bundled("Braess-Example")
    g = pj.read_tntp(net, trips)
    sol = pj.solve_equilibrium(g, tol=1e-10)
    out = tmp_path / "braess_flow.tntp"
    pj.write_tntp_flows(out, g, sol.link_flows)
    back = pj.tntp.read_flows(out)
    np.testing.assert_array_equal(back.volume, sol.link_flows)
    np.testing.assert_allclose(back.cost, pj.tntp.read_net(net).travel_time(sol.link_flows))


# --------------------------------------------------------------------------- SiouxFalls


@pytest.fixture(scope="module")
def sioux():
    net, trips, flow = pj.tntp.bundled("SiouxFalls")
    return pj.read_tntp(net, trips), pj.tntp.read_flows(flow)


def test_siouxfalls_user_equilibrium(sioux):
    g, published = sioux
    sol = pj.solve_equilibrium(g, tol=1e-7)
    assert sol.converged and sol.gap <= 1e-7
    np.testing.assert_allclose(sol.potential, SIOUX_UE_BECKMANN, rtol=1e-6)
    carries = published.volume > 0
    np.testing.assert_allclose(sol.link_flows[carries], published.volume[carries], rtol=1e-3)
    # the path flows reproduce the link flows
    inc = np.zeros((len(sol.paths), g.num_links))
    for k, (_, links) in enumerate(sol.paths):
        inc[k, list(links)] = 1
    np.testing.assert_allclose(sol.path_flows @ inc, sol.link_flows, rtol=1e-9, atol=1e-6)


def test_siouxfalls_system_optimum(sioux):
    g, _ = sioux
    sol = pj.solve_optimum(g, tol=1e-7)
    assert sol.converged
    np.testing.assert_allclose(sol.social_cost, SIOUX_SO_TSTT, rtol=1e-5)


def test_descent_optimum_agrees_with_the_published_optimum(sioux):
    # optax Adam on path logits, from the uniform split: an independent check of the value
    g, _ = sioux
    d = pj.solve_optimum(g, method="descent", tol=1e-6)
    assert SIOUX_SO_TSTT * (1 - 1e-6) <= d.social_cost <= SIOUX_SO_TSTT * (1 + 2e-3)
    assert d.status in (0, 1) and np.isfinite(d.gap)
    net, trips, _ = pj.tntp.bundled("Braess-Example")
    b = pj.solve_optimum(pj.read_tntp(net, trips), method="descent", tol=1e-8)
    np.testing.assert_allclose(b.social_cost, 498.0, rtol=1e-4)
    with pytest.raises(pj.InputError, match="optima only"):
        pj.solve_equilibrium(g, method="descent")


# --------------------------------------------------------------------------- parallel links


def test_parallel_links_equal_the_parallel_worker_solver():
    games = pj.synthetic.random_games(11, 6, classes=3, workers=4, cache=False)
    k = 4
    j = 3
    g = pj.GraphGame(
        tail=np.zeros(k, np.int64), head=np.ones(k, np.int64), latency=games.latency,
        origins=np.zeros(j, np.int64), destinations=np.ones(j, np.int64),
        demand=games.demand, num_nodes=2,
    )  # fmt: skip
    for optimum in (False, True):
        if optimum:
            ref = pj.solve_optimum(games, tol=1e-10, starts=4)
            got = pj.solve_optimum(g, tol=1e-10)
        else:
            ref = pj.solve_equilibrium(games, tol=1e-10)
            got = pj.solve_equilibrium(g, tol=1e-10)
        assert ref.converged.all() and got.converged.all()
        np.testing.assert_allclose(got.social_cost, ref.social_cost, rtol=1e-8)
        np.testing.assert_allclose(got.link_flows, ref.flows.sum(-2), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- topologies


@pytest.mark.parametrize("preset", ["paper_340b_1p2d", "paper_70b_1p2d", "paper_70b_1p5d"])
def test_disaggregated_presets_kv_traffic_and_poa(preset):
    cluster = getattr(T, preset)()
    cap = sum(w.capacity for w in cluster.decode_workers)
    loads = cap * np.array([0.1, 0.5, 0.8, 0.95])
    g = T.cluster_game(cluster, loads)
    r = pj.price_of_anarchy(g, tol=1e-8)
    assert r.converged.all()
    assert np.all(r.poa >= 1.0) and np.all(np.isfinite(r.poa))
    # every stored path is a (prefill, KV link, decode) path of the cluster
    order = {p: i for i, p in enumerate(T.paths(cluster))}
    assert all(links in order for _, links in r.equilibrium.paths)
    x = np.zeros((len(loads), len(order)))
    for k, (_, links) in enumerate(r.equilibrium.paths):
        x[:, order[links]] += r.equilibrium.path_flows[:, k]
    traffic = T.kv_link_traffic(cluster, x)
    names = list(g.names)
    for name, bytes_s in traffic.items():
        link = r.equilibrium.link_flows[:, names.index(name)]
        np.testing.assert_allclose(link * cluster.kv_bytes_per_request, bytes_s, rtol=1e-9)


# --------------------------------------------------------------------------- bad input


def _line(**over):
    base = dict(
        tail=np.array([0, 1]), head=np.array([1, 2]), latency=pj.Latency(a=[1.0, 1.0]),
        origins=np.array([0]), destinations=np.array([2]), demand=np.array([1.0]), num_nodes=3,
    )  # fmt: skip
    base.update(over)
    return pj.GraphGame(**base)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (dict(head=np.array([1, 5])), r"GraphGame.head\[1\] = 5: unknown node"),
        (dict(tail=np.array([0, 2])), r"link from a node to itself"),
        (dict(destinations=np.array([0])), r"origin = destination"),
        (dict(demand=np.array([-1.0])), r"GraphGame.demand\[0\] = -1.0: must be finite and >= 0"),
        (dict(demand=np.array([1.0, 2.0])), r"last axis must be W = 1"),
        (dict(latency=pj.Latency(a=[1.0, 1.0, 1.0])), r"last axis must be E = 2"),
        (dict(latency=pj.Latency(b=[-1.0, 1.0])), r"latency.b\[0\] = -1.0"),
        (dict(link_mask=np.array([True, False])), r"no path connects them"),
        (dict(first_thru_node=2), r"no path connects them"),
        (dict(tail=np.array([0.5, 1.0])), r"GraphGame.tail: must be a 1-D array of integers"),
    ],
)
def test_bad_graph_input_is_named(over, match):
    with pytest.raises(pj.InputError, match=match):
        pj.solve_equilibrium(_line(**over))


def test_graph_games_take_selfish_policy_and_known_methods():
    with pytest.raises(pj.InputError, match="selfish"):
        pj.solve_equilibrium(_line(), pj.policies.dynamo())
    with pytest.raises(pj.InputError, match="method 'newton' is unknown for graph games"):
        pj.solve_equilibrium(_line(), method="newton")
    ok = pj.solve_equilibrium(_line(), pj.policies.selfish())
    assert ok.converged and ok.social_cost == pytest.approx(2.0)


def test_tntp_power_below_one_is_rejected(tmp_path):
    net, trips, _ = pj.tntp.bundled("Braess-Example")
    text = net.read_text().replace("0.02\t1\t0\t0\t1\t;", "0.02\t0.5\t0\t0\t1\t;", 1)
    bad = tmp_path / "Braess_net.tntp"
    bad.write_text(text)
    with pytest.raises(pj.InputError, match=r"Braess_net.tntp:\d+: power = 0.5"):
        pj.read_tntp(bad, trips)


def test_dataclass_replace_keeps_working():
    g = dataclasses.replace(_line(), demand=np.array([[1.0], [2.0]]))
    sol = pj.solve_equilibrium(g)
    assert sol.social_cost.shape == (2,)


def test_overflowing_demand_stops_flagged_instead_of_looping():
    # Demand 1e20 in float32 overflows the costs: the column generation looped forever (a NaN
    # inner error never tightened its tolerance). Now the lane stops, status 2 (non-finite).
    lat = pj.Latency(a=np.array([0, 1, 1, 0, 0.0]), b=np.array([1, 0, 0, 1, 0.0]))
    g = pj.GraphGame(tail=[0, 0, 1, 2, 1], head=[1, 2, 3, 3, 2], latency=lat, origins=[0],
                     destinations=[3], demand=[1e20], num_nodes=4)  # fmt: skip
    r = pj.solve_equilibrium(g, max_iters=20, dtype="float32")
    assert int(r.status) == 2 and not bool(r.converged)
    assert not bool(pj.price_of_anarchy(g, dtype="float32").converged)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cost_units_do_not_matter(dtype):
    # Travel times in hours instead of seconds: the same flows, iteration for iteration. A
    # power of two scales every float exactly. (The path solver's metric had an absolute floor,
    # max(max s, 1)·√eps, that made its steps tiny when costs were small.)
    import dataclasses

    net, trips, _ = pj.tntp.bundled("Braess-Example")
    g = pj.read_tntp(net, trips, demand_scale=np.array([0.5, 1.0, 3.0]))
    k = 2.0**-30
    lat = g.latency
    small = dataclasses.replace(
        g, latency=dataclasses.replace(lat, **{f: np.asarray(getattr(lat, f)) * k for f in "abcd"})
    )
    a, b = (pj.price_of_anarchy(x, dtype=dtype) for x in (g, small))
    assert a.converged.all()
    np.testing.assert_array_equal(b.converged, a.converged)
    np.testing.assert_array_equal(b.poa, a.poa)
    for s, t in ((b.equilibrium, a.equilibrium), (b.optimum, a.optimum)):
        np.testing.assert_array_equal(s.link_flows, t.link_flows)
        np.testing.assert_array_equal(s.social_cost, t.social_cost * k)


# --------------------------------------------------------------------------- zero-cost links


def _follow(pred, tail, origin, node, v):
    """Nodes from ``node`` back to the origin along predecessor links (fails on a cycle)."""
    seen = [node]
    while node != origin:
        e = int(pred[node])
        assert e >= 0, f"node {node} has no predecessor"
        node = int(tail[e])
        assert node not in seen, f"predecessor cycle {seen + [node]}"
        seen.append(node)
        assert len(seen) <= v
    return seen


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_shortest_path_trees_are_acyclic_with_zero_cost_cycles(dtype):
    # Two-way links, many of cost 0: zero-cost cycles everywhere. Predecessors picked by argmin
    # over ties pointed at each other along such cycles, and traced paths never reached their
    # origin. Batched (vmap) and in both precisions.
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        pytest.skip("needs x64")
    rng = np.random.default_rng(7)
    v = 9
    und = [(i, j) for i in range(v) for j in range(i + 1, v) if rng.random() < 0.45]
    und += [(i, i + 1) for i in range(v - 1)]  # connected
    links = [(i, j) for i, j in und] + [(j, i) for i, j in und]
    order = rng.permutation(len(links))
    tail = np.array([links[k][0] for k in order])
    head = np.array([links[k][1] for k in order])
    e = tail.size
    costs = rng.choice([0.0, 0.0, 0.5, 1.0], size=(6, e))
    costs[0] = 0.0  # every link free
    origins = np.arange(v)
    inl = graphs.in_links(head, v)
    thru = np.ones(v, bool)
    sp = jax.jit(jax.vmap(lambda c: graphs.shortest_paths(c, tail, origins, inl, thru)))
    dist, pred = (np.asarray(a) for a in sp(jnp.asarray(costs, dtype)))
    dest = np.tile(np.arange(v), v)
    oidx = np.repeat(np.arange(v), v)
    for k in range(costs.shape[0]):
        w = np.full((v, v), np.inf)
        for t, h, c in zip(tail, head, costs[k], strict=True):
            w[t, h] = min(w[t, h], c)
        fin = np.isfinite(w)  # explicit zeros in a sparse matrix are (free) edges
        ref = dijkstra(csr_matrix((w[fin], np.nonzero(fin)), shape=(v, v)), indices=origins)
        np.testing.assert_allclose(dist[k], ref, atol=1e-6)
        for o in range(v):
            for node in range(v):
                path = _follow(pred[k, o], tail, o, node, v)
                # each predecessor link is tight
                for a, b in zip(path[1:], path[:-1], strict=True):
                    e_ = pred[k, o, b]
                    assert tail[e_] == a and head[e_] == b
                    assert dist[k, o, a] + costs[k, e_] == pytest.approx(dist[k, o, b], abs=1e-6)
        links_ = np.asarray(graphs.trace_paths(jnp.asarray(pred[k]), tail, oidx, dest))
        for wi in range(v * v):
            p = [int(x) for x in links_[wi] if x >= 0][::-1]
            if oidx[wi] == dest[wi]:
                assert p == []
            else:
                assert tail[p[0]] == oidx[wi] and head[p[-1]] == dest[wi]
                assert all(head[a] == tail[b] for a, b in zip(p, p[1:], strict=False))


def _zero_cycle_game():
    # 0 → 2 directly (1.7x) or 0 → 3 → 2 (1.4x + 0.8x); the other links form zero-cost-at-zero-
    # flow cycles (2 → 1 → 2, 2 → 3 → 2, 3 → 0 → 3, ...).
    return pj.GraphGame(
        tail=[0, 3, 2, 0, 1, 2, 3, 2], head=[2, 0, 1, 3, 2, 3, 2, 0],
        latency=pj.Latency(b=[1.7, 0.7, 0.7, 1.4, 0.9, 1.1, 0.8, 1.6]),
        origins=[0], destinations=[2], demand=[1.0], num_nodes=4,
    )  # fmt: skip


def _conservation_error(g, flows):
    v = g.num_nodes
    div = np.zeros(v)
    np.add.at(div, np.asarray(g.tail), flows)
    np.add.at(div, np.asarray(g.head), -flows)
    want = np.zeros(v)
    np.add.at(want, np.asarray(g.origins), np.asarray(g.demand, float))
    np.add.at(want, np.asarray(g.destinations), -np.asarray(g.demand, float))
    return np.abs(div - want).max()


@pytest.mark.parametrize("method", ["paths", "frank_wolfe"])
def test_zero_cost_cycles_give_the_equilibrium(method):
    # Was: 0.818 left the origin, a stored path (4, 2, 4) that never touched it, gap 0, converged.
    g = _zero_cycle_game()
    ue = pj.solve_equilibrium(g, tol=1e-9, method=method)
    x = 2.2 / 3.9  # 1.7 x = 2.2 (1 − x)
    want = np.array([x, 0, 0, 1 - x, 0, 0, 1 - x, 0])
    np.testing.assert_allclose(ue.link_flows, want, atol=1e-6)
    np.testing.assert_allclose(ue.potential, 1.7 * x**2 / 2 + 2.2 * (1 - x) ** 2 / 2, rtol=1e-8)
    assert bool(ue.converged) and _conservation_error(g, ue.link_flows) < 1e-9
    tail, head = np.asarray(g.tail), np.asarray(g.head)
    for _, p in ue.paths:
        assert tail[p[0]] == 0 and head[p[-1]] == 2


def test_zero_cost_two_way_tntp_pair(tmp_path):
    # Nodes 3 ⇄ 4 with free-flow time 0 (cost 0 both ways): both methods loaded 4 → 3 and
    # 3 → 4 only (flows [1, 0, 1, 1], SC 2, converged); the answer is 1 → 3 → 4 → 2, SC 4.
    net = tmp_path / "zc_net.tntp"
    net.write_text(
        "<NUMBER OF ZONES> 2\n<NUMBER OF NODES> 4\n<FIRST THRU NODE> 1\n<NUMBER OF LINKS> 4\n"
        "<END OF METADATA>\n~ init term cap len fft b power speed toll type ;\n"
        "4 3 1 0 0 0.15 4 0 0 1 ;\n1 3 1 0 1 1 1 0 0 1 ;\n"
        "3 4 1 0 0 0.15 4 0 0 1 ;\n4 2 1 0 1 1 1 0 0 1 ;\n"
    )
    trips = tmp_path / "zc_trips.tntp"
    trips.write_text(
        "<NUMBER OF ZONES> 2\n<TOTAL OD FLOW> 1.0\n<END OF METADATA>\nOrigin 1\n  2 : 1.0;\n"
    )
    g = pj.read_tntp(net, trips)
    for method in ("paths", "frank_wolfe"):
        ue = pj.solve_equilibrium(g, method=method)
        np.testing.assert_allclose(ue.link_flows, [0, 1, 1, 1], atol=1e-9)
        np.testing.assert_allclose(ue.social_cost, 4.0, rtol=1e-9)
        assert bool(ue.converged)


def _simple_paths(tail, head, v, o, d):
    adj = [[] for _ in range(v)]
    for e, (t, h) in enumerate(zip(tail, head, strict=True)):
        adj[t].append((e, h))
    out = []

    def dfs(u, seen, path):
        if u == d:
            out.append(path)
            return
        for e, h in adj[u]:
            if h not in seen:
                dfs(h, seen | {h}, path + [e])

    dfs(o, {o}, [])
    return out


@pytest.mark.parametrize("seed", range(3))
def test_random_two_way_graphs_match_scipy(seed):
    # t_e = b_e f_e on two-way graphs: every pair of opposite links is a zero-cost cycle at the
    # start. The equilibrium minimises the Beckmann potential Σ b f² / 2 over path flows
    # (scipy SLSQP on all simple paths): the same potential, flows that conserve demand.
    from scipy.optimize import minimize

    rng = np.random.default_rng(100 + seed)
    v = 5
    und = [(i, j) for i in range(v) for j in range(i + 1, v) if rng.random() < 0.6]
    und += [(i, i + 1) for i in range(v - 1) if (i, i + 1) not in und]
    links = [(i, j) for i, j in und] + [(j, i) for i, j in und]
    links = [links[k] for k in rng.permutation(len(links))]
    tail = np.array([a for a, _ in links])
    head = np.array([b for _, b in links])
    e = tail.size
    b = rng.uniform(0.5, 2.0, e)
    pairs = [(o, d) for o in range(v) for d in range(v) if o != d and rng.random() < 0.3]
    pairs = pairs or [(0, v - 1)]
    dem = rng.uniform(0.5, 2.0, len(pairs))
    g = pj.GraphGame(tail=tail, head=head, latency=pj.Latency(b=b),
                     origins=[o for o, _ in pairs], destinations=[d for _, d in pairs],
                     demand=dem, num_nodes=v)  # fmt: skip
    ue = pj.solve_equilibrium(g, tol=1e-9)
    paths, grp = [], []
    for w, (o, d) in enumerate(pairs):
        for p in _simple_paths(tail, head, v, o, d):
            paths.append(p)
            grp.append(w)
    grp = np.array(grp)
    delta = np.zeros((e, len(paths)))
    for j, p in enumerate(paths):
        delta[p, j] = 1.0

    def pot(x):
        f = delta @ x
        return 0.5 * np.sum(b * f * f), delta.T @ (b * f)

    cons = [{"type": "eq", "fun": (lambda x, w=w: x[grp == w].sum() - dem[w])}
            for w in range(len(pairs))]  # fmt: skip
    x0 = np.array([dem[w] / np.sum(grp == w) for w in grp])
    ref = minimize(pot, x0, jac=True, method="SLSQP", bounds=[(0, None)] * len(paths),
                   constraints=cons, options=dict(ftol=1e-14, maxiter=2000))  # fmt: skip
    assert bool(ue.converged)
    assert _conservation_error(g, ue.link_flows) < 1e-9
    np.testing.assert_allclose(ue.potential, ref.fun, rtol=1e-6)
    np.testing.assert_allclose(ue.link_flows, delta @ ref.x, atol=1e-4)


def test_flows_that_do_not_conserve_demand_are_never_converged():
    # The measures clipped a negative shortfall to gap 0: flows of a cyclic "path" that carried
    # no demand out of the origin read as a perfect equilibrium.
    from poa_jax import graph_solve as gs

    g = _zero_cycle_game()
    prep = gs.prepare_graph(g, "float64")
    lat = jax.tree_util.tree_map(lambda a: a[0], prep.latency)
    f_ok = jnp.array([2.2 / 3.9, 0, 0, 1.7 / 3.9, 0, 0, 1.7 / 3.9, 0])
    f_bad = jnp.array([0.0, 0, 0, 0, 0, 0, 0, 0])  # nothing leaves the origin: cost 0 < 1·dist
    gap_ok = gs._measures(lat, prep.demand[0], prep.link_mask[0], f_ok, prep.topo, False)[0]
    gap_bad = gs._measures(lat, prep.demand[0], prep.link_mask[0], f_bad, prep.topo, False)[0]
    assert float(gap_ok) < 1e-12
    assert np.isinf(float(gap_bad))
    # a traced "path" that does not start at its origin is refused, not stored
    ps = gs._PathSet(1, g.num_links, prep.topo)
    with pytest.raises(RuntimeError, match="not a path from 0 to 2"):
        ps.add_trees(np.array([[[4, 2, 4]]]))  # links from the destination back
    assert ps.add_trees(np.array([[[6, 3, -1]]])).tolist() == [[0]]


# --------------------------------------------------------------------------- more bad input


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (dict(link_mask=np.array([2, 1])), r"GraphGame.link_mask\[0\] = 2.0: must be a boolean"),
        (dict(link_mask=np.array([np.nan, 1])), r"GraphGame.link_mask\[0\] = nan: must be a bool"),
        (dict(num_nodes=4.7), r"GraphGame.num_nodes = 4.7: must be an integer"),
        (dict(num_nodes="4"), r"GraphGame.num_nodes = '4': must be an integer"),
        (dict(num_nodes=1), r"GraphGame.num_nodes = 1: must be an integer >= 2"),
        (dict(first_thru_node=1.5), r"GraphGame.first_thru_node = 1.5: must be an integer"),
        (dict(names=("a",)), r"GraphGame.names has 1 entries: must be E = 2"),
        (dict(demand=np.zeros((0, 1))), r"GraphGame: empty batch, shape \(0,\)"),
        (dict(link_mask=np.ones((0, 2), bool)), r"GraphGame: empty batch"),
    ],
)
def test_bad_graph_fields_are_rejected_before_solving(over, match):
    with pytest.raises(pj.InputError, match=match):
        pj.solve_equilibrium(_line(**over))


def test_integral_float_node_counts_and_good_names_still_work():
    r = pj.solve_equilibrium(_line(num_nodes=3.0, first_thru_node=np.int64(0), names=("x", "y")))
    assert bool(r.converged) and r.social_cost == pytest.approx(2.0)


def test_empty_cluster_batch_is_rejected():
    c = T.paper_70b_1p2d()
    with pytest.raises(pj.InputError, match="empty batch"):
        pj.solve_equilibrium(T.cluster_game(c, demand=[]))


def test_write_tntp_flows_of_a_batched_cluster_game(tmp_path):
    # Crashed with a NumPy broadcast error: the latency of every cluster_game is (N, E).
    c = T.paper_70b_1p2d()
    cg = T.cluster_game(c, demand=[100.0, 200.0])
    sol = pj.solve_equilibrium(cg)
    with pytest.raises(pj.InputError, match=r"batch shape \(2,\): pass instance="):
        pj.write_tntp_flows(tmp_path / "f.tntp", cg, sol.link_flows[0])
    with pytest.raises(pj.InputError, match="instance = 2: must index"):
        pj.write_tntp_flows(tmp_path / "f.tntp", cg, sol.link_flows[1], instance=2)
    for i in range(2):
        out = tmp_path / f"f{i}.tntp"
        pj.write_tntp_flows(out, cg, sol.link_flows[i], instance=i)
        back = pj.tntp.read_flows(out)
        lat = pj.Latency(*[np.asarray(getattr(cg.latency, k), np.float64)[i]
                           for k in ("a", "b", "c", "p", "d", "kappa", "rho_max")])  # fmt: skip
        np.testing.assert_allclose(back.volume, sol.link_flows[i])
        np.testing.assert_allclose(back.cost, np.asarray(lat.value(back.volume)), rtol=1e-12)


def test_float32_never_claims_a_gap_below_its_resolution():
    """The gap is a difference of two rounded sums of SC's size: in float32 below ~eps it is
    noise. Braess at tol 1e-9 said 'gap 0, converged'; now the gap is at least the rounding
    floor and the status says the tolerance was not reached. The default tolerance is."""
    net, trips, _ = pj.tntp.bundled("Braess-Example")
    g = pj.read_tntp(net, trips)
    tight = pj.solve_equilibrium(g, dtype="float32", tol=1e-9)
    assert tight.status == 1 and not tight.converged
    assert tight.gap >= np.finfo(np.float32).eps / 2
    assert pj.solve_equilibrium(g, dtype="float32").converged
