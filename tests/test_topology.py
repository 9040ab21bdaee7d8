"""Cluster topologies → graph games: path structure (checked by an independent DFS over
tail/head), KV-link sharing and traffic, latency shape, eager validation, batch axes.

No solver calls; everything here is host-side NumPy plus a few latency evaluations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from poa_jax import topology as T
from poa_jax.errors import InputError


def _custom() -> T.Cluster:
    """Two prefill workers sharing node 0 (so they share its KV links), one on node 2, decode
    workers on nodes 0, 1, 1, 3 — KV links shared across prefill *and* decode workers."""
    w = [
        T.Worker("Pa", "prefill", 0, 2, 300.0, 0.004),
        T.Worker("Pb", "prefill", 0, 2, 250.0, 0.005),
        T.Worker("Pc", "prefill", 2, 4, 500.0, 0.002),
        T.Worker("Da", "decode", 0, 4, 120.0, 0.3),
        T.Worker("Db", "decode", 1, 4, 110.0, 0.35),
        T.Worker("Dc", "decode", 1, 4, 100.0, 0.4),
        T.Worker("Dd", "decode", 3, 8, 200.0, 0.2),
    ]
    return T.Cluster(4, 8, tuple(w), 3.6e12, 2e11, 2.1e7, 1e-5, 3e-5, name="custom")


CLUSTERS = {
    "340b_1p2d": T.paper_340b_1p2d,
    "70b_1p2d": T.paper_70b_1p2d,
    "70b_1p5d": T.paper_70b_1p5d,
    "custom": _custom,
}


@pytest.fixture(params=list(CLUSTERS), scope="module")
def cluster(request):
    return CLUSTERS[request.param]()


def _dfs_paths(tail, head, src, dst):
    """All simple src→dst paths as link-index tuples, from tail/head only."""
    out_links: dict[int, list[int]] = {}
    for e, t in enumerate(np.asarray(tail)):
        out_links.setdefault(int(t), []).append(e)
    found = []

    def go(node, links, seen):
        if node == dst:
            found.append(tuple(links))
            return
        for e in out_links.get(node, []):
            nxt = int(np.asarray(head)[e])
            if nxt not in seen:
                go(nxt, [*links, e], seen | {nxt})

    go(src, [], {src})
    return found


def _node_of(cluster):
    return {w.name: w.node for w in cluster.workers}


def test_dfs_paths_equal_paths(cluster):
    game = T.cluster_game(cluster, 1.0)
    o, d = int(game.origins[0]), int(game.destinations[0])
    dfs = _dfs_paths(game.tail, game.head, o, d)
    assert len(dfs) == len(set(dfs))
    assert set(dfs) == set(T.paths(cluster))
    n_p = sum(w.role == "prefill" for w in cluster.workers)
    n_d = sum(w.role == "decode" for w in cluster.workers)
    assert len(dfs) == n_p * n_d
    # The graph is a DAG and source/sink are centroids: no node repeats, so no cycle can matter.
    assert game.first_thru_node == 2 and {o, d} == {0, 1}


def test_game_fields_consistent(cluster):
    game = T.cluster_game(cluster, 5.0)
    e = game.num_links
    assert np.shape(game.head) == (e,) and len(game.names) == e == len(set(game.names))
    assert np.all(np.asarray(game.tail) < game.num_nodes)
    assert np.all(np.asarray(game.head) < game.num_nodes)
    assert np.all(np.asarray(game.tail) != np.asarray(game.head))
    assert game.num_pairs == 1 and np.shape(game.demand) == (1,)
    for f in ("a", "b", "c", "p", "d", "kappa", "rho_max"):
        assert np.shape(getattr(game.latency, f)) == (e,)
    # No parallel links.
    pairs = list(zip(np.asarray(game.tail).tolist(), np.asarray(game.head).tolist(), strict=True))
    assert len(pairs) == len(set(pairs))


def test_every_path_is_prefill_kv_decode(cluster):
    game = T.cluster_game(cluster, 1.0)
    names = game.names
    a = np.asarray(game.latency.a)
    d = np.asarray(game.latency.d)
    node = _node_of(cluster)
    for path, (p, kv, q) in zip(T.paths(cluster), T.path_triples(cluster), strict=True):
        kinds = [names[e].split(":")[0] for e in path]
        assert sorted(k for k in kinds if k != "port") == ["decode", "kv", "prefill"]
        assert [k for k in kinds if k != "port"] == ["prefill", "kv", "decode"]
        for e in path:
            if names[e].startswith("port:"):
                assert a[e] == 0 and d[e] == 0  # zero latency
        assert names[path[0]] == f"prefill:{p}" and names[path[-1]] == f"decode:{q}"
        kv_links = [names[e] for e in path if names[e].startswith("kv:")]
        assert kv_links == [kv]
        # NVLink iff prefill and decode share a node; the name carries the node pair.
        if node[p] == node[q]:
            assert kv == f"kv:nvlink:n{node[p]}"
        else:
            assert kv == f"kv:ib:n{node[p]}->n{node[q]}"


def test_kv_link_shared_by_node_pair(cluster):
    """Two paths use the same KV link iff their (node(P), node(D)) pairs are equal."""
    node = _node_of(cluster)
    trip = T.path_triples(cluster)
    for p1, kv1, q1 in trip:
        for p2, kv2, q2 in trip:
            assert (kv1 == kv2) == ((node[p1], node[q1]) == (node[p2], node[q2]))


def test_kv_link_traffic_random_flows(cluster):
    rng = np.random.default_rng(0)
    trip = T.path_triples(cluster)
    k = cluster.kv_bytes_per_request
    for _ in range(5):
        x = rng.uniform(0.0, 50.0, size=len(trip))
        got = T.kv_link_traffic(cluster, x)
        kv_names = sorted({kv for _, kv, _ in trip})
        assert sorted(got) == kv_names
        for name in kv_names:
            mask = np.array([kv == name for _, kv, _ in trip])
            assert got[name] == pytest.approx(k * x[mask].sum(), rel=1e-12)
    # Batched flows give arrays with the batch shape.
    xb = rng.uniform(0.0, 50.0, size=(4, len(trip)))
    got = T.kv_link_traffic(cluster, xb)
    total = sum(got.values())
    np.testing.assert_allclose(total, k * xb.sum(axis=-1), rtol=1e-12)


def test_kv_link_traffic_bad_shape(cluster):
    with pytest.raises(InputError, match="path_flows"):
        T.kv_link_traffic(cluster, np.ones(len(T.paths(cluster)) + 1))


def _link_grid(lat, points=201):
    """Loads ``(points, E)``: ``[0, 1.5·κ_e)`` (overload included) on finite-capacity links,
    ``[0, 1000)`` on the rest."""
    kappa = np.asarray(lat.kappa)
    top = np.where(np.isfinite(kappa), 1.5 * kappa, 1e3)
    return np.linspace(0.0, 1.0, points, endpoint=False)[:, None] * top[None, :]


@pytest.fixture(scope="module")
def link_values():
    """``{cluster key: (game, x (P, E), ℓ(x) (P, E))}`` from ONE ``Latency.value`` call over the
    links of all clusters side by side (eager JAX dispatch costs seconds per new shape)."""
    games = {k: T.cluster_game(make(), 1.0) for k, make in CLUSTERS.items()}
    fields = {
        f: np.concatenate([np.asarray(getattr(g.latency, f)) for g in games.values()])
        for f in games["custom"].latency.as_numpy()
    }
    lat = type(games["custom"].latency)(**fields)
    x = _link_grid(lat)
    v = np.asarray(lat.value(x))
    out, start = {}, 0
    for k, g in games.items():
        sl = slice(start, start + g.num_links)
        out[k] = (g, x[:, sl], v[:, sl])
        start = sl.stop
    return out


@pytest.mark.parametrize("key", list(CLUSTERS))
def test_latencies_finite_increasing(link_values, key):
    game, _, v = link_values[key]
    assert np.all(np.isfinite(v))
    for e, name in enumerate(game.names):
        if name.startswith("port:"):
            assert np.all(v[:, e] == 0), name
        else:
            assert np.isfinite(np.asarray(game.latency.kappa)[e]), name
            assert np.all(np.diff(v[:, e]) > 0), name


def test_latency_formulas_match_closed_form(link_values):
    c = _custom()
    game, x, got = link_values["custom"]
    by_name = {w.name: w for w in c.workers}
    kappa = np.asarray(game.latency.kappa)
    for e, name in enumerate(game.names):
        kind = name.split(":")[0]
        below = x[:, e] <= 0.99 * kappa[e]  # the closed form holds up to ρ_max·κ
        xe = x[below, e]
        if kind in ("prefill", "decode"):
            w = by_name[name.split(":")[1]]
            mu = w.capacity
            want = w.service_time + (1 / mu) * xe / (mu - xe)
        elif kind == "kv":
            nv = name.startswith("kv:nvlink")
            bw = c.nvlink_bandwidth if nv else c.ib_bandwidth
            big_l = c.nvlink_latency if nv else c.ib_latency
            want = big_l + 1.0 / (bw / c.kv_bytes_per_request - xe)
        else:
            want = np.zeros_like(xe)
        np.testing.assert_allclose(got[below, e], want, rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_batch_axes(shape):
    c = T.paper_70b_1p5d()
    dem = np.full(shape, 100.0)
    game = T.cluster_game(c, dem)
    assert np.shape(game.demand) == (*shape, 1)
    for f in ("a", "d", "kappa"):
        assert np.shape(getattr(game.latency, f)) == (*shape, game.num_links)
    assert np.shape(game.tail) == (game.num_links,)


def test_bad_demand():
    with pytest.raises(InputError, match="demand"):
        T.cluster_game(T.paper_70b_1p2d(), [1.0, -2.0])
    with pytest.raises(InputError, match="demand"):
        T.cluster_game(T.paper_70b_1p2d(), float("nan"))


def test_game_does_not_alias_the_demand_array():
    # cluster_game kept a view of a float64 demand: refilling the caller's buffer changed a
    # game already built (a list of games built from one buffer all had the last demand).
    buf = np.array([100.0, 200.0])
    game = T.cluster_game(T.paper_70b_1p2d(), buf)
    buf[:] = 7.0
    np.testing.assert_array_equal(np.asarray(game.demand)[:, 0], [100.0, 200.0])


def test_presets_placement():
    c = T.paper_340b_1p2d()
    assert all(kv.startswith("kv:ib:") for _, kv, _ in T.path_triples(c))
    assert all(w.tp == 8 for w in c.workers) and c.nodes == 3
    assert c.kv_bytes_per_request == 96 * 8 * 192 * 2 * 128
    for c in (T.paper_70b_1p2d(), T.paper_70b_1p5d()):
        assert all(w.tp == 4 for w in c.workers)
        assert c.kv_bytes_per_request == 80 * 8 * 128 * 2 * 128
    assert [kv for _, kv, _ in T.path_triples(T.paper_70b_1p2d())] == [
        "kv:nvlink:n0",
        "kv:ib:n0->n1",
    ]
    assert len(T.paths(T.paper_70b_1p5d())) == 5


def test_presets_overridable():
    base = T.paper_70b_1p2d()
    assert T.paper_70b_1p2d(decode_batch=128).decode_workers[0].capacity > (
        base.decode_workers[0].capacity
    )
    assert T.paper_70b_1p2d(mfu=0.2).prefill_workers[0].capacity == pytest.approx(
        base.prefill_workers[0].capacity / 2
    )
    fat = dataclasses.replace(base, ib_bandwidth=1e12)
    game = T.cluster_game(fat, 1.0)
    e = game.names.index("kv:ib:n0->n1")
    assert float(np.asarray(game.latency.kappa)[e]) == pytest.approx(
        1e12 / fat.kv_bytes_per_request
    )
    w = dataclasses.replace(base.workers[1], capacity=10.0)
    assert w.capacity == 10.0


# --- validation: each rule, with the field named ---------------------------------------------


def _w(**kw):
    args = dict(name="X", role="decode", node=0, tp=1, capacity=1.0, service_time=0.1)
    args.update(kw)
    return T.Worker(**args)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(role="router"), "role"),
        (dict(name=""), "name"),
        (dict(node=-1), "node"),
        (dict(node=1.5), "node"),
        (dict(tp=0), "tp"),
        (dict(capacity=0.0), "capacity"),
        (dict(capacity=-3.0), "capacity"),
        (dict(capacity=float("inf")), "capacity"),
        (dict(service_time=-1.0), "service_time"),
        (dict(service_time=float("nan")), "service_time"),
        (dict(role=np.array(["decode", "prefill"])), "role"),  # was a bare ValueError
        (dict(capacity=1e-310), "capacity"),  # 1/μ overflows: the latency's d would be inf
    ],
)
def test_worker_validation(kw, field):
    with pytest.raises(InputError, match=f"Worker.{field}"):
        _w(**kw)


def _c(**kw):
    args = dict(
        nodes=2,
        gpus_per_node=8,
        workers=(_w(name="P", role="prefill"), _w(name="D")),
        nvlink_bandwidth=1e12,
        ib_bandwidth=1e11,
        kv_bytes_per_request=1e7,
    )
    args.update(kw)
    return T.Cluster(**args)


@pytest.mark.parametrize(
    "kw, pattern",
    [
        (dict(workers=(_w(name="P", role="prefill"), _w(name="D", node=2))), r"workers\[1\]\.node"),
        (
            dict(workers=(_w(name="P", role="prefill", tp=6), _w(name="D", tp=4))),
            r"workers: node 0 .*gpus_per_node",
        ),
        (dict(workers=(_w(name="D"),)), "workers: must contain at least one prefill"),
        (
            dict(workers=(_w(name="P", role="prefill"),)),
            "workers: must contain at least one decode",
        ),
        (dict(workers=(_w(name="P", role="prefill"), _w(name="P"))), r"workers\[1\]\.name"),
        (dict(workers=(_w(name="P", role="prefill"), "D")), r"workers\[1\]"),
        (dict(nvlink_bandwidth=0.0), "nvlink_bandwidth"),
        (dict(ib_bandwidth=-1.0), "ib_bandwidth"),
        (dict(ib_bandwidth=float("inf")), "ib_bandwidth"),
        (dict(kv_bytes_per_request=0.0), "kv_bytes_per_request"),
        (dict(nvlink_latency=-1e-6), "nvlink_latency"),
        (dict(ib_latency=float("nan")), "ib_latency"),
        (dict(nodes=0), "nodes"),
        (dict(gpus_per_node=0), "gpus_per_node"),
        (dict(workers=None), "workers = None"),  # was a bare TypeError
        (dict(workers=5), "workers = 5"),
        # τ = k/β overflows: κ = 0 and an infinite latency reached the game silently.
        (dict(kv_bytes_per_request=1e300, ib_bandwidth=1e-10), "kv_bytes_per_request / "),
    ],
)
def test_cluster_validation(kw, pattern):
    with pytest.raises(InputError, match=rf"Cluster\.{pattern}"):
        _c(**kw)


def test_valid_small_cluster_and_list_workers():
    c = _c(workers=[_w(name="P", role="prefill", node=1), _w(name="D")])
    assert isinstance(c.workers, tuple)
    assert T.path_triples(c) == [("P", "kv:ib:n1->n0", "D")]


def test_decode_batch_must_fit_hbm():
    with pytest.raises(InputError, match="hbm_bytes"):
        T.paper_340b_1p2d(decode_batch=100_000)


def test_not_a_cluster():
    with pytest.raises(InputError, match="cluster"):
        T.cluster_game("cluster", 1.0)


def test_cluster_many_nodes_and_tiny_transfer_time():
    # GPU counts are kept per occupied node: a list of ``nodes`` zeros was a MemoryError here.
    assert _c(nodes=10**12).nodes == 10**12
    # τ = k/β underflows to 0: an uncongested link (κ = inf), not a ZeroDivisionError.
    c = _c(kv_bytes_per_request=1e-300, nvlink_bandwidth=1e100)
    game = T.cluster_game(c, 1.0)
    e = game.names.index("kv:nvlink:n0")
    assert np.asarray(game.latency.kappa)[e] == np.inf
    assert np.asarray(game.latency.a)[e] == 0.0


_M, _G = T.LLAMA_3_1_70B, T.B200


@pytest.mark.parametrize(
    "call, pattern",
    [
        # Each was a ZeroDivisionError ...
        (lambda: T.prefill_worker("P", 0, _M, _G, 4, mfu=0.0), "mfu = 0.0"),
        (lambda: T.prefill_worker("P", 0, _M, _G, 4, mbu=0.0), "mbu = 0.0"),
        (lambda: T.prefill_worker("P", 0, _M, _G, 0), "tp = 0"),
        (lambda: T.prefill_worker("P", 0, _M, _G, 4, prompt_tokens=0), "prompt_tokens = 0"),
        (lambda: T.decode_worker("D", 0, _M, _G, 4, output_tokens=0), "output_tokens = 0"),
        (lambda: T.paper_70b_1p2d(mfu=0.0), "mfu = 0.0"),
        (lambda: T.paper_70b_1p2d(gpu=dataclasses.replace(_G, flops=0.0)), r"GPUSpec\.flops"),
        # ... or a silently wrong worker (a positive capacity from a negative prompt), a
        # fractional token count, a boolean batch, a utilisation above 1 ...
        (lambda: T.decode_worker("D", 0, _M, _G, 4, prompt_tokens=-1000), "prompt_tokens"),
        (lambda: T.paper_70b_1p2d(prompt_tokens=0.5), "prompt_tokens = 0.5"),
        (lambda: T.paper_70b_1p2d(decode_batch=True), "decode_batch = True"),
        (lambda: T.paper_70b_1p2d(mfu=5.0), r"mfu = 5.0: must be in \(0, 1\]"),
        # ... or an error naming Worker.capacity instead of the argument.
        (lambda: T.decode_worker("D", 0, _M, _G, 4, batch=-3), "batch = -3"),
        (lambda: T.paper_70b_1p2d(output_tokens=-1), "output_tokens = -1"),
        (
            lambda: T.prefill_worker("P", 0, dataclasses.replace(_M, layers=0), _G, 4),
            r"ModelSpec\.layers",
        ),
    ],
)
def test_roofline_inputs_validated(call, pattern):
    with pytest.raises(InputError, match=pattern):
        call()
