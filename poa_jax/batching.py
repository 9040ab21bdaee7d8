"""The edge where batches are made: broadcasting, flattening, and ``jit(vmap(kernel))``.

Public functions accept games whose fields broadcast over any leading batch axes. Here they are
checked (:mod:`poa_jax.validation`), broadcast to a common batch shape, flattened to one batch
axis ``N`` and handed to a jitted ``vmap`` of the one-instance solvers in :mod:`poa_jax.solvers`.
This module is the only place that applies ``vmap``; jit caches one executable per
(batch size, J, K, dtype, static options), so a second batch of the same shape does not
recompile.
"""

from __future__ import annotations

import contextlib
import functools
import os
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


def float_dtype(dtype) -> np.dtype:
    """The working float dtype: ``dtype`` checked, or JAX's default float."""
    if dtype is None:
        return np.dtype(jnp.result_type(float))
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise InputError(f"dtype {dtype!r}: must be float32 or float64") from None
    if dt not in (np.float32, np.float64):
        raise InputError(f"dtype {dt}: must be float32 or float64")
    if dt == np.float64 and not jax.config.jax_enable_x64:
        raise InputError("dtype float64 needs jax.config.update('jax_enable_x64', True)")
    return dt


#: Rules of fields that must stay > 0 (a value that rounds to 0 in the working dtype breaks them).
_POSITIVE = ("finite_gt0", "pos_or_inf")


def _representable(name: str, a: np.ndarray, rule: str, dt: np.dtype) -> None:
    """:class:`InputError` at the first value of ``a`` (checked by ``rule`` in float64) that the
    working dtype ``dt`` cannot hold: finite past ``finfo(dt).max`` (it would be ``inf``; float32:
    3.4e38) or, for a rule that needs ``> 0``, positive below the smallest subnormal (it would
    be 0; float32: 1.4e-45). Such a game came back with NaN or ``inf`` flows and costs
    (status non-finite) instead of this error."""
    if dt == np.float64 or a.size == 0:
        return
    with np.errstate(over="ignore", under="ignore"):
        c = a.astype(dt)
    bad = np.isfinite(a) & ~np.isfinite(c)
    if rule in _POSITIVE:
        bad |= (a > 0) & (c == 0)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0]) if a.ndim else ()
        where = f"[{', '.join(map(str, idx))}]" if idx else ""
        fi = np.finfo(dt)
        raise InputError(
            f"{name}{where} = {(a[idx] if idx else a).item()!r}: not representable in {dt} "
            f"(magnitudes {fi.smallest_subnormal:.3g} to {fi.max:.3g}): use dtype float64 or "
            "other units"
        )


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
    dt = float_dtype(dtype)

    def checked(name, arr, rule):
        check(name, arr, rule)
        _representable(name, arr, rule, dt)

    jf = {
        "RoutingGame.demand": as_array("RoutingGame.demand", game.demand),
        "RoutingGame.tokens": as_array("RoutingGame.tokens", game.tokens),
        "RoutingGame.shareable": as_array("RoutingGame.shareable", game.shareable),
    }
    if jf["RoutingGame.demand"].ndim == 0:
        raise InputError("RoutingGame.demand: must have a class axis, shape (..., J)")
    checked("RoutingGame.demand", jf["RoutingGame.demand"], "finite_ge0")
    checked("RoutingGame.tokens", jf["RoutingGame.tokens"], "finite_gt0")
    checked("RoutingGame.shareable", jf["RoutingGame.shareable"], "unit")

    kf: dict[str, np.ndarray] = {}
    for f in _LAT:
        name = f"RoutingGame.latency.{f}"
        kf[name] = as_array(name, getattr(game.latency, f))
        checked(name, kf[name], _LAT_RULES[f])
    for f in _PRE:
        name = f"RoutingGame.prefill.{f}"
        kf[name] = as_array(name, getattr(game.prefill, f))
        checked(name, kf[name], "finite_ge0")
    kf["RoutingGame.residency"] = as_array("RoutingGame.residency", game.residency)
    checked("RoutingGame.residency", kf["RoutingGame.residency"], "finite_gt0")
    kf["RoutingGame.cache_size"] = as_array("RoutingGame.cache_size", game.cache_size)
    checked("RoutingGame.cache_size", kf["RoutingGame.cache_size"], "pos_or_inf")
    # NaN, 0.5, "x" are not bools
    mask = as_array("RoutingGame.worker_mask", game.worker_mask, booleans=True)
    check("RoutingGame.worker_mask", mask, "zero_one")
    mask = mask.astype(bool)
    kf["RoutingGame.worker_mask"] = mask

    pf = {}
    for f, rule in _POL_RULES.items():
        name = f"policy.{f}"
        pf[name] = as_array(name, getattr(policy, f))
        checked(name, pf[name], rule)

    J = _last_dim(jf, "class (J)")
    K = _last_dim({n: a for n, a in kf.items()}, "worker (K)")
    parts = {n: a.shape[:-1] for n, a in {**jf, **kf}.items() if a.ndim >= 1}
    parts.update({n: a.shape for n, a in pf.items()})
    batch = _batch_shape(parts)
    n = int(np.prod(batch, dtype=np.int64))
    if n == 0:
        raise InputError(f"RoutingGame: empty batch, shape {batch}: needs at least one instance")
    if J == 0 or K == 0:
        raise InputError(f"RoutingGame: {J} classes and {K} workers: needs at least one of each")

    def flat(a, last):
        shape = batch + ((last,) if last else ())
        if last and a.ndim == 0:
            a = a.reshape(1)
        return np.broadcast_to(a, shape).reshape((n,) + ((last,) if last else ()))

    mask_flat = flat(mask, K)
    no_worker = ~mask_flat.any(axis=-1)
    if no_worker.any():
        i = np.unravel_index(int(np.argmax(no_worker)), batch) if batch else ()
        where = f"[{', '.join(str(int(v)) for v in i)}]" if batch else ""
        raise InputError(f"RoutingGame.worker_mask{where}: every instance needs a worker")
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
#
# Under vmap a while_loop runs until its slowest lane stops (jax-ml/jax#20628), and iteration
# counts on the cache-on family are heavy-tailed (median ~100, a tail to the bound). Batches
# larger than COMPACT_ABOVE are therefore solved in rounds of ROUND_ITERS iterations; between
# rounds the unfinished instances are gathered into a smaller array (sizes from a few fixed
# buckets, so only a handful of shapes ever compile) and the finished ones drop out. The carry
# holds the whole solver state, so a lane's trajectory, and its result, do not depend on the
# rounds: batched ≡ looped.

