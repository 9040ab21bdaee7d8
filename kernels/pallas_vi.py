r"""Fused Pallas kernel: scaled projection dynamics on a product of simplices, on chip.

The pure-JAX solver (:func:`poa_jax.kernels.vi.projection_iteration`) is one instance under
``vmap``; every iteration is a few XLA ops that re-read the instance's ``(J, K)`` arrays from
memory. Here one Pallas program takes a block of ``B`` instances and runs the whole loop with
the state in registers, writing the result once.

**Layout.** The batch is the last (lane) axis. Inside the kernel every scalar of an instance is
a *lane vector* of shape ``(B,)``, one entry per instance of the block, and a flow is a nested
tuple ``x[j][k]`` of ``J × K`` lane vectors. Reductions within a row or a column are unrolled
Python sums over lane vectors, so the kernel body is elementwise arithmetic on ``(B,)`` vectors
only — no slicing, gathers, sorts or reductions over a tile axis, which the Triton lowering does
not support well — and ``J``, ``K`` need no padding to powers of two (only ``B`` must be one). On a
GPU each thread then owns one instance (``B = 32·num_warps``).

**Loops, not unrolled code.** The iteration is column-local in the field (a worker's cost
depends on its own column: a congestion game) and row-local in the projection, so the body is
two ``fori_loop``\ s — over the ``K`` columns (field, gap and metric reductions) and over the ``J``
rows (centring, projection, step control) — and the projection's ``K²`` comparisons are a loop
over ``K`` breakpoints. A loop's carry holds the whole grid as lane vectors and *rotates* by one
item per trip: the item being processed is always the head, so no value is picked by a dynamic
index (which the Triton lowering has no rule for, and masks would cost ``J·K`` selects per
access), and after ``n`` trips every item is back in place with its new value. Rows are loaded
and stored by the same kind of loop. The emitted Triton IR is thus the size of one column of
the field plus one row of the projection, not ``J`` and ``K`` copies: the unrolled 5 × 6 body
(~15 000 lines of Triton IR against ~1 300–1 500 now) took over 4 minutes to compile on an
H200; ``tests/test_pallas.py`` bounds the IR size. The price is register moves: a rotation
renames the whole carry each trip (``≈ K·(|col carry|) + J·(|row carry|)`` moves per iteration
unless the GPU compiler unrolls the loops back).

**Two layouts** (``projection_kernel(state=...)``, same iteration, bit-identical results):
``"registers"`` loads every grid once and carries it through the loops as above; on sm_90 the
5 × 6 kernel then needs all 255 registers plus ~1 KB of spills per thread (8 warps per SM), and
the rotations cost ~1 900 register moves per iteration. ``"memory"`` (:func:`_solve_block_memory`)
keeps the grids in the program's state block and loads one column (field loop) or one row (row
loop) per trip, at a run-time row offset: 96–125 registers, no spills, 16–20 warps per SM, at
the price of re-reading rows from L1/L2 every iteration; lowered with 64-bit offsets
(:func:`wide_offsets`) each load and store is one instruction. ``python -m
benchmarks.kernel_resources`` reports these numbers, and the instructions per iteration,
without a GPU.

Inputs are packed into three 2-D arrays with the batch last (rows padded to a power of two):
parameters ``(P, N)`` (the demand ``d (J)``, the mask ``(J·K)``, the per-worker parameters,
each a ``(K, N)`` leaf, then the shared ones, each a ``(R, N)`` leaf seen in the kernel as a
tuple of ``R`` lane vectors), the float state ``(S, N)`` and the int state ``(2, N)`` (steps so
far, iteration budget of this call).

**Iteration** (identical to ``projection_iteration`` without its Newton endgame). For a cost
field ``F(x) = (c, s, ν)`` evaluated one column (worker) ``k`` at a time — cost ``c_·k``, diagonal
metric ``s_·k ≈ ∂c_jk/∂x_jk`` and an optional term ``ν_k`` of the gap denominator ``ν = Σ_k ν_k`` —

    s̃      = min(max(s, S·√ε), S),  S = max_jk s over finite s (1 if ≤ 0)   (1 off the mask)
    c̄_jk   = c_jk − m_j,  m_j = Σ_k x_jk c_jk / d_j  (min_k c_jk if d_j = 0)   (centring)
    y      = P_s̃(x − α c̄ / s̃ + μ Δ_prev)                       (scaled projection, per row)
    cos    = ⟨Δ, Δ_prev⟩_s̃ / (‖Δ‖_s̃ ‖Δ_prev‖_s̃),   Δ = y − x
    α⁺     = clip(α/2 if cos < 0, α·1.2 if cos > 1/2, else α;  [α_min, α_max])
    μ⁺     = β if cos > 0 else 0                                (heavy ball, restarted)
    gap(y) = max(Σ_jk y c − Σ_j d_j min_k c_jk, 0) / max(|ν|, tiny),  ν = Σ_jk y c by default

and the point of smallest gap seen is the solution. A non-finite gap rejects the step and halves
``α``. The projection onto ``{y ≥ 0, Σ_k y_k = d, y = 0 off the mask}`` in the metric ``w`` is
``y_k = max(0, z_k − θ/w_k)`` with ``θ = max_k θ_{A_k}``, ``θ_A = (Σ_A z − d)/Σ_A 1/w`` over the
top sets ``A_k = {i : w_i z_i ≥ w_k z_k}`` of the breakpoints (:mod:`poa_jax.kernels.simplex`):
``K²`` comparisons per row, then a rescale to the exact total.

**Per-lane convergence.** A lane is pending while ``¬(gap ≤ tol)``, its step count is below
``max_iters`` and below its entry count plus the call's budget, and the gap is not NaN; only
pending lanes are updated, and the program's loop ends when no lane of the block is pending.
The state is resumable: a call continues exactly where the last one stopped (``c`` and ``s`` are
recomputed from ``x``), so a driver can run fixed budgets and compact unfinished lanes in between
(the block's loop otherwise runs as long as its slowest lane). A fresh lane (``steps = 0`` and
``best_gap = +inf``) is initialised in the kernel: ``x`` projected (Euclidean), its gap measured.

**Arithmetic** per instance-iteration, beside the field's own: the projection ``J·(5K² + 11K)``,
centring and gap ``≈ 10·J·K``, metric and step control ``≈ 14·J·K``, the pending-lane selects
``5·J·K`` (see :func:`flops_per_iteration`).

Backends: ``interpret=True`` runs the kernel through Pallas' interpreter (any backend; the CPU
tests); otherwise it is compiled by the Pallas Triton backend (GPU). Compilation errors are
raised as :class:`FusedUnavailable` so that callers can fall back on the pure-JAX solver.
"""

