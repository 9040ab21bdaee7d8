"""Bad input is rejected eagerly with pj.InputError naming the field, the index and the rule —
before anything is compiled. Demand above capacity is not an error."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import poa_jax as pj
from poa_jax.policies import Policy

J, K = 3, 4
N = 5


def base_game() -> pj.RoutingGame:
    """A valid batch of N games, every field a full array."""
    rng = np.random.default_rng(0)
    return pj.RoutingGame(
        demand=rng.uniform(0.1, 0.5, (N, J)),
        latency=pj.Latency(
            a=rng.uniform(0.1, 1, (N, K)), b=rng.uniform(0, 1, (N, K)),
            c=rng.uniform(0, 1, (N, K)), p=np.full((N, K), 2.0), d=rng.uniform(0, 1, (N, K)),
            kappa=rng.uniform(2, 3, (N, K)),
        ),
        tokens=np.ones((N, J)),
        shareable=np.full((N, J), 0.5),
        residency=np.ones((N, K)),
        cache_size=np.full((N, K), 4.0),
        worker_mask=np.ones((N, K), bool),
    )  # fmt: skip


def with_value(field: str, index: tuple, value) -> pj.RoutingGame:
    """``base_game()`` with ``field[index] = value`` (``latency.kappa`` style paths)."""
    g = base_game()
    parts = field.split(".")
    owner = g if len(parts) == 1 else getattr(g, parts[0])
    shape = (N, J) if parts[-1] in ("demand", "tokens", "shareable") else (N, K)
    arr = np.array(np.broadcast_to(getattr(owner, parts[-1]), shape), np.float64)
    arr[index] = value
    owner = dataclasses.replace(owner, **{parts[-1]: arr})
    if len(parts) == 1:
        return owner
    return dataclasses.replace(g, **{parts[0]: owner})


SOLVERS = {
    "solve_equilibrium": lambda g, **kw: pj.solve_equilibrium(g, **kw),
    "solve_optimum": lambda g, **kw: pj.solve_optimum(g, **kw),
    "price_of_anarchy": lambda g, **kw: pj.price_of_anarchy(g, **kw),
}


@pytest.fixture
def no_compile(compile_counter):
    """Fails the test if anything was compiled during it: bad input never reaches XLA.

    JAX's one-op staging helpers are allowed: ``tol`` and ``max_iters`` are checked after the
    game has been moved to the device, which compiles a trivial transfer the first time a
    shape is seen (see the report); no solver may compile.
    """
    yield
    assert compile_counter.solver_count == 0, compile_counter.names


BAD_VALUES = [
    # field, index, value, text the message must contain besides the field and index
    ("demand", (2, 1), -0.5, ">= 0"),
    ("demand", (4, 0), np.nan, "finite"),
    ("demand", (0, 2), np.inf, "finite"),
    ("latency.kappa", (3, 2), 0.0, "> 0"),
    ("latency.kappa", (1, 0), -2.0, "> 0"),
    ("latency.p", (2, 3), 0.5, ">= 1"),
    ("latency.a", (0, 1), -1.0, ">= 0"),
    ("latency.rho_max", (1, 1), 1.0, "(0, 1)"),
    ("shareable", (3, 1), 1.5, "[0, 1]"),
    ("shareable", (0, 0), -0.1, "[0, 1]"),
    ("tokens", (1, 2), 0.0, "> 0"),
    ("residency", (4, 3), 0.0, "> 0"),
    ("cache_size", (2, 0), -1.0, "> 0"),
]


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize(("field", "index", "value", "rule"), BAD_VALUES)
def test_bad_value_names_field_and_index(solver, field, index, value, rule):
    g = with_value(field, index, value)
    with pytest.raises(pj.InputError) as err:
        SOLVERS[solver](g)
    msg = str(err.value)
    name = f"RoutingGame.{field}[{', '.join(map(str, index))}]"
    assert name in msg, msg
    assert rule in msg, msg


@pytest.mark.usefixtures("no_compile")
@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize(
    ("field", "index", "value"),
    [("demand", (2, 1), 1e39), ("latency.b", (0, 3), 5e38), ("latency.kappa", (1, 2), 1e-46),
     ("tokens", (4, 0), 1e-50), ("cache_size", (3, 1), 1e40)],
)  # fmt: skip
def test_values_float32_cannot_hold_are_named(solver, field, index, value):
    # Finite in float64, they passed the checks and became inf (or 0 where the rule needs > 0)
    # in float32: NaN or inf flows and costs, status non-finite, instead of an error.
    with pytest.raises(pj.InputError) as err:
        SOLVERS[solver](with_value(field, index, value), dtype="float32")
    msg = str(err.value)
    assert f"RoutingGame.{field}[{', '.join(map(str, index))}]" in msg, msg
    assert "not representable in float32" in msg and "float64" in msg, msg
    from poa_jax import batching

    batching.prepare(with_value(field, index, value), None, "float64")  # float64 holds them


def test_first_offending_index_is_reported():
    g = with_value("demand", (3, 2), -1.0)
    g = dataclasses.replace(g, demand=np.where(np.arange(N * J).reshape(N, J) == 4, -2.0,
                                               np.asarray(g.demand)))  # fmt: skip
    with pytest.raises(pj.InputError, match=re.escape("RoutingGame.demand[1, 1]")):
        pj.solve_equilibrium(g)


def test_messages_use_plain_numbers():
    with pytest.raises(pj.InputError) as err:
        pj.solve_equilibrium(with_value("demand", (1, 3 % J), -2.0))
    assert f"RoutingGame.demand[1, {3 % J}] = -2.0: must be finite and >= 0" in str(err.value)
    mask = np.ones((N, K), bool)
    mask[3] = False
    with pytest.raises(pj.InputError) as err:
        pj.solve_equilibrium(dataclasses.replace(base_game(), worker_mask=mask))
    assert "RoutingGame.worker_mask[3]" in str(err.value), str(err.value)


@pytest.mark.usefixtures("no_compile")
def test_bad_policy_field():
    with pytest.raises(pj.InputError, match=re.escape("policy.tau[2]")):
        pj.solve_equilibrium(base_game(), Policy(tau=np.array([0.0, 0.1, -1.0, 0.0, 0.0])))
    with pytest.raises(pj.InputError, match="w_true"):
        pj.solve_equilibrium(base_game(), Policy(w_true=0.0, w_prefill=0.0, w_decode=0.0))


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_mismatched_class_shapes(solver):
    g = dataclasses.replace(base_game(), tokens=np.ones((N, J + 1)))
    with pytest.raises(pj.InputError) as err:
        SOLVERS[solver](g)
    msg = str(err.value)
    assert "class" in msg and "RoutingGame.demand" in msg and "RoutingGame.tokens" in msg, msg
    assert f"({N}, {J + 1})" in msg, msg


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_mismatched_worker_shapes(solver):
    g = base_game()
    g = dataclasses.replace(g, latency=dataclasses.replace(g.latency, kappa=np.ones((N, K + 2))))
    with pytest.raises(pj.InputError) as err:
        SOLVERS[solver](g)
    msg = str(err.value)
    assert "worker" in msg and "RoutingGame.latency.kappa" in msg, msg


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_non_broadcastable_batch_axes(solver):
    g = base_game()
    g = dataclasses.replace(g, residency=np.ones((N + 1, K)))  # batch 6 against batch 5
    with pytest.raises(pj.InputError) as err:
        SOLVERS[solver](g)
    msg = str(err.value)
    assert "batch" in msg and "RoutingGame.residency" in msg and f"({N + 1},)" in msg, msg


@pytest.mark.usefixtures("no_compile")
def test_non_broadcastable_policy_batch():
    with pytest.raises(pj.InputError, match="policy.tau"):
        pj.solve_equilibrium(base_game(), Policy(tau=np.zeros(N + 2)))


def test_unknown_policy_name():
    with pytest.raises(pj.InputError, match=r"'greedy'.*selfish"):
        pj.policies.from_name("greedy")


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", ["solve_equilibrium", "price_of_anarchy"])
def test_unknown_method(solver):
    with pytest.raises(pj.InputError, match="'newton'"):
        SOLVERS[solver](base_game(), method="newton")


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("tol", [0.0, -1e-6, float("nan"), float("inf")])
def test_bad_tol(solver, tol):
    with pytest.raises(pj.InputError, match="tol"):
        SOLVERS[solver](base_game(), tol=tol)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("max_iters", [0, -3, 2.5])
def test_bad_max_iters(max_iters):
    with pytest.raises(pj.InputError, match="max_iters"):
        pj.solve_equilibrium(base_game(), max_iters=max_iters)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_instance_without_worker(solver):
    mask = np.ones((N, K), bool)
    mask[3] = False
    g = dataclasses.replace(base_game(), worker_mask=mask)
    with pytest.raises(pj.InputError, match=r"RoutingGame\.worker_mask\[.*3.*\].*worker"):
        SOLVERS[solver](g)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize(
    ("demand", "a", "rule"),
    [
        (np.zeros((0, 2)), np.ones((0, 3)), r"empty batch, shape \(0,\)"),
        (np.zeros((2, 0)), np.ones((2, 3)), "0 classes and 3 workers"),
        (np.ones((2, 2)), np.ones((2, 0)), "2 classes and 0 workers"),
    ],
)
def test_empty_batch_and_empty_axes(solver, demand, a, rule):
    # (an empty batch reached the solver and ended in a bare StopIteration)
    g = pj.RoutingGame(demand=demand, latency=pj.Latency(a=a))
    with pytest.raises(pj.InputError, match=rule):
        SOLVERS[solver](g)


@pytest.mark.usefixtures("no_compile")
def test_other_bad_inputs():
    with pytest.raises(pj.InputError, match="class axis"):
        pj.solve_equilibrium(pj.RoutingGame(demand=1.0, latency=pj.Latency(b=[1.0, 1.0])))
    with pytest.raises(pj.InputError, match="RoutingGame.demand"):
        pj.solve_equilibrium(pj.RoutingGame(demand=["a"], latency=pj.Latency(b=[1.0])))
    with pytest.raises(pj.InputError, match="dtype"):
        pj.solve_equilibrium(base_game(), dtype=np.int32)
    with pytest.raises(pj.InputError, match="starts"):
        pj.solve_optimum(base_game(), starts=0)
    with pytest.raises(pj.InputError, match="x0"):
        pj.solve_equilibrium(base_game(), x0=-np.ones((N, J, K)))
    with pytest.raises(pj.InputError, match="x0"):
        pj.solve_equilibrium(base_game(), x0=np.ones((N, J, K + 1)))
    with pytest.raises(pj.InputError, match="game"):
        pj.solve_equilibrium("not a game")


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("demand", ["0.3", "0.2", "0.1"], "got text"),  # NumPy alone reads these as numbers
        ("demand", [True, False, True], "got booleans"),
        ("latency.b", np.array([b"1", b"1", b"1", b"1"]), "got text"),
        ("cache_size", np.array([1.0, "2", 3.0, 4.0], object), "got text"),
    ],
)
def test_text_and_booleans_are_not_numbers(field, value, text, no_compile):
    g = base_game()
    name, *sub = field.split(".")
    if sub:
        g = dataclasses.replace(g, latency=dataclasses.replace(g.latency, **{sub[0]: value}))
    else:
        g = dataclasses.replace(g, **{name: value})
    with pytest.raises(
        pj.InputError, match=rf"RoutingGame\.{re.escape(field)}: must be numbers, {text}"
    ):
        pj.solve_equilibrium(g)
    star = pj.caching.star_distance(4)
    with pytest.raises(pj.InputError, match="placement_cost: must be numbers, got text"):
        pj.price_of_anarchy(pj.SelfishCachingGame(star, "1.5"))
    with pytest.raises(pj.InputError, match="TieredCacheGame.capacity: must be numbers, got bool"):
        pj.solve_equilibrium(
            pj.TieredCacheGame(
                pj.caching.complete_distance(3), np.ones((3, 4)), np.ones((3, 2), bool)
            )
        )


def test_input_error_is_a_value_error():
    assert issubclass(pj.InputError, ValueError)


def test_demand_above_capacity_is_not_an_error(cache_games):
    # Every worker saturated: total uncached work exceeds total capacity whatever the routing
    # (h ≤ η, so W ≥ Σ d·L·(1 − η) > Σ κ). Finite costs and a flag, not an exception.
    eta = np.asarray(cache_games.shareable)
    tokens = np.asarray(cache_games.tokens)
    demand = np.asarray(cache_games.demand)
    cap = np.asarray(cache_games.latency.kappa).sum(-1)
    floor_work = (demand * tokens * (1 - eta)).sum(-1)
    g = dataclasses.replace(cache_games, demand=demand * (2.0 * cap / floor_work)[:, None])
    sol = pj.solve_equilibrium(g)
    assert sol.overloaded.all()
    assert np.all(np.isfinite(sol.social_cost)) and np.all(np.isfinite(sol.flows))


# --------------------------------------------------------------------------- audit fixes


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize(
    ("tol", "text"),
    [(1.0, "tol = 1.0: must be in (0, 1)"), (10, "tol = 10.0: must be in (0, 1)"),
     ("abc", "tol = 'abc': must be a number")],
)  # fmt: skip
def test_tol_must_be_below_one(solver, tol, text):
    # a relative gap is at most 1: tol >= 1 marked every start converged (PoA 2668 "converged")
    with pytest.raises(pj.InputError, match=re.escape(text)):
        SOLVERS[solver](base_game(), tol=tol)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_bool_max_iters(solver):
    with pytest.raises(pj.InputError, match=re.escape("max_iters = True: must be an integer >= 1")):
        SOLVERS[solver](base_game(), max_iters=True)
    with pytest.raises(pj.InputError, match="max_iters = 'x'"):
        SOLVERS[solver](base_game(), max_iters="x")


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize(
    ("x0", "text"),
    [
        ([[0.9, -0.4]], r"x0\[0, 1\] = -0.4: must be finite and >= 0"),
        ([[np.nan, 1.0]], r"x0\[0, 0\] = nan: must be finite"),
        (np.ones(3), r"x0 has shape \(3,\): must broadcast to \(1, 2\)"),
        (np.ones((2, 1, 1, 1, 2)), r"x0 has shape \(2, 1, 1, 1, 2\)"),
    ],
)
def test_optimum_x0_is_checked(x0, text):
    pigou = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    with pytest.raises(pj.InputError, match=text):
        pj.solve_optimum(pigou, x0=x0)


def test_optimum_x0_is_rescaled_to_demand_on_existing_workers():
    # x0 = 0 returned flows 0 and SC 0 "converged"; flow on a masked worker was kept.
    pigou = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    opt = pj.solve_optimum(pigou, starts=1, x0=[[0.0, 0.0]])
    np.testing.assert_allclose(opt.flows, [[0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(opt.social_cost, 0.75, rtol=1e-8)
    assert bool(opt.converged)
    masked = dataclasses.replace(pigou, worker_mask=[True, False])
    opt = pj.solve_optimum(masked, starts=1, x0=[[0.0, 1.0]])
    np.testing.assert_array_equal(opt.flows, [[1.0, 0.0]])
    np.testing.assert_allclose(opt.social_cost, 1.0)
    # several starts per instance, (..., S, J, K), rescaled the same way as warm starts
    opt = pj.solve_optimum(pigou, starts=1, x0=[[[3.0, 1.0]], [[0.0, 0.0]]])
    np.testing.assert_allclose(opt.social_cost, 0.75, rtol=1e-8)


def test_optimum_x0_near_the_float64_maximum_is_rescaled():
    # A row summing past the float64 maximum was rescaled to 0 (a / inf): the all-zero start
    # won as the "optimum", flows [[0, 0]], SC 0, converged.
    pigou = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    opt = pj.solve_optimum(pigou, starts=1, x0=[[1e308, 1e308]])
    np.testing.assert_allclose(opt.flows, [[0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(opt.social_cost, 0.75, rtol=1e-8)


def test_equilibrium_x0_is_rescaled_to_demand_as_the_other_x0s(cache_games):
    # solve_equilibrium left x0 to the solvers' Euclidean projection where price_of_anarchy and
    # solve_optimum rescale each row: shares [0.9, 0.1] of a demand of 10 started at
    # [5.4, 4.6], not [9, 1], and with the cache term settled in other equilibria.
    shares = np.random.default_rng(0).dirichlet(np.full(4, 0.3), (8, 3))
    flows = shares * np.asarray(cache_games.demand)[..., None]
    a = pj.solve_equilibrium(cache_games, x0=3.0 * shares)
    b = pj.solve_equilibrium(cache_games, x0=flows)
    np.testing.assert_allclose(a.flows, b.flows, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    lat = pj.Latency(a=[0.0, 1.0, 0.0], b=[1.0, 0.0, 1.0])
    masked = pj.RoutingGame(demand=[2.0, 1.0], latency=lat, worker_mask=[True, True, False])
    sol = pj.solve_equilibrium(masked, x0=[[0.0, 0.0, 5.0], [1.0, 1.0, 1.0]], max_iters=1)
    assert np.all(sol.flows[:, 2] == 0.0)


def test_poa_is_nan_where_a_cost_overflows():
    # float32 overflow: c·x^300 at x = 2 gave SC(eq) = SC(opt) = NaN and PoA = 1.0 "ok";
    # κ = 1e-19 gives NaN/inf. The normal instance beside them must be unaffected.
    lat = pj.Latency(
        c=[[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]], p=[[300.0, 300.0], [1.0, 1.0], [2.0, 2.0]],
        d=[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], kappa=[[np.inf] * 2, [1e-19] * 2, [np.inf] * 2],
        a=[[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]],
    )  # fmt: skip
    g = pj.RoutingGame(demand=[[4.0], [1.0], [1.0]], latency=lat)
    r = pj.price_of_anarchy(g, dtype=np.float32)
    assert np.isnan(r.poa[:2]).all() and np.isnan(r.price_of_stability[:2]).all(), r.poa
    assert not r.converged[:2].any() and (r.equilibrium.status[:2] == 2).all()
    alone = pj.price_of_anarchy(
        pj.RoutingGame(demand=[1.0], latency=pj.Latency(c=[1.0, 1.0], p=[2.0, 2.0], a=[0, 1.0])),
        dtype=np.float32,
    )
    assert r.converged[2] and bool(alone.converged) and alone.poa > 1
    np.testing.assert_allclose(r.poa[2], alone.poa, rtol=1e-6)
    np.testing.assert_allclose(r.optimum.social_cost[2], alone.optimum.social_cost, rtol=1e-6)


def test_poa_ratio_rule():
    from poa_jax.poa import _ratio

    got = _ratio([0.0, 2.0, np.nan, 1.0, np.inf, 1.0], [0.0, 1.0, 1.0, np.inf, np.inf, 0.0])
    np.testing.assert_array_equal(got, [1.0, 2.0, np.nan, np.nan, np.nan, np.inf])


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", ["solve_equilibrium", "price_of_anarchy"])
def test_frank_wolfe_refused_with_cache_term(solver):
    # base_game has shareable 0.5: no potential, FW converged on 4% with SC off by 16%
    with pytest.raises(pj.InputError, match=r"'frank_wolfe'.*potential.*shareable\[0\]"):
        SOLVERS[solver](base_game(), method="frank_wolfe")
    with pytest.raises(pj.InputError, match=r"'frank_wolfe'.*shareable\[0\]"):
        SOLVERS[solver](base_game(), policy=pj.policies.dynamo(), method="frank_wolfe")


def test_frank_wolfe_with_cache_term_and_load_balanced_policy():
    # load-balanced routing ignores cache hits: a potential exists, FW stays allowed
    g = dataclasses.replace(base_game(), shareable=0.5)
    sol = pj.solve_equilibrium(g, pj.policies.load_balanced(), method="frank_wolfe", tol=1e-6)
    assert sol.converged.all(), sol.status


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", ["solve_equilibrium", "price_of_anarchy"])
@pytest.mark.parametrize("method", ["projection", "extragradient", "frank_wolfe"])
def test_logit_policy_takes_auto_only(solver, method):
    tau = np.array([0.0, 0.0, 0.3, 0.0, 0.0])
    with pytest.raises(pj.InputError, match=rf"method '{method}'.*tau\[2\].*logit.*'auto'"):
        SOLVERS[solver](base_game(), policy=pj.policies.dynamo(tau=tau), method=method)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("value", [np.nan, 0.5, 2.0, -1.0])
def test_worker_mask_must_be_boolean(solver, value):
    mask = np.ones((N, K))
    mask[1, 2] = value
    g = dataclasses.replace(base_game(), worker_mask=mask)
    with pytest.raises(pj.InputError, match=re.escape("RoutingGame.worker_mask[1, 2] = ")) as e:
        SOLVERS[solver](g)
    assert "must be a boolean" in str(e.value)
    with pytest.raises(pj.InputError, match="RoutingGame.worker_mask"):
        SOLVERS[solver](dataclasses.replace(base_game(), worker_mask="yes"))


@pytest.mark.usefixtures("no_compile")
def test_worker_mask_accepts_zero_one():
    from poa_jax import batching

    mask = np.ones((N, K), np.int64)
    mask[2, 1] = 0
    prep = batching.prepare(dataclasses.replace(base_game(), worker_mask=mask))
    np.testing.assert_array_equal(np.asarray(prep.game.worker_mask), mask.astype(bool))


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("solver", ["solve_optimum", "price_of_anarchy"])
@pytest.mark.parametrize(
    ("kw", "text"),
    [
        (dict(seed=-1), "seed = -1: must be an integer >= 0"),
        (dict(seed=1.5), "seed = 1.5: must be an integer >= 0"),
        (dict(descent_steps=-1), "descent_steps = -1: must be an integer >= 0"),
        (dict(descent_steps=2.7), "descent_steps = 2.7: must be an integer >= 0"),
    ],
)
def test_bad_optimum_options(solver, kw, text):
    with pytest.raises(pj.InputError, match=re.escape(text)):
        SOLVERS[solver](base_game(), **kw)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("lr", [np.nan, -1.0, 0.0, "x"])
def test_bad_lr(lr):
    with pytest.raises(pj.InputError, match="lr = "):
        pj.solve_optimum(base_game(), lr=lr)


@pytest.mark.parametrize(
    ("credits", "where"), [((1.0, np.nan, 0.25), 1), ((1.0, 0.75, 5.0), 2), ((1.5, 0.75, 0.25), 0),
                           ((1.0, -0.1, 0.25), 1)],
)  # fmt: skip
def test_dynamo_credits_in_unit_interval(credits, where):
    with pytest.raises(pj.InputError, match=re.escape(f"dynamo.credits[{where}] = ")) as e:
        pj.policies.dynamo(credits=credits)
    assert "must be in [0, 1]" in str(e.value)
    pj.policies.dynamo(credits=(0.0, 1.0, 0.5))  # the bounds are allowed


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_optimum_starts_named_before_any_compile(value):
    # (it was refused as "starts = 0" after the equilibrium had been compiled and solved)
    with pytest.raises(pj.InputError, match=rf"^optimum_starts = {value!r}: must be an integer"):
        pj.price_of_anarchy(base_game(), optimum_starts=value)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize(
    ("kw", "text"),
    [
        (dict(max_iters=10**20),
         f"max_iters = {10**20}: must be an integer >= 1 (and <= 2147483647)"),
        (dict(starts=10**20), f"starts = {10**20}: must be an integer >= 1 (and <= 1024)"),
        (dict(optimum_starts=5000), "optimum_starts = 5000: must be an integer >= 1 (and <= 1024)"),
        (dict(seed=2**64), f"seed = {2**64}: must be an integer >= 0 (and <= {2**63 - 1})"),
    ],
)  # fmt: skip
def test_huge_integers_are_refused_before_any_compile(kw, text):
    # max_iters 1e20 overflowed the int32 loop counter inside jit (OverflowError), and starts
    # 1e20 went on building starts until the memory ran out.
    with pytest.raises(pj.InputError, match=re.escape(text)):
        pj.price_of_anarchy(base_game(), **kw)


@pytest.mark.usefixtures("no_compile")
@pytest.mark.parametrize("kind", ["selfish_caching", "tiered"])
def test_huge_caching_integers_are_named(kind):
    if kind == "selfish_caching":
        g = pj.SelfishCachingGame(np.array([[0.0, 1.0], [1.0, 0.0]]), placement_cost=1.0)
    else:
        g = pj.TieredCacheGame(distance=np.zeros((2, 2)), rates=[[3.0, 1.0], [3.0, 1.0]],
                               capacity=[[1.0], [1.0]])  # fmt: skip
    # np.isfinite(10**23) raised a TypeError: the check itself crashed.
    with pytest.raises(pj.InputError, match=re.escape("seed = 100000000000000000000000: must")):
        pj.price_of_anarchy(g, seed=10**23)
    with pytest.raises(pj.InputError, match=re.escape("starts = 5000: must be an integer >= 1")):
        pj.price_of_anarchy(g, starts=5000)


@pytest.mark.parametrize(
    ("call", "kw", "name"),
    [
        ("eq", dict(x0=np.ones(5)), "x0"),
        ("poa", dict(starts=0), "starts"),
        ("poa", dict(optimum_starts=8), "optimum_starts"),
        ("poa", dict(seed=3), "seed"),
        ("opt", dict(descent_steps=10), "descent_steps"),
        ("opt", dict(starts=5), "starts"),
    ],
)
def test_options_a_graph_game_would_ignore_are_refused(call, kw, name):
    # They were silently ignored: the path solvers have their own starts.
    lat = pj.Latency(a=[0.0, 1.0, 1.0, 0.0, 0.0], b=[1.0, 0.0, 0.0, 1.0, 0.0])
    g = pj.GraphGame(tail=[0, 0, 1, 2, 1], head=[1, 2, 3, 3, 2], latency=lat, origins=[0],
                     destinations=[3], demand=[1.0], num_nodes=4)  # fmt: skip
    fn = {"eq": pj.solve_equilibrium, "opt": pj.solve_optimum, "poa": pj.price_of_anarchy}[call]
    with pytest.raises(pj.InputError, match=rf"^{name} = .*does not apply to a GraphGame"):
        fn(g, **kw)