ROUND_ITERS = 32
COMPACT_ABOVE = 256
#: Lanes per call. On the 2-core CPU, N = 10⁴ cache-on 5×6 games, eq + opt (float64, tol 1e-6)
#: ran at 535–551 instances/s with 512-lane chunks, 774–829/s with 1024, 716–768/s with 2048
#: and 562–568/s with 4096; accelerators want wide calls.
MAX_CHUNK = {"cpu": 1024}
MAX_CHUNK_ACCELERATOR = 65536
#: Rounds use two chunk sizes per phase, C and C / SMALL_RATIO: each compiles once, and the
#: few stragglers at the end of a batch do not pay for a full chunk.
SMALL_RATIO = 8


def _vmap_eq(fn, **kw):
    return jax.vmap(functools.partial(fn, **kw))


# The lane programs, unjitted: ``_jit`` compiles them for one device, ``_on_mesh`` for the lane
# axis sharded over every local device (each device runs its own block of lanes: no
# communication inside a solve).
def _eq_init_raw(game, policy, x0, *, method):
    return _vmap_eq(solvers.equilibrium_init, method=method)(game, policy, x0)


def _eq_advance_raw(game, policy, carry, *, method, tol, max_iters, budget, phase):
    kw = dict(method=method, tol=tol, max_iters=max_iters, budget=budget, phase=phase)
    return _vmap_eq(solvers.equilibrium_advance, **kw)(game, policy, carry)


def _eq_pending_raw(carry, *, tol, max_iters, method):
    kw = dict(tol=tol, max_iters=max_iters, method=method)
    return _vmap_eq(solvers.equilibrium_pending, **kw)(carry)


def _eq_finish_raw(game, policy, carry, *, method, tol):
    return _vmap_eq(solvers.equilibrium_finish, method=method, tol=tol)(game, policy, carry)


def _opt_init_raw(game, x0, *, descent_steps, lr):
    return _vmap_eq(solvers.optimum_init, descent_steps=descent_steps, lr=lr)(game, x0)


def _opt_advance_raw(game, carry, *, tol, max_iters, budget, phase):
    kw = dict(tol=tol, max_iters=max_iters, budget=budget, phase=phase)
    return _vmap_eq(solvers.optimum_advance, **kw)(game, carry)