from __future__ import annotations

import contextlib
import inspect
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from poa_jax.kernels.simplex import project_rows

__all__ = [
    "Field",
    "FusedState",
    "FusedUnavailable",
    "ProjectionKernel",
    "flops_per_iteration",
    "lane_sum",
    "lane_max",
    "lane_min",
    "project_simplex_lanes",
    "projection_kernel",
    "rotating_loop",
    "start_state",
    "triton_compiler_params",
]

Lane = jax.Array  # (B,) one value per instance of the block
Rows = Sequence[Sequence[Lane]]  # x[j][k], J × K lane vectors


class FusedUnavailable(RuntimeError):
    """The fused kernel cannot be built or compiled here (e.g. a Triton lowering failure)."""


class Field(NamedTuple):
    """What a cost field returns for one column (worker) ``k`` of a flow (all lane vectors)."""

    cost: Sequence[Lane]  # c[j] = c_jk, J lane vectors
    scale: Sequence[Lane]  # s[j] > 0 (floored by the kernel), ≈ ∂c_jk/∂x_jk
    norm: Lane | None = None  # this column's term of the gap denominator; None → Σ_j x c


class FusedState(NamedTuple):
    """Resumable solver state, batch last (``N`` instances); see :func:`start_state`."""

    x: jax.Array  # (J, K, N) last accepted point
    y: jax.Array  # (J, K, N) candidate to evaluate next
    step: jax.Array  # (J, K, N) last accepted step (oscillation test)
    best_x: jax.Array  # (J, K, N) flow of smallest gap seen (the solution)
    alpha: jax.Array  # (N,) step size that produced y
    alpha_next: jax.Array  # (N,) step size once y is accepted
    mom: jax.Array  # (N,) heavy-ball coefficient that produced y
    mom_next: jax.Array  # (N,) heavy-ball coefficient once y is accepted
    best_gap: jax.Array  # (N,) gap at best_x (+inf before the first evaluation)
    steps: jax.Array  # (N,) int32 iterations taken
    fresh: jax.Array  # (N,) int32 1 until the start has been evaluated


_FLOAT_GRIDS = ("x", "y", "step", "best_x")
_FLOAT_LANES = ("alpha", "alpha_next", "mom", "mom_next", "best_gap")
_INT_LANES = ("steps", "fresh")


# --------------------------------------------------------------------------- lane helpers


def lane_sum(v: Sequence[Lane]) -> Lane:
    """Pairwise sum of lane vectors (a shallow tree: fewer dependent adds)."""
    v = list(v)
    while len(v) > 1:
        v = [v[i] + v[i + 1] if i + 1 < len(v) else v[i] for i in range(0, len(v), 2)]
    return v[0]


def _tree(op, v):
    v = list(v)
    while len(v) > 1:
        v = [op(v[i], v[i + 1]) if i + 1 < len(v) else v[i] for i in range(0, len(v), 2)]
    return v[0]


def lane_max(v: Sequence[Lane]) -> Lane:
    """Elementwise maximum over lane vectors."""
    return _tree(jnp.maximum, v)


def lane_min(v: Sequence[Lane]) -> Lane:
    """Elementwise minimum over lane vectors."""
    return _tree(jnp.minimum, v)


def _tiny(dtype):
    return jnp.finfo(dtype).tiny


def rotating_loop(step: Callable, seqs: Sequence[Sequence[Any]], acc: Any = ()):
    """``for i < n: new, acc = step(i, [s[i] for s in seqs], acc)``, item ``i`` replaced by ``new``.

    A ``fori_loop`` (not unrolled) over the ``n`` items of equally long sequences of pytrees of
    lane vectors. The carry holds every sequence and rotates it by one item per trip, so the
    item processed is always the head (no dynamic index into values, which the Triton lowering
    cannot do, and no ``n``-way select); after ``n`` trips each sequence is back in order, with
    ``step``'s new items in place. ``step`` returns one new item per sequence, of the same
    structure (returning the head unchanged makes a sequence read-only).

    Returns:
      ``(seqs, acc)``: the updated sequences (lists) and the final accumulator.
    """
    seqs = tuple(list(s) for s in seqs)
    n = len(seqs[0])

    def body(i, carry):
        ss, a = carry
        new, a = step(i, tuple(s[0] for s in ss), a)
        return tuple(s[1:] + [h] for s, h in zip(ss, new, strict=True)), a

    return jax.lax.fori_loop(0, n, body, (seqs, acc))


