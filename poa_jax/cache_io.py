"""Caching games as JSON for ``poa-jax solve``: the discrete, the fluid tiered and the coupled
routing ⇄ caching game.

A game file with a ``"game"`` key names a caching game; its other keys are the game's fields
(:class:`~poa_jax.SelfishCachingGame`, :class:`~poa_jax.TieredCacheGame`) and the PoA options::

    {"game": "selfish_caching", "distance": [[0, 1], [1, 0]], "placement_cost": 1.5,
     "demand": [1, 1], "starts": 16, "seed": 0}

    {"game": "tiered_cache", "distance": ..., "rates": ..., "capacity": ...,
     "access_latency": ... (or "credit": ...), "miss_cost": ..., "size": ...,
     "peer_credit": ..., "shared_capacity": ..., "shared_latency": ... (or "shared_credit"),
     "symmetric": true, "starts": 4, "optimum_starts": 4, "seed": 0}

    {"game": "coupled", "routing": {a routing game, as examples/game.json, selfish policy},
     "distance": ..., "capacity": ..., "credit": ... (or "access_latency": ...),
     "peer_credit": ..., "shared_capacity": ..., "shared_credit": ... (or "shared_latency"),
     "damping": 0.5, "optimum_starts": 4, "seed": 0}

Leading axes of the arrays are batch axes, as in the Python API. :func:`read` checks the keys
and that every value is numeric before the game is built (whose own checks name the field and
the rule); :func:`report` turns a result into JSON values.
"""

from __future__ import annotations

import numpy as np

from poa_jax.errors import InputError
from poa_jax.validation import MAX_STARTS, SEED_MAX

__all__ = ["GAMES", "read", "solve", "report"]

_COMMON = {"game", "name", "description", "starts", "seed"}
#: Game name → (array fields, required fields, scalar options).
GAMES = {
    "selfish_caching": (
        ("distance", "placement_cost", "demand", "miss_cost"),
        ("distance", "placement_cost"),
        ("symmetric",),
    ),
    "tiered_cache": (
        (
            "distance",
            "rates",
            "capacity",
            "credit",
            "access_latency",
            "miss_cost",
            "size",
            "shared_capacity",
            "shared_latency",
        ),
        ("distance", "rates", "capacity"),
        ("peer_credit", "shared_credit", "symmetric", "optimum_starts"),
    ),
    "coupled": (
        ("distance", "capacity", "credit", "access_latency", "shared_capacity", "shared_latency"),
        ("routing", "distance", "capacity"),
        ("peer_credit", "shared_credit", "damping", "optimum_starts"),
    ),
}