def _opt_pending_raw(carry, *, tol, max_iters):
    return _vmap_eq(solvers.optimum_pending, tol=tol, max_iters=max_iters)(carry)


def _opt_finish_raw(game, carry, x0, *, tol):
    return _vmap_eq(solvers.optimum_finish, tol=tol)(game, carry, x0)


def _take_raw(tree, idx):  # idx past the end reads the last lane (a pad slot, never written)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), tree)


def _put_raw(tree, idx, sub):  # pad slots (idx past the end) are dropped
    return jax.tree_util.tree_map(lambda a, b: a.at[idx].set(b, mode="drop"), tree, sub)


@functools.cache
def _jit(fn, **static):
    donate = (0,) if fn is _put_raw else ()
    return jax.jit(functools.partial(fn, **static), donate_argnums=donate)


@functools.cache
def _on_mesh(fn, mesh, **static):
    spec = jax.sharding.PartitionSpec(_AXIS)
    body = jax.shard_map(
        functools.partial(fn, **static), mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False
    )
    return jax.jit(body, donate_argnums=(0,) if fn is _put_raw else ())


_AXIS = "lanes"


def _program(fn, mesh, **static):
    return _jit(fn, **static) if mesh is None else _on_mesh(fn, mesh, **static)


# Single-device entry points (kept for callers and tests).
greedy_starts = jax.jit(jax.vmap(solvers.greedy_start))
greedy_starts.__doc__ = ":func:`poa_jax.solvers.greedy_start` for every instance, ``(N, J, K)``."


def _take(tree, idx):
    return _jit(_take_raw)(tree, jnp.asarray(idx))


def _put(tree, idx, sub):  # donated: the update is in place instead of a copy of the batch
    return _jit(_put_raw)(tree, jnp.asarray(idx), sub)


#: Local devices the lane axis is sharded over (None: all of the default backend's).
_DEVICES: int | None = None


def use_devices(count: int | None) -> None:
    """Shard solver lanes over the first ``count`` local devices (None: all; 1: no sharding).

    On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX starts)
    makes ``N`` host devices; on a GPU machine every local GPU is one.
    """
    global _DEVICES
    if count is not None and (isinstance(count, bool) or int(count) != count or count < 1):
        raise InputError(f"devices = {count!r}: must be an integer >= 1 or None")
    _DEVICES = None if count is None else int(count)


#: Most CPU devices :func:`use_cpu_devices` makes by default (measured only up to 2 cores).
MAX_CPU_DEVICES = 8


def use_cpu_devices(count: int | None = None) -> int:
    """Splits the host CPU into ``count`` JAX devices, over which the solvers shard their lanes.

    XLA:CPU spreads each small fused loop of these solvers over its thread pool and leaves the
    cores partly idle; one device per core runs a program per core at once instead. On the
    2-core CPU (``poa-jax bench --batch 10000``, float32, 2026-11-27, interleaved) the routing
    pair ran at 706–820 instances/s on one device, 1 333–1 351/s on two and 1 397–1 418/s on
    four; compile time per solver 5–7 s. Results equal one device's up to the last bits
    (iterations and statuses identical; see ``tests/test_sharding.py``).

    JAX fixes its devices at its first computation, so call this right after ``import jax``
    (the ``poa-jax`` command does, before anything else). Later, or where
    ``XLA_FLAGS=--xla_force_host_platform_device_count`` already sets the count, it changes
    nothing.

    Args:
      count: devices; default ``POA_JAX_CPU_DEVICES`` from the environment, else the CPU count
        capped at :data:`MAX_CPU_DEVICES`. ``1`` keeps one device.

    Returns:
      The number of CPU devices JAX will have (or has; 0 where it has no CPU backend).
    """
    if count is None:
        raw = os.environ.get("POA_JAX_CPU_DEVICES")
        if raw is None:
            count = min(os.cpu_count() or 1, MAX_CPU_DEVICES)
        else:
            try:
                count = int(raw)
            except ValueError:
                count = 0
            if count < 1:
                raise InputError(f"POA_JAX_CPU_DEVICES = {raw!r}: must be an integer >= 1")
    elif isinstance(count, bool) or int(count) != count or count < 1:
        raise InputError(f"cpu devices = {count!r}: must be an integer >= 1")
    forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    try:  # a private API: without it, the config update below refuses once JAX has started
        from jax._src import xla_bridge

        started = bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        started = False
    if not (forced or started):
        try:
            jax.config.update("jax_num_cpu_devices", int(count))
            return int(count)
        except (AttributeError, RuntimeError, ValueError):  # another JAX: leave it as it is
            pass
    try:
        return len(jax.devices("cpu"))
    except RuntimeError:  # no CPU backend (JAX_PLATFORMS without cpu)
        return 0