def project_simplex_lanes(
    z: Sequence[Lane], total: Lane, w: Sequence[Lane] | None, m: Sequence[Lane]
) -> list[Lane]:
    """One row's projection onto its scaled simplex, ``K`` lane vectors (see module docstring).

    Same operations, in the same order, as the unrolled branch of
    :func:`poa_jax.kernels.simplex.project_simplex`: ``θ* = max_k θ_{A_k}`` from ``K²``
    elementwise comparisons (a loop over the ``K`` breakpoints, ``K`` comparisons each), then a
    rescale to the exact total. The top sets' sums add ``t·z_i`` and ``t/w_i`` for the 0/1
    comparison ``t`` instead of selecting: the same numbers (``1·z = z``, ``0·z = ±0``), and on
    a GPU one fused multiply-add each, 3 instructions per pair instead of 5 (−7% per iteration
    of the whole 5 × 6 kernel, ``benchmarks/kernel_resources.py``). For that ``z`` is first
    clamped at ``−max float``: a ``−∞`` entry (a step that overflowed) would make ``0·z`` NaN;
    clamped, it is projected to 0 as ``project_simplex`` projects it.

    Args:
      z: ``K`` lane vectors, the point to project.
      total: the row total ``d ≥ 0``.
      w: ``K`` positive metric weights, or None (Euclidean).
      m: ``K`` boolean lane vectors, allowed coordinates.
    """
    K = len(z)
    dtype = z[0].dtype
    tiny = _tiny(dtype)
    inv_w = [jnp.where(m[i], 1.0 if w is None else 1.0 / w[i], 0.0).astype(dtype) for i in range(K)]
    lowest = jnp.finfo(dtype).min  # finite: 0·zm is 0 (a NaN z stays NaN, as it should)
    zm = [jnp.where(m[i], jnp.maximum(z[i], lowest), 0.0) for i in range(K)]
    brk = [jnp.where(m[i], z[i] if w is None else w[i] * z[i], -jnp.inf) for i in range(K)]

    def candidate(_, heads, theta):  # θ_{A_k} for the breakpoint k at the head
        bk, mk = heads
        num, den = -total, jnp.zeros_like(total)
        for i in range(K):
            top = (brk[i] >= bk).astype(dtype)  # 0/1: a fused multiply-add per sum on a GPU
            num = num + top * zm[i]
            den = den + top * inv_w[i]
        theta = jnp.where(mk, jnp.maximum(theta, num / jnp.maximum(den, tiny)), theta)
        return heads, theta

    _, theta = rotating_loop(candidate, (brk, m), jnp.full_like(total, -jnp.inf))
    y = [jnp.where(m[i], jnp.maximum(zm[i] - theta * inv_w[i], 0.0), 0.0) for i in range(K)]
    s = lane_sum(y)
    scale = jnp.where(s > 0, total / jnp.where(s > 0, s, 1.0), 1.0)
    # As in project_simplex: where rounding lost the whole total (or an infinite entry made the
    # sum NaN), put it on the largest breakpoints in proportion to 1/w (the limit of the
    # projection); a NaN breakpoint makes the row NaN.
    bmax = brk[0]
    for i in range(1, K):
        bmax = jnp.maximum(bmax, brk[i])
    top = [jnp.where(brk[i] >= bmax, inv_w[i], 0.0) for i in range(K)]
    fallback = jnp.where(jnp.isnan(bmax), jnp.nan, total / jnp.maximum(lane_sum(top), tiny))
    keep = (s > 0) | ~(total > 0)
    return [jnp.where(keep, yi * scale, t * fallback) for yi, t in zip(y, top, strict=True)]


# --------------------------------------------------------------------------- the iteration


def _where(p, a, b):
    return [jnp.where(p, u, v) for u, v in zip(a, b, strict=True)]


def _columns(grid):
    return [list(col) for col in zip(*grid, strict=True)]


class _Options(NamedTuple):
    tol: float
    max_iters: int
    alpha0: float
    alpha_min: float
    alpha_max: float
    grow: float
    momentum: float = 0.0


def _column_field(field_fn, yk, mk, wk, shared, acc, zero, has_norm):
    """The field at column ``k`` of ``y`` and the column's share of the reductions that the gap
    and the metric floor need (``Σ y·c``, the row minima ``min_k c_jk``, ``max s`` over the mask
    and the gap denominator ``ν``). Returns ``(cost, scale, acc)``, ``J`` lane vectors each."""
    dtype = zero.dtype
    yc, rmin, smax, nrm = acc
    f = field_fn(yk, wk, shared)
    has_norm.append(f.norm is not None)
    ck = [jnp.broadcast_to(v, zero.shape).astype(dtype) for v in f.cost]
    sk = [jnp.broadcast_to(v, zero.shape).astype(dtype) for v in f.scale]
    col = lane_sum([jnp.where(b, u * v, 0.0) for u, v, b in zip(yk, ck, mk, strict=True)])
    rmin = [jnp.minimum(r, jnp.where(b, v, jnp.inf)) for r, v, b in zip(rmin, ck, mk, strict=True)]
    # the largest finite s: an overflowed curvature must not make every step zero
    sfin = [jnp.where(b & (v < jnp.inf), v, 0.0) for v, b in zip(sk, mk, strict=True)]
    smax = jnp.maximum(smax, lane_max(sfin))
    nrm = nrm + (col if f.norm is None else jnp.asarray(f.norm, dtype))
    return ck, sk, (yc + col, rmin, smax, nrm)


class _Verdict(NamedTuple):
    """The evaluated candidate ``y``: its gap and whether it is accepted (see :func:`_judge`)."""

    gap: Lane
    top: Lane  # metric ceiling S: the largest finite s (1 if none is positive)
    floor: Lane  # metric floor S·√ε
    ok: Lane  # finite gap: y accepted
    alpha1: Lane  # step size of the next candidate's projection
    mom1: Lane  # heavy-ball coefficient of the next candidate's projection
    improved: Lane  # y becomes the best point


