"""The edge where batches are made: broadcasting, flattening, and ``jit(vmap(kernel))``.

Public functions accept games whose fields broadcast over any leading batch axes. Here they are
checked (:mod:`poa_jax.validation`), broadcast to a common batch shape, flattened to one batch
axis ``N`` and handed to a jitted ``vmap`` of the one-instance solvers in :mod:`poa_jax.solvers`.
This module is the only place that applies ``vmap``; jit caches one executable per
(batch size, J, K, dtype, static options), so a second batch of the same shape does not
recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from poa_jax import solvers
from poa_jax.errors import InputError
from poa_jax.game import RoutingGame
from poa_jax.latency import Latency, PrefillTime
from poa_jax.policies import Policy
from poa_jax.validation import as_array, check

__all__ = ["Prepared", "prepare", "equilibria", "optima"]

_LAT = ("a", "b", "c", "p", "d", "kappa", "rho_max")
_LAT_RULES = dict(
    a="finite_ge0", b="finite_ge0", c="finite_ge0", p="p", d="finite_ge0",
    kappa="pos_or_inf", rho_max="open_unit",
)  # fmt: skip
_PRE = ("a", "b", "c")
_POL_RULES = dict(
    w_true="finite_ge0", w_prefill="finite_ge0", w_decode="finite_ge0", tau="finite_ge0",
    credit="finite_ge0", span_floor="finite_ge0",
)  # fmt: skip


class Prepared(NamedTuple):
    """A checked batch, flattened to one leading axis ``N``."""

    game: RoutingGame  # fields (N, J) / (N, K), jnp arrays of the working dtype
    policy: Policy  # fields (N,)
    batch_shape: tuple[int, ...]
    num_classes: int  # J
    num_workers: int  # K
    dtype: np.dtype


def _float_dtype(dtype) -> np.dtype:
    if dtype is None:
        return np.dtype(jnp.result_type(float))
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise InputError(f"dtype {dt}: must be float32 or float64")
    if dt == np.float64 and not jax.config.jax_enable_x64:
        raise InputError("dtype float64 needs jax.config.update('jax_enable_x64', True)")
    return dt


def _last_dim(fields: dict[str, np.ndarray], axis_name: str) -> int:
    sizes = {n: a.shape[-1] for n, a in fields.items() if a.ndim >= 1 and a.shape[-1] != 1}
    distinct = sorted(set(sizes.values()))
    if len(distinct) > 1:
        detail = ", ".join(f"{n} {fields[n].shape}" for n in sizes)
        raise InputError(
            f"mismatched shapes: the last axis is the {axis_name} axis and must agree "
            f"(or be 1): {detail}"
        )
    return distinct[0] if distinct else 1


def _batch_shape(parts: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*parts.values()))
    except ValueError:
        detail = ", ".join(f"{n} {s}" for n, s in parts.items() if s)
        raise InputError(f"mismatched batch axes (leading axes must broadcast): {detail}") from None


def prepare(game: RoutingGame, policy: Policy | None = None, dtype=None) -> Prepared:
    """Checks, broadcasts and flattens a game (and policy) batch. Raises :class:`InputError`."""
    if not isinstance(game, RoutingGame):
        raise InputError(f"game: expected pj.RoutingGame, got {type(game).__name__}")
    if not isinstance(game.latency, Latency):
        raise InputError("RoutingGame.latency: expected pj.Latency")
    if not isinstance(game.prefill, PrefillTime):
        raise InputError("RoutingGame.prefill: expected pj.PrefillTime")
    policy = Policy() if policy is None else policy
    if not isinstance(policy, Policy):
        raise InputError(f"policy: expected a pj.policies.Policy, got {type(policy).__name__}")
    dt = _float_dtype(dtype)

    jf = {
        "RoutingGame.demand": as_array("RoutingGame.demand", game.demand),
        "RoutingGame.tokens": as_array("RoutingGame.tokens", game.tokens),
        "RoutingGame.shareable": as_array("RoutingGame.shareable", game.shareable),
    }
    if jf["RoutingGame.demand"].ndim == 0:
        raise InputError("RoutingGame.demand: must have a class axis, shape (..., J)")
    check("RoutingGame.demand", jf["RoutingGame.demand"], "finite_ge0")
    check("RoutingGame.tokens", jf["RoutingGame.tokens"], "finite_gt0")
    check("RoutingGame.shareable", jf["RoutingGame.shareable"], "unit")

    kf: dict[str, np.ndarray] = {}
    for f in _LAT:
        name = f"RoutingGame.latency.{f}"
        kf[name] = as_array(name, getattr(game.latency, f))
        check(name, kf[name], _LAT_RULES[f])
    for f in _PRE:
        name = f"RoutingGame.prefill.{f}"
        kf[name] = as_array(name, getattr(game.prefill, f))
        check(name, kf[name], "finite_ge0")
    kf["RoutingGame.residency"] = as_array("RoutingGame.residency", game.residency)
    check("RoutingGame.residency", kf["RoutingGame.residency"], "finite_gt0")
    kf["RoutingGame.cache_size"] = as_array("RoutingGame.cache_size", game.cache_size)
    check("RoutingGame.cache_size", kf["RoutingGame.cache_size"], "pos_or_inf")
    mask = as_array("RoutingGame.worker_mask", game.worker_mask, dtype=bool)
    kf["RoutingGame.worker_mask"] = mask

    pf = {}
    for f, rule in _POL_RULES.items():
        name = f"policy.{f}"
        pf[name] = as_array(name, getattr(policy, f))
        check(name, pf[name], rule)

    J = _last_dim(jf, "class (J)")
    K = _last_dim({n: a for n, a in kf.items()}, "worker (K)")
    parts = {n: a.shape[:-1] for n, a in {**jf, **kf}.items() if a.ndim >= 1}
    parts.update({n: a.shape for n, a in pf.items()})
    batch = _batch_shape(parts)
    n = int(np.prod(batch, dtype=np.int64))

    def flat(a, last):
        shape = batch + ((last,) if last else ())
        if last and a.ndim == 0:
            a = a.reshape(1)
        return np.broadcast_to(a, shape).reshape((n,) + ((last,) if last else ()))

    mask_flat = flat(mask, K)
    no_worker = ~mask_flat.any(axis=-1)
    if no_worker.any():
        i = np.unravel_index(int(np.argmax(no_worker)), batch) if batch else ()
        raise InputError(f"RoutingGame.worker_mask{list(i)}: every instance needs a worker")
    pw = sum(flat(pf[f"policy.{w}"], 0) for w in ("w_true", "w_prefill", "w_decode"))
    if np.any(pw <= 0):
        raise InputError("policy: w_true + w_prefill + w_decode must be > 0 (a cost to route by)")

    to = functools.partial(jnp.asarray, dtype=dt)
    lat = Latency(**{f: to(flat(kf[f"RoutingGame.latency.{f}"], K)) for f in _LAT})
    pre = PrefillTime(**{f: to(flat(kf[f"RoutingGame.prefill.{f}"], K)) for f in _PRE})
    g = RoutingGame(
        demand=to(flat(jf["RoutingGame.demand"], J)),
        latency=lat,
        tokens=to(flat(jf["RoutingGame.tokens"], J)),
        shareable=to(flat(jf["RoutingGame.shareable"], J)),
        residency=to(flat(kf["RoutingGame.residency"], K)),
        cache_size=to(flat(kf["RoutingGame.cache_size"], K)),
        prefill=pre,
        worker_mask=jnp.asarray(mask_flat),
    )
    pol = Policy(**{f: to(flat(pf[f"policy.{f}"], 0)) for f in _POL_RULES})
    return Prepared(g, pol, batch, J, K, dt)


def take(p: Prepared, idx: np.ndarray) -> Prepared:
    """The sub-batch ``idx`` (flat indices) of a prepared batch."""
    sel = lambda t: jax.tree_util.tree_map(lambda a: a[idx], t)
    return p._replace(game=sel(p.game), policy=sel(p.policy), batch_shape=(len(idx),))


# --------------------------------------------------------------------------- jitted batches


@functools.partial(jax.jit, static_argnames=("method", "tol", "max_iters"))
def equilibria(game, policy, x0, *, method: str, tol: float, max_iters: int):
    """Equilibria for ``x0 (N, S, J, K)``: S starts per instance, all in one vmap."""
    one = functools.partial(solvers.equilibrium, method=method, tol=tol, max_iters=max_iters)
    per_start = jax.vmap(one, in_axes=(None, None, 0))
    return jax.vmap(per_start)(game, policy, x0)


@functools.partial(jax.jit, static_argnames=("tol", "max_iters", "descent_steps", "lr"))
def optima(game, x0, *, tol: float, max_iters: int, descent_steps: int, lr: float):
    """Social optima for ``x0 (N, S, J, K)``: best of S starts per instance."""
    one = functools.partial(
        solvers.optimum, tol=tol, max_iters=max_iters, descent_steps=descent_steps, lr=lr
    )
    return jax.vmap(one)(game, x0)


def replace(obj, **kw):
    return dataclasses.replace(obj, **kw)