def mesh_for(n: int):
    """The 1-D mesh over local devices that ``n`` instances are sharded on (None: one device)."""
    devs = jax.local_devices()
    d = len(devs) if _DEVICES is None else min(_DEVICES, len(devs))
    if d <= 1 or n < d:
        return None
    return jax.sharding.Mesh(np.array(devs[:d]), (_AXIS,))


@contextlib.contextmanager
def tuning(max_chunk: int | None = None, round_iters: int | None = None):
    """Temporarily sets the lanes per call on this backend (``max_chunk``, default
    :data:`MAX_CHUNK` / :data:`MAX_CHUNK_ACCELERATOR`) and the iterations per compacted round
    (``round_iters``, default :data:`ROUND_ITERS`), for benchmarks that tune them
    (``poa-jax bench --chunk --round-iters``). A lane runs the same iteration whatever the
    rounds and calls (see the notes above ``ROUND_ITERS``); in float32 its last bits can
    depend on the call size, which XLA vectorises differently.
    """
    global MAX_CHUNK, MAX_CHUNK_ACCELERATOR, ROUND_ITERS
    for name, v in (("max_chunk", max_chunk), ("round_iters", round_iters)):
        if v is not None and (int(v) != v or v < 1):
            raise InputError(f"{name} = {v!r}: must be an integer >= 1")
    saved = MAX_CHUNK, MAX_CHUNK_ACCELERATOR, ROUND_ITERS
    try:
        if max_chunk is not None:
            backend = jax.default_backend()
            if backend in MAX_CHUNK:
                MAX_CHUNK = {**MAX_CHUNK, backend: int(max_chunk)}
            else:
                MAX_CHUNK_ACCELERATOR = int(max_chunk)
        if round_iters is not None:
            ROUND_ITERS = int(round_iters)
        yield
    finally:
        MAX_CHUNK, MAX_CHUNK_ACCELERATOR, ROUND_ITERS = saved


def _pad_instances(tree, n: int, d: int):
    """Pads the leading (instance) axis to a multiple of ``d`` by repeating the last instance."""
    extra = -n % d
    if extra == 0:
        return tree
    idx = np.concatenate([np.arange(n), np.full(extra, n - 1)])
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], tree)