def _judge(c: dict, acc, demand, has_norm) -> _Verdict:
    """Gap of ``y`` from the column reductions; accept it (``x ← y``, ``α ← α_next``) or reject
    it (``α/2``, no step). The start's gap is recorded whatever it is (a NaN start stops the
    lane, reported)."""
    yc, rmin, smax, nrm = acc
    dtype = yc.dtype
    tiny = _tiny(dtype)
    best = lane_sum([jnp.where(d > 0, d * r, 0.0) for d, r in zip(demand, rmin, strict=True)])
    den = nrm if has_norm[0] else jnp.abs(yc)
    g = jnp.maximum(yc - best, 0.0) / jnp.maximum(den, tiny)
    top = jnp.where(smax > 0, smax, 1.0)  # as vi.diagonal_metric
    floor = top * jnp.finfo(dtype).eps ** 0.5
    ok = jnp.isfinite(g)
    alpha1 = jnp.where(ok, c["alpha_next"], c["alpha"] * 0.5)
    mom1 = jnp.where(ok, c["mom_next"], 0.0)
    improved = (c["fresh"] > 0) | (ok & (g < c["best_gap"]))
    return _Verdict(g, top, floor, ok, alpha1, mom1, improved)


def _row_update(v: _Verdict, xj, yj, cj, sj, mj, d, rm, acc, heavy: bool = False):
    """Row ``j``: accept or reject ``y``, centre the cost, project the next candidate from the
    accepted point (where the field is known; plus the heavy-ball term where ``heavy``), and
    add the row's step-control inner products. Returns ``(x1, y1, step1, acc)``."""
    tiny = _tiny(xj[0].dtype)
    sj = [
        jnp.where(b, jnp.minimum(jnp.maximum(u, v.floor), v.top), 1.0)
        for u, b in zip(sj, mj, strict=True)
    ]
    x1 = _where(v.ok, yj, xj)
    step1 = [jnp.where(v.ok, a - b, 0.0) for a, b in zip(yj, xj, strict=True)]
    mean = lane_sum([jnp.where(b, u * w, 0.0) for u, w, b in zip(x1, cj, mj, strict=True)])
    ref = jnp.where(d > 0, mean / jnp.maximum(d, tiny), rm)
    cc = [jnp.where(b, u - ref, 0.0) for u, b in zip(cj, mj, strict=True)]
    z = [u - v.alpha1 * w / s for u, w, s in zip(x1, cc, sj, strict=True)]
    if heavy:
        z = [u + v.mom1 * t for u, t in zip(z, step1, strict=True)]
    y1 = project_simplex_lanes(z, d, sj, mj)
    dx = [a - b for a, b in zip(y1, x1, strict=True)]
    dot = lambda a, b: lane_sum([w * u * t for u, t, w in zip(a, b, sj, strict=True)])  # noqa: E731
    inner, dd, ss = acc
    acc = (inner + dot(dx, step1), dd + dot(dx, dx), ss + dot(step1, step1))
    return x1, _where(v.ok, y1, x1), step1, acc


def _lane_update(opt: _Options, c: dict, v: _Verdict, live, acc) -> dict:
    """The lane scalars after an iteration: the step size from the angle between the last two
    steps (halve on a reversal, grow when aligned, clip), the best gap, the counters."""
    inner, dd, ss = acc
    tiny = _tiny(inner.dtype)
    cos = inner / jnp.maximum(jnp.sqrt(dd) * jnp.sqrt(ss), tiny)  # √(dd·ss) underflows, as vi
    a1 = v.alpha1
    a2 = jnp.where(cos < 0, a1 * 0.5, jnp.where(cos > 0.5, a1 * opt.grow, a1))
    a2 = jnp.where(v.ok, jnp.clip(a2, opt.alpha_min, opt.alpha_max), a1)
    m2 = jnp.where(v.ok & (cos > 0), jnp.asarray(opt.momentum, a1.dtype), jnp.zeros_like(a1))
    keep = lambda new, old: jnp.where(live, new, old)  # noqa: E731
    fresh = c["fresh"] > 0
    return dict(
        alpha=keep(a1, c["alpha"]),
        alpha_next=keep(a2, c["alpha_next"]),
        mom=keep(v.mom1, c["mom"]),
        mom_next=keep(m2, c["mom_next"]),
        best_gap=keep(jnp.where(v.improved, v.gap, c["best_gap"]), c["best_gap"]),
        steps=c["steps"] + (live & ~fresh).astype(c["steps"].dtype),
        fresh=jnp.where(live, 0, c["fresh"]),
    )


def _pending_fn(opt: _Options, st: dict, budget):
    limit = jnp.minimum(st["steps"] + budget, opt.max_iters)
    return lambda err, k: ~(err <= opt.tol) & (k < limit) & ~jnp.isnan(err)