def read(src: str, data: dict):
    """``(game, options)`` from a parsed caching-game JSON object; raises :class:`InputError`."""
    from poa_jax import caching, cli, tiered_cache

    kind = data.get("game")
    if kind not in GAMES:
        raise InputError(
            f"{src}: game = {kind!r}: unknown game, must be one of {', '.join(GAMES)} (or "
            "leave 'game' out for a routing game)"
        )
    arrays, required, scalars = GAMES[kind]
    extra = {"routing"} if kind == "coupled" else set()
    cli._keys(src, "", data, _COMMON | set(arrays) | set(scalars) | extra, required)
    for k in arrays:
        if k in data:
            cli._numeric(src, k, data[k], allow_bool=False)
    for k in ("name", "description"):
        if k in data and not isinstance(data[k], str):
            raise InputError(f"{src}: {k} = {data[k]!r}: must be a string")
    if "symmetric" in data and not isinstance(data["symmetric"], bool):
        raise InputError(f"{src}: symmetric = {data['symmetric']!r}: must be true or false")
    for k in ("peer_credit", "shared_credit", "damping"):
        if k in data:
            cli._numeric(src, k, data[k], allow_bool=False)
    if kind == "coupled" and "starts" in data:
        raise InputError(
            f"{src}: starts: the coupled game computes one fixed point (no equilibrium starts); "
            "optimum_starts sets the optimum's"
        )
    opts = {"starts": cli._int_field(src, "starts", data.get("starts"))}
    for key, high in (("seed", SEED_MAX), ("optimum_starts", MAX_STARTS)):
        if key in data:
            v = data[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= high:
                raise InputError(f"{src}: {key} = {v!r}: must be an integer >= 0 (and <= {high})")
            opts[key] = v
    opts = {k: v for k, v in opts.items() if v is not None}
    fields = {k: data[k] for k in arrays + scalars if k in data and k != "optimum_starts"}
    if kind == "coupled":
        return _coupled(src, data["routing"], fields), opts
    cls = caching.SelfishCachingGame if kind == "selfish_caching" else tiered_cache.TieredCacheGame
    return cls(**fields), opts


def _coupled(src: str, routing, fields: dict):
    """The :class:`~poa_jax.CoupledGame` of a ``"coupled"`` file: its ``routing`` object is read
    as a routing-game file (:func:`poa_jax.cli.read_game`), selfish and without options."""
    from poa_jax import cli, coupled

    if not isinstance(routing, dict):
        raise InputError(f"{src}: routing: must be an object, got {cli._jtype(routing)}")
    for k in ("starts", "tol", "max_iters"):
        if k in routing:
            raise InputError(
                f"{src}: routing.{k}: not an option of the coupled game's file (its options, "
                "optimum_starts and seed, are top-level keys)"
            )
    name = (
        routing.get("policy", {}).get("name") if isinstance(routing.get("policy"), dict) else None
    )
    if "policy" in routing and name != "selfish":
        raise InputError(
            f"{src}: routing.policy: the coupled game routes selfishly (name 'selfish')"
        )
    game, _, _ = cli.read_game(f"{src}: routing", routing)
    return coupled.CoupledGame(routing=game, **fields)


def solve(src: str, game, opts: dict, dtype: str):
    """The game's PoA result; the library's messages are prefixed with the file's name."""
    from poa_jax import caching, coupled, tiered_cache

    try:
        if isinstance(game, caching.SelfishCachingGame):
            return caching.price_of_anarchy(game, dtype=dtype, **opts)
        if isinstance(game, coupled.CoupledGame):
            return coupled.price_of_anarchy(game, dtype=dtype, **opts)
        return tiered_cache.price_of_anarchy(game, dtype=dtype, **opts)
    except InputError as e:
        msg = str(e)
        for owner in ("SelfishCachingGame.", "TieredCacheGame.", "CoupledGame."):
            msg = msg.replace(owner, "")
        msg = msg.replace("RoutingGame.", "routing.")
        raise InputError(f"{src}: {msg}") from None


def report(res, single: bool) -> dict:
    """JSON values of a :class:`~poa_jax.caching.CachingPoAResult`,
    :class:`~poa_jax.tiered_cache.TieredPoAResult` or :class:`~poa_jax.coupled.CoupledPoAResult`."""
    from poa_jax import caching, coupled
    from poa_jax.cli import _jsonable
    from poa_jax.sweep import STATUS

    j = lambda a: _jsonable(a, single)  # noqa: E731
    names = np.vectorize(lambda c: STATUS.get(int(c), str(c)), otypes=[object])
    if isinstance(res, coupled.CoupledPoAResult):
        eq = res.equilibrium
        out = {
            "poa": j(res.poa), "price_of_stability": j(res.price_of_stability),
            "equilibrium_cost": j(eq.social_cost), "optimum_cost": j(res.optimum_cost),
            "converged": j(res.converged),
            "rounds": j(eq.rounds), "residual": j(eq.residual),
            "status": names(np.asarray(eq.status)).tolist(),
            "routing_gap": j(eq.routing_gap), "caching_gap": j(eq.caching_gap),
            "optimum_gap": j(res.optimum_gap),
            "optimum_status": names(np.asarray(res.optimum_status)).tolist(),
            "flows": j(eq.flows), "hit": j(eq.hit), "placement": j(eq.placement),
            "optimum_flows": j(res.optimum_flows), "optimum_placement": j(res.optimum_placement),
        }  # fmt: skip
        if eq.shared is not None:
            out.update(shared=j(eq.shared), optimum_shared=j(res.optimum_shared))
        return out
    out = {
        "poa": j(res.poa),
        "price_of_stability": j(res.price_of_stability),
        "optimum_cost": j(res.optimum_cost),
        "equilibrium_costs": j(res.equilibrium_costs),
        "converged": j(res.converged),
    }
    # the costs are NaN-padded to a fixed width: keep the columns some instance fills
    width = max(1, int(np.max(res.equilibrium_count, initial=0)))
    out["equilibrium_costs"] = j(np.asarray(res.equilibrium_costs)[..., :width])
    out["equilibrium_count"] = j(res.equilibrium_count)
    if isinstance(res, caching.CachingPoAResult):
        out.update(
            exact=j(res.exact), poa_upper=j(res.poa_upper),
            optimum_lower_bound=j(res.optimum_lower_bound),
            worst_equilibrium=j(res.worst_equilibrium), best_equilibrium=j(res.best_equilibrium),
            optimum=j(res.optimum),
        )  # fmt: skip
    else:
        eq, opt = res.equilibrium, res.optimum
        out.update(
            gap=j(eq.gap), rounds=j(eq.rounds), status=names(np.asarray(eq.status)).tolist(),
            optimum_gap=j(opt.gap), optimum_status=names(np.asarray(opt.status)).tolist(),
            equilibrium_placement=j(eq.placement), optimum_placement=j(opt.placement),
        )  # fmt: skip
        if eq.shared is not None:
            out.update(equilibrium_shared=j(eq.shared), optimum_shared=j(res.optimum.shared))
    return out