def _buckets(n: int) -> list[int]:
    cap = MAX_CHUNK.get(jax.default_backend(), MAX_CHUNK_ACCELERATOR)
    big = min(n, cap)
    return [big, max(big // SMALL_RATIO, 1)]


#: Occupancy of the compacted rounds since the last reset (for benchmarks): ``slots`` lane
#: slots advanced (sub-batch sizes, pad slots included) and ``lanes`` the pending lanes in them;
#: ``1 − lanes / slots`` is the share of slots that refilling them with new instances could use.
DRIVE_STATS = {"calls": 0, "slots": 0, "lanes": 0}


#: Pack the lanes left after the full large calls into small calls (see :func:`_calls`).
PACK_REST = True


def _calls(pending: int, buckets: list[int]) -> list[tuple[int, int]]:
    """``(start, size)`` of the calls that advance ``pending`` lanes: full large calls, then the
    rest in small ones (``ceil(rest / small)`` small calls never hold more slots than one large
    call, and a call's cost is about proportional to its size).

    Measured on the default scenario (4 608 points, 2-core CPU): one large call for any rest
    above the small size left 47% of the advanced slots empty."""
    big, small = buckets
    if not PACK_REST:  # the previous scheme, kept for benchmarks/bench_slow_lanes.py
        size = small if pending <= small else big
        return [(lo, size) for lo in range(0, pending, size)]
    out = [(lo, big) for lo in range(0, pending - pending % big, big)]
    rest = pending % big
    if rest:
        lo = pending - rest
        out += [(lo + k, small) for k in range(0, rest, small)]
    return out


def drive(advance, pending, args, carry, n: int, max_iters: int, mesh=None):
    """Advances ``carry`` (leading axis ``n``) until no lane is pending; see module notes.

    ``pending(carry)`` gives per lane 0 (done) or the solver phase (1: projection only, 2: with
    the Newton step); each phase's lanes are advanced by their own compiled program, so the
    costly Newton step runs only where it can pay. With a ``mesh`` of ``D`` devices the lanes
    are ``D`` contiguous blocks, one per device, and each device compacts its own block: the
    gathered sub-batch holds, per device, local indices of that device's pending lanes (padded
    with an index past the end, whose update is dropped).
    """
    d = 1 if mesh is None else mesh.size
    block = n // d
    if block <= COMPACT_ABOVE:
        carry = advance(*args, carry, budget=max_iters, phase=1)
        # Phase 2 (the Newton endgame) only where a lane reached it: at tolerances above the
        # Newton threshold none does, and its program (the costliest to compile) is never built.
        if np.any(np.asarray(pending(carry)) == 2):
            carry = advance(*args, carry, budget=max_iters, phase=2)
        return carry
    buckets = _buckets(block)
    take, put = _program(_take_raw, mesh), _program(_put_raw, mesh)
    while True:
        todo = np.asarray(pending(carry)).reshape(d, block)
        if not todo.any():
            return carry
        for phase in (1, 2):
            local = [np.flatnonzero(row == phase) for row in todo]
            most = max(x.size for x in local)
            if most == 0:
                continue
            for lo, size in _calls(most, buckets):
                idx = np.full((d, size), block, np.int32)  # past the end: a pad slot
                for r, x in enumerate(local):
                    part = x[lo : lo + size]
                    idx[r, : part.size] = part
                DRIVE_STATS["calls"] += 1
                DRIVE_STATS["slots"] += idx.size
                DRIVE_STATS["lanes"] += int(np.sum(idx < block))
                idx = jnp.asarray(idx.reshape(-1))
                if mesh is not None:
                    idx = jax.device_put(idx, jax.sharding.NamedSharding(mesh, _SPEC))
                sub = advance(*take(args, idx), take(carry, idx), budget=ROUND_ITERS, phase=phase)
                carry = put(carry, idx, sub)


_SPEC = jax.sharding.PartitionSpec(_AXIS)


def _place(tree, mesh):
    """Puts a lane-major pytree on the mesh (blocks of lanes per device), or leaves it."""
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, _SPEC))


#: Which implementation the lane solvers use: "xla" (the pure-JAX loop; the default), "auto"
#: (the fused Pallas kernel where :func:`poa_jax.fused.use_fused` allows — a GPU, float32,
#: τ = 0, projection — else XLA) or "pallas" (the fused kernel, failing loudly where it cannot
#: be built; τ > 0, the other methods and optima with descent steps, which it does not
#: implement, stay on XLA). The default is
#: "xla" because on an H200 (jax 0.11.2, 2026-11-27) the fused kernel, though it compiled in
#: 25–40 s and passed its GPU tests, ran at 0.5–0.65× the XLA loop (its driver recompiled a
#: scatter every round; fixed since, not yet re-measured): see benchmarks/RESULTS.md.
KERNEL = "xla"
_FUSED_BROKEN: list[str] = []  # why the fused kernel failed to build here, once per process
#: The implementation the last lane solve ran on ("xla" or "pallas"), for benchmarks.
LAST_KERNEL = {"equilibrium": None, "optimum": None}


def use_kernel(kind: str) -> None:
    """Selects the lane solvers' implementation: ``auto``, ``xla`` or ``pallas``."""
    global KERNEL
    if kind not in ("auto", "xla", "pallas"):
        raise InputError(f"kernel = {kind!r}: must be one of auto, xla, pallas")
    KERNEL = kind


def _fused(kind: str, game, policy, x0, method, **kw):
    """The fused kernel's result, or None where it does not apply or cannot be built here."""
    if KERNEL == "xla" or (KERNEL == "auto" and _FUSED_BROKEN):
        return None
    from poa_jax import fused

    if KERNEL == "auto" and jax.local_device_count() > 1:
        return None  # the fused driver runs on one device; sharded XLA wins there
    logit = policy is not None and np.any(np.asarray(policy.tau) > 0)
    if method not in ("projection", "auto") or logit:
        # Not the kernel's iteration (logit averaging, extragradient, Frank–Wolfe): the XLA loop,
        # as for optima with descent steps. With "pallas" these raised a ValueError.
        return None
    dt = np.asarray(x0).dtype
    if KERNEL == "auto" and not fused.use_fused(game, policy, dtype=dt, method=method):
        return None
    try:
        if kind == "equilibrium":
            out = fused.fused_equilibria(game, policy, x0, method=method, **kw)
        else:
            out = fused.fused_optima(game, x0, **kw)
        LAST_KERNEL[kind] = "pallas"
        return out
    except fused.FusedUnavailable as e:
        if KERNEL == "pallas":
            raise
        import warnings

        _FUSED_BROKEN.append(str(e))
        warnings.warn(f"fused Pallas kernel unavailable, using the XLA loop: {e}", stacklevel=3)
        return None