def _solve_block(field_fn, opt: _Options, st: dict, budget, demand, m, workers, shared) -> dict:
    """The loop for one block of lanes; ``st`` holds the state fields as (nested) lane vectors.

    One field evaluation and one projection per iteration: the body evaluates the pending
    candidate ``y``, accepts or rejects it exactly as ``kernels.vi`` does, and projects the next
    candidate from the accepted point (its step size ``α_next`` decided there, as ``kernels.vi``
    decides it when the candidate is made). A rejected candidate (non-finite gap) makes the
    accepted point itself the next candidate, with ``α/2`` and no previous step: the state
    ``kernels.vi`` reaches, one iteration later.

    ``workers`` is a list of ``K`` pytrees (worker ``k``'s parameters), ``shared`` the rest.
    """
    J = len(demand)
    pending = _pending_fn(opt, st, budget)
    mcols = _columns(m)

    def cond(c):
        return jnp.max(pending(c["best_gap"], c["steps"]).astype(jnp.int32)) > 0

    def body(c):
        live = pending(c["best_gap"], c["steps"])
        zero = jnp.zeros_like(c["alpha"])
        has_norm = []

        def column(_, heads, acc):  # 1. the field at y, column by column
            yk, mk, wk, _c, _s = heads
            ck, sk, acc = _column_field(field_fn, yk, mk, wk, shared, acc, zero, has_norm)
            return (yk, mk, wk, ck, sk), acc

        ycols = _columns(c["y"])
        acc0 = (zero, [zero + jnp.inf] * J, zero - jnp.inf, zero)
        (_, _, _, ccols, scols), acc = rotating_loop(
            column, (ycols, mcols, workers, ycols, ycols), acc0
        )
        v = _judge(c, acc, demand, has_norm)

        def row(_, heads, acc):  # 2. row by row: accept, centre, project, step control
            xj, yj, stj, bj, cj, sj, mj, d, rm = heads
            x1, y1, step1, acc = _row_update(v, xj, yj, cj, sj, mj, d, rm, acc, opt.momentum > 0)
            new = (
                _where(live, x1, xj),
                _where(live, y1, yj),
                _where(live, step1, stj),
                _where(live & v.improved, yj, bj),
            )
            return new + (cj, sj, mj, d, rm), acc

        seqs = (c["x"], c["y"], c["step"], c["best_x"], _columns(ccols), _columns(scols), m,
                demand, acc[1])  # fmt: skip
        (x2, y2, step2, best2, *_), acc2 = rotating_loop(row, seqs, (zero,) * 3)
        return dict(x=x2, y=y2, step=step2, best_x=best2, **_lane_update(opt, c, v, live, acc2))

    return jax.lax.while_loop(cond, body, st)


class _Rows(NamedTuple):
    """Row offsets of the memory-resident state (``state="memory"``) in the two blocks."""

    J: int
    K: int
    n_w: int  # rows of per-worker parameters (leaf l of worker k at p row W + l·K + k)
    x: int = 0  # state block: x, y, step, best_x grids (row g + j·K + k), then the lanes
    y: int = 0
    step: int = 0
    best: int = 0
    cost: int = 0  # scratch grids: the field at y (cost, raw metric), then rmin (J rows)
    scale: int = 0
    rmin: int = 0
    mask: int = 0  # parameter block: demand (J rows), mask (J·K), workers, shared
    workers: int = 0


def _rows_of(J: int, K: int, n_w: int) -> _Rows:
    jk = J * K
    n_grid = len(_FLOAT_GRIDS) * jk
    lanes = n_grid + len(_FLOAT_LANES)
    return _Rows(J, K, n_w, 0, jk, 2 * jk, 3 * jk, lanes, lanes + jk, lanes + 2 * jk, J, J + jk)


def _allowed(p_ref, row, full_mask: bool) -> Lane:
    """Mask row ``row`` of the parameter block as booleans; with ``full_mask`` a constant True
    (nothing loaded, and the selects on it fold away when the kernel compiles)."""
    if full_mask:
        return jnp.ones((p_ref.shape[-1],), bool)
    return p_ref[row, :] > 0.5


def _store_where(ref, val, mask) -> None:
    """``ref[...] = where(mask, val, ref[...])`` as a masked store (no load) where the Pallas
    Triton backend offers one; otherwise (an older JAX) by a load and a select."""
    try:
        from jax.experimental.pallas import triton as plgpu

        plgpu.store(ref, val, mask=mask)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the installed jax
        ref[...] = jnp.where(mask, val, ref[...])