def equilibria(game, policy, x0, *, method: str, tol: float, max_iters: int) -> dict:
    """Equilibria for ``x0 (N, S, J, K)``: S starts per instance, each its own lane.

    On a GPU in float32 with ``τ = 0`` the fused Pallas kernel solves them (see
    :data:`KERNEL`). With several local devices (:func:`mesh_for`) the instances are sharded
    over them.
    """
    out = _fused("equilibrium", game, policy, x0, method, tol=tol, max_iters=max_iters)
    if out is not None:
        return out
    LAST_KERNEL["equilibrium"] = "xla"
    n, s = x0.shape[:2]
    mesh = mesh_for(n)
    if mesh is not None:
        game, policy, x0 = _pad_instances((game, policy, x0), n, mesh.size)
    n_pad = x0.shape[0]
    (g, p), x = _place(_lanes(game, policy, x0), mesh)
    static = dict(tol=tol, max_iters=max_iters)
    carry = _program(_eq_init_raw, mesh, method=method)(g, p, x)
    advance = _stepper(_eq_advance_raw, mesh, method=method, **static)
    pending = _program(_eq_pending_raw, mesh, method=method, **static)
    carry = drive(advance, pending, (g, p), carry, n_pad * s, max_iters, mesh)
    out = _program(_eq_finish_raw, mesh, method=method, tol=tol)(g, p, carry)
    return {k: jnp.reshape(v, (n_pad, s) + v.shape[1:])[:n] for k, v in out.items()}


def _stepper(raw, mesh, **static):
    """``advance(*args, carry, budget=, phase=)`` for :func:`drive`."""
    return lambda *a, budget, phase: _program(raw, mesh, budget=budget, phase=phase, **static)(*a)


def _lanes(game, policy, x0):
    """One lane per (instance, start): the game repeated ``S`` times, ``x0`` flattened."""
    n, s = x0.shape[:2]
    tree = (game, policy) if policy is not None else game
    lanes = _take(tree, np.repeat(np.arange(n), s)) if s > 1 else tree
    return lanes, jnp.reshape(x0, (n * s,) + x0.shape[2:])


def optima(game, x0, *, tol: float, max_iters: int, descent_steps: int, lr: float) -> dict:
    """Social optima for ``x0 (N, S, J, K)``: best of S starts per instance.

    Every start is its own lane (compacted independently); the best candidate per instance is
    chosen at the end. With several local devices the instances are sharded over them.
    """
    if descent_steps == 0:
        kw = dict(tol=tol, max_iters=max_iters)
        out = _fused("optimum", game, None, x0, "projection", **kw)
        if out is not None:
            return out
    LAST_KERNEL["optimum"] = "xla"
    n, s = x0.shape[:2]
    mesh = mesh_for(n)
    if mesh is not None:
        game, x0 = _pad_instances((game, x0), n, mesh.size)
    n_pad = x0.shape[0]
    g, x = _place(_lanes(game, None, x0), mesh)
    static = dict(tol=tol, max_iters=max_iters)
    carry = _program(_opt_init_raw, mesh, descent_steps=descent_steps, lr=lr)(g, x)
    advance = _stepper(_opt_advance_raw, mesh, **static)
    pending = _program(_opt_pending_raw, mesh, **static)
    carry = drive(advance, pending, (g,), carry, n_pad * s, max_iters, mesh)
    per_instance = jax.tree_util.tree_map(lambda a: jnp.reshape(a, (n_pad, s) + a.shape[1:]), carry)
    game, x0 = _place((game, jnp.asarray(x0)), mesh)
    out = _program(_opt_finish_raw, mesh, tol=tol)(game, per_instance, x0)
    return {k: v[:n] for k, v in out.items()}