def _solve_block_memory(field_fn, opt: _Options, r: _Rows, st, budget, s_ref, p_ref, w_tree,
                        demand, shared, full_mask: bool = False) -> dict:  # fmt: skip
    """:func:`_solve_block` with the grids in memory: the same iteration, the same arithmetic.

    The ``(J, K)`` grids (``x``, ``y``, ``step``, ``best_x``, and the field's cost and metric at
    ``y`` as scratch) stay in the kernel's state block ``s_ref`` and are loaded and stored one
    column (field loop) or one row (row loop) at a time, with the loop index as a run-time row
    offset. The loop carries only the lane scalars (step sizes, best gap, counters) and the
    reductions, so a thread holds one row or column of the instance at a time: with everything
    in registers the 5 × 6 kernel needs ~430 values per thread (255 registers and ~1 KB of
    spills on sm_90). Rows are re-read from the L1/L2 caches every iteration instead.
    """
    J, K = r.J, r.K
    pending = _pending_fn(opt, st, budget)

    def cond(c):
        return jnp.max(pending(c["best_gap"], c["steps"]).astype(jnp.int32)) > 0

    def body(c):
        live = pending(c["best_gap"], c["steps"])
        zero = jnp.zeros_like(c["alpha"])
        has_norm = []

        def column(k, acc):  # the field at y, column k; cost and metric to scratch
            yk = [s_ref[r.y + j * K + k, :] for j in range(J)]
            mk = [_allowed(p_ref, r.mask + j * K + k, full_mask) for j in range(J)]
            wk = jax.tree_util.tree_unflatten(
                w_tree, [p_ref[r.workers + leaf * K + k, :] for leaf in range(r.n_w // K)]
            )
            ck, sk, acc = _column_field(field_fn, yk, mk, wk, shared, acc, zero, has_norm)
            for j in range(J):
                s_ref[r.cost + j * K + k, :] = ck[j]
                s_ref[r.scale + j * K + k, :] = sk[j]
            return acc

        acc0 = (zero, [zero + jnp.inf] * J, zero - jnp.inf, zero)
        acc = jax.lax.fori_loop(0, K, column, acc0)
        for j in range(J):
            s_ref[r.rmin + j, :] = acc[1][j]
        v = _judge(c, acc, demand, has_norm)

        def row(j, acc):  # accept, centre, project the next candidate: row j
            load = lambda base: [s_ref[base + j * K + k, :] for k in range(K)]  # noqa: E731
            xj, yj, stj = load(r.x), load(r.y), load(r.step)
            mj = [_allowed(p_ref, r.mask + j * K + k, full_mask) for k in range(K)]
            d, rm = p_ref[j, :], s_ref[r.rmin + j, :]
            x1, y1, step1, acc = _row_update(v, xj, yj, load(r.cost), load(r.scale), mj, d, rm,
                                             acc, opt.momentum > 0)  # fmt: skip
            for k in range(K):
                i = j * K + k
                s_ref[r.x + i, :] = jnp.where(live, x1[k], xj[k])
                s_ref[r.y + i, :] = jnp.where(live, y1[k], yj[k])
                s_ref[r.step + i, :] = jnp.where(live, step1[k], stj[k])
                _store_where(s_ref.at[r.best + i], yj[k], live & v.improved)
            return acc

        acc2 = jax.lax.fori_loop(0, J, row, (zero,) * 3)
        return _lane_update(opt, c, v, live, acc2)

    return jax.lax.while_loop(cond, body, st)


# --------------------------------------------------------------------------- the pallas_call


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def triton_compiler_params(num_warps: int | None, num_stages: int | None):
    """``CompilerParams`` of the Pallas Triton backend, or None where this JAX lacks them."""
    try:
        from jax.experimental.pallas import triton as plgpu
    except ImportError:  # pragma: no cover - depends on the installed jax
        return None
    cls = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams", None)
    if cls is None:  # pragma: no cover
        return None
    kw = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v}
    return cls(**kw)


def _load_rows(ref, start: int, n: int) -> list[Lane]:
    """Rows ``start … start + n − 1`` of a ``(rows, B)`` block as lane vectors, by a loop."""
    if n == 0:
        return []
    seed = ref[start, :]
    if n == 1:
        return [seed]
    (rows,), _ = rotating_loop(lambda i, h, a: ((ref[start + i, :],), a), ([seed] * n,))
    return rows


def _store_rows(ref, start: int, rows: Sequence[Lane]) -> None:
    """Writes lane vectors to rows ``start …`` of a ``(rows, B)`` block, by a loop."""

    def put(i, heads, acc):
        ref[start + i, :] = heads[0]
        return heads, acc

    if len(rows) == 1:
        ref[start, :] = rows[0]
    elif rows:
        rotating_loop(put, (list(rows),))


def _nest(flat, rows, cols):
    return [list(flat[j * cols : (j + 1) * cols]) for j in range(rows)]


def _unflatten_rows(treedef, sizes, rows):
    leaves, i = [], 0
    for r in sizes:
        leaves.append(tuple(rows[i : i + r]) if r else rows[i])
        i += max(r, 1)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def start_state(x0: jax.Array, demand: jax.Array, mask: jax.Array, alpha0: float = 1.0):
    """A fresh state: ``x0 (J, K, N)`` projected onto the simplices (Euclidean), as
    :func:`kernels.vi.projection_iteration`'s ``init``; the kernel evaluates it first."""
    n = x0.shape[-1]
    proj = jax.vmap(project_rows, in_axes=(-1, -1, None, -1), out_axes=-1)
    x = proj(x0, demand.astype(x0.dtype), None, mask.astype(bool))
    z = jnp.zeros_like(x)
    a = jnp.full((n,), alpha0, x.dtype)
    m = jnp.zeros((n,), x.dtype)
    return FusedState(
        x=x, y=x, step=z, best_x=x, alpha=a, alpha_next=a, mom=m, mom_next=m,
        best_gap=jnp.full((n,), jnp.inf, x.dtype), steps=jnp.zeros((n,), jnp.int32),
        fresh=jnp.ones((n,), jnp.int32),
    )  # fmt: skip


class ProjectionKernel(NamedTuple):
    """A built fused solver; ``advance(workers, shared, demand, mask, state, budget)`` → state."""

    advance: Callable[..., FusedState]
    block: int
    options: _Options


def projection_kernel(
    field_fn: Callable[[Sequence[Lane], Any, Any], Field],
    *,
    tol: float,
    max_iters: int,
    block: int = 128,
    interpret: bool = False,
    num_warps: int | None = None,
    num_stages: int | None = None,
    alpha0: float = 1.0,
    alpha_min: float = 1e-3,
    alpha_max: float = 1.0,
    grow: float = 1.2,
    momentum: float = 0.0,
    state: str = "registers",
    full_mask: bool = False,
) -> ProjectionKernel:
    """Builds the fused projection-dynamics solver for a column-local cost field.

    Args:
      field_fn: ``(x_k, worker_k, shared) → Field`` for one column ``k``: ``x_k`` the ``J``
        lane vectors ``x[j][k]``, ``worker_k`` the per-worker pytree at worker ``k`` (every leaf
        a lane vector), ``shared`` the shared pytree with every ``(R, N)`` leaf given as a tuple
        of ``R`` lane vectors (``(N,)`` leaves as one lane vector). Elementwise ``jnp`` only (it
        is traced into the kernel, once: it runs inside a loop over the columns).
      tol: relative-gap tolerance.
      max_iters: iteration bound per lane (over all calls).
      block: lanes per program ``B``, a power of two (one instance per GPU thread at
        ``B = 32·num_warps``).
      interpret: run in Pallas interpret mode (CPU tests).
      num_warps, num_stages: Triton compiler parameters (GPU only).
      alpha0, alpha_min, alpha_max, grow, momentum: step control and heavy ball, as
        :func:`kernels.vi.projection_iteration`.
      state: where a program keeps the instances' ``(J, K)`` grids during the loop:
        ``"registers"`` (loaded once, carried by the loops) or ``"memory"`` (its state block,
        one row or column loaded per loop trip; see :func:`_solve_block_memory`). Same
        iteration and arithmetic either way.
      full_mask: every entry of every lane is allowed (the caller has checked ``mask``): the
        kernel reads no mask and its selects on it fold away (~7% of an iteration's
        instructions for 5 × 6). A ``mask`` with a False entry gives wrong results here.

    Returns:
      A :class:`ProjectionKernel` whose ``advance(workers, shared, demand (J, N), mask (J, K, N),
      state, budget)`` runs at most ``budget`` (a Python int, traced: no recompile) more
      iterations on every pending lane; ``workers`` is a pytree of ``(K, N)`` leaves. ``N`` is
      padded to a multiple of ``block`` inside.
    """
    if block < 1 or block & (block - 1):
        raise ValueError(f"block = {block}: must be a power of two")
    if state not in ("registers", "memory"):
        raise ValueError(f"state = {state!r}: must be 'registers' or 'memory'")
    in_memory = state == "memory"  # (``advance`` below has an argument named ``state``)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum = {momentum!r}: must be in [0, 1)")
    opt = _Options(float(tol), int(max_iters), alpha0, alpha_min, alpha_max, grow,
                   float(momentum))  # fmt: skip
    params_kw = {}
    if not interpret:
        cp = triton_compiler_params(num_warps, num_stages)
        if cp is not None:
            params_kw["compiler_params"] = cp

    @jax.jit
    def advance(workers, shared, demand, mask, state: FusedState, budget) -> FusedState:
        J, K, n = state.x.shape
        jk = J * K
        dtype = state.x.dtype
        w_leaves, w_tree = jax.tree_util.tree_flatten(workers)
        leaves, treedef = jax.tree_util.tree_flatten(shared)
        sizes = [a.shape[0] if a.ndim == 2 else 0 for a in leaves]
        rows = [jnp.asarray(a, dtype).reshape(-1, n) for a in w_leaves + leaves]
        p_rows = [demand.astype(dtype), mask.reshape(jk, n).astype(dtype), *rows]
        packed_p = jnp.concatenate(p_rows, axis=0)
        packed_s = jnp.concatenate(
            [getattr(state, f).reshape(jk, n) for f in _FLOAT_GRIDS]
            + [getattr(state, f)[None] for f in _FLOAT_LANES],
            axis=0,
        )
        budget_row = jnp.broadcast_to(jnp.asarray(budget, jnp.int32), (n,))
        ints = jnp.stack([state.steps, state.fresh, budget_row])
        n_pad = -(-n // block) * block
        p_pad, s_pad, i_pad = (_pow2(a.shape[0]) for a in (packed_p, packed_s, ints))
        if in_memory:  # scratch rows: the field's cost and metric, the row minima
            s_pad = _pow2(packed_s.shape[0] + 2 * jk + J)

        def pad(a, r):
            # Extra rows are never read; extra lanes repeat the last lane (a valid instance).
            a = jnp.pad(a, ((0, r - a.shape[0]), (0, 0)))
            return jnp.pad(a, ((0, 0), (0, n_pad - n)), mode="edge") if n_pad > n else a

        packed_p, packed_s, ints = pad(packed_p, p_pad), pad(packed_s, s_pad), pad(ints, i_pad)
        n_w = len(w_leaves) * K
        n_user = sum(max(z, 1) for z in sizes)
        n_grid = len(_FLOAT_GRIDS) * jk

        def kernel(p_ref, s_ref, i_ref, so_ref, io_ref):
            p = _load_rows(p_ref, 0, J + jk + n_w + n_user)
            demand_l = p[:J]
            if full_mask:
                m = _nest([jnp.ones_like(v, bool) for v in p[J : J + jk]], J, K)
            else:
                m = _nest([v > 0.5 for v in p[J : J + jk]], J, K)
            w_rows = p[J + jk : J + jk + n_w]
            wk = [
                jax.tree_util.tree_unflatten(w_tree, w_rows[k::K]) for k in range(K)
            ]  # leaf l of worker k is row l·K + k
            prm = _unflatten_rows(treedef, sizes, p[J + jk + n_w :])
            sv = _load_rows(s_ref, 0, n_grid + len(_FLOAT_LANES))
            st = {f: _nest(sv[i * jk : (i + 1) * jk], J, K) for i, f in enumerate(_FLOAT_GRIDS)}
            st.update({f: sv[n_grid + i] for i, f in enumerate(_FLOAT_LANES)})
            st.update({f: i_ref[i, :] for i, f in enumerate(_INT_LANES)})
            out = _solve_block(field_fn, opt, st, i_ref[2, :], demand_l, m, wk, prm)
            flat = [v for f in _FLOAT_GRIDS for row in out[f] for v in row]
            _store_rows(so_ref, 0, flat + [out[f] for f in _FLOAT_LANES])
            for i, f in enumerate(_INT_LANES):
                io_ref[i, :] = out[f]

        n_lanes = n_grid + len(_FLOAT_LANES)
        rows = _rows_of(J, K, n_w)

        def kernel_memory(p_ref, s_ref, i_ref, so_ref, io_ref):
            def copy(i, carry):
                so_ref[i, :] = s_ref[i, :]
                return carry

            jax.lax.fori_loop(0, n_lanes, copy, 0)
            demand_l = [p_ref[j, :] for j in range(J)]
            prm = _unflatten_rows(treedef, sizes, _load_rows(p_ref, J + jk + n_w, n_user))
            st = {f: so_ref[n_grid + i, :] for i, f in enumerate(_FLOAT_LANES)}
            st.update({f: i_ref[i, :] for i, f in enumerate(_INT_LANES)})
            out = _solve_block_memory(field_fn, opt, rows, st, i_ref[2, :], so_ref, p_ref,
                                      w_tree, demand_l, prm, full_mask)  # fmt: skip
            for i, f in enumerate(_FLOAT_LANES):
                so_ref[n_grid + i, :] = out[f]
            for i, f in enumerate(_INT_LANES):
                io_ref[i, :] = out[f]

        spec = lambda r: pl.BlockSpec((r, block), lambda i: (0, i))
        so, io = pl.pallas_call(
            kernel_memory if in_memory else kernel,
            out_shape=(
                jax.ShapeDtypeStruct((s_pad, n_pad), dtype),
                jax.ShapeDtypeStruct((_pow2(len(_INT_LANES)), n_pad), jnp.int32),
            ),
            grid=(n_pad // block,),
            in_specs=[spec(p_pad), spec(s_pad), spec(i_pad)],
            out_specs=(spec(s_pad), spec(_pow2(len(_INT_LANES)))),
            interpret=interpret,
            name="fused_projection",
            **params_kw,
        )(packed_p, packed_s, ints)
        so, io = so[:, :n], io[:, :n]
        out = {f: so[i * jk : (i + 1) * jk].reshape(J, K, n) for i, f in enumerate(_FLOAT_GRIDS)}
        out.update({f: so[n_grid + i] for i, f in enumerate(_FLOAT_LANES)})
        out.update({f: io[i] for i, f in enumerate(_INT_LANES)})
        return FusedState(**out)

    return ProjectionKernel(_WideOffsets(advance), block, opt)


# --------------------------------------------------------------------------- 64-bit offsets

_WIDE_FROM = "64 if full_size > 2**32 else 32"
_wide: list = []  # [the 64-bit version of the lowering's offset function, or None]


def _wide_offsets_fn():
    """The Triton lowering's ``_compute_offsets_from_indices`` with 64-bit offsets always, made
    from this JAX's own source; None where the source is not as expected (then nothing is
    patched and the kernel keeps 32-bit offsets: same results, more address arithmetic)."""
    if not _wide:
        fn = None
        try:
            from jax._src.pallas.triton import lowering

            src = inspect.getsource(lowering._compute_offsets_from_indices)
            if src.count(_WIDE_FROM) == 1 and src.lstrip().startswith("def "):
                ns: dict = {}
                code = compile(textwrap.dedent(src.replace(_WIDE_FROM, "64")), lowering.__file__,
                               "exec")  # fmt: skip
                exec(code, vars(lowering), ns)  # noqa: S102 - this JAX's own function, one edit
                fn = ns["_compute_offsets_from_indices"]
        except Exception:  # pragma: no cover - depends on the installed jax
            fn = None
        _wide.append(fn)
    return _wide[0]


@contextlib.contextmanager
def wide_offsets():
    """Lowers Pallas Triton kernels with 64-bit element offsets while active.

    Pallas' Triton lowering computes a ref's element offsets in 32 bits unless the array
    exceeds 4 GiB. A 32-bit offset is sign-extended to 64 bits before it is added to the
    pointer, so LLVM cannot fold the constant part of ``row·stride + lane`` into the
    instruction, and every load and store of the memory layout (whose rows are picked by a
    loop index plus a constant) recomputes its address: 3 SASS instructions each, ~1 100 per
    iteration of the 5 × 6 equilibrium. With 64-bit offsets the constant becomes the
    instruction's immediate: 5 347 → 4 342 instructions per iteration on sm_90
    (``benchmarks/kernel_resources.py``). Offsets are exact either way.

    Swaps the lowering's function for the duration (not thread-safe against other Pallas
    lowerings in the same process); a no-op where this JAX's lowering is not as expected, and
    for interpret mode, which does not use the Triton lowering.
    """
    fn = _wide_offsets_fn()
    if fn is None:
        yield False
        return
    from jax._src.pallas.triton import lowering

    old = lowering._compute_offsets_from_indices
    lowering._compute_offsets_from_indices = fn
    try:
        yield True
    finally:
        lowering._compute_offsets_from_indices = old


class _WideOffsets:
    """A jitted function that is called, traced and lowered under :func:`wide_offsets`."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        with wide_offsets():
            return self._fn(*args, **kwargs)

    def trace(self, *args, **kwargs):
        return _WideOffsets(self._fn.trace(*args, **kwargs))

    def lower(self, *args, **kwargs):
        with wide_offsets():
            return self._fn.lower(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def flops_per_iteration(num_rows: int, num_cols: int, field_flops: int,
                        momentum: bool = False) -> int:  # fmt: skip
    """Arithmetic per instance-iteration of the fused loop (one FLOP per elementwise op).

    Counted from the kernel body: every add, multiply, divide, compare, select, min/max and
    square root on a lane vector is one operation; ``field_flops`` is the caller's field (cost,
    metric, gap denominator) at one point.

    * projection, per row: ``3K`` setup (1/w, masks, w·z), ``K²`` pairs × (compare + 2
      multiply-adds), ``K`` × (max, divide, max, select), ``K`` × (multiply, sub, max, select),
      ``K`` sum and rescale ``K`` → ``J·(5K² + 11K)``;
    * centring ``J·(4K + 3)`` + the step ``z = x − α c/s`` ``3JK``;
    * metric clip (largest finite ``s``, floor, ceiling) ``7JK``; gap ``4JK + 4J``;
      step control ``9JK + 10``;
    * pending-lane selects for ``x, c, s, step, best_x`` and the loop test ``≈ 8JK + 10``;
    * with ``momentum``, the heavy-ball term ``+ μ·Δ_prev`` ``2JK`` and its coefficient ``4``.
    """
    J, K = num_rows, num_cols
    proj = J * (5 * K * K + 11 * K)
    centre = J * (4 * K + 3) + 3 * J * K
    metric = 7 * J * K
    gap = 4 * J * K + 4 * J
    control = 9 * J * K + 10
    select = 8 * J * K + 10
    heavy = 2 * J * K + 4 if momentum else 0
    return int(proj + centre + metric + gap + control + select + heavy + field_flops)
