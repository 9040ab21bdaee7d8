r"""Fused Pallas kernel: scaled projection dynamics on a product of simplices, on chip.

The pure-JAX solver (:func:`poa_jax.kernels.vi.projection_iteration`) is one instance under
``vmap``; every iteration is a few XLA ops that re-read the instance's ``(J, K)`` arrays from
memory. Here one Pallas program takes a block of ``B`` instances and runs the whole loop with
the state in registers, writing the result once.

**Layout.** The batch is the last (lane) axis. Inside the kernel every scalar of an instance is
a *lane vector* of shape ``(B,)``, one entry per instance of the block, and a flow is a nested
tuple ``x[j][k]`` of ``J × K`` lane vectors. Row and column reductions are unrolled Python sums
over lane vectors, so the kernel body is elementwise arithmetic on ``(B,)`` vectors only — no
slicing, gathers, sorts or reductions over a tile axis, which the Triton lowering does not
support well — and ``J``, ``K`` need no padding to powers of two (only ``B`` must be one). On a
GPU each thread then owns one instance (``B = 32·num_warps``).

Inputs are packed into three 2-D arrays with the batch last (rows padded to a power of two):
parameters ``(P, N)`` (the demand ``d (J)``, the mask ``(J·K)``, then the caller's parameters,
each a ``(R, N)`` leaf seen in the kernel as a tuple of ``R`` lane vectors), the float state
``(S, N)`` and the int state ``(2, N)`` (steps so far, iteration budget of this call).

**Iteration** (identical to ``projection_iteration`` without its Newton endgame). For a cost
field ``F(x) = (c, s, ν)`` — cost ``c``, diagonal metric ``s ≈ ∂c_jk/∂x_jk`` and an optional gap
denominator ``ν`` —

    s̃      = max(s, max(1, max_jk s)·√ε)                       (metric floor; 1 off the mask)
    c̄_jk   = c_jk − m_j,  m_j = Σ_k x_jk c_jk / d_j  (min_k c_jk if d_j = 0)   (centring)
    y      = P_s̃(x − α c̄ / s̃)                                  (scaled projection, per row)
    cos    = ⟨Δ, Δ_prev⟩_s̃ / (‖Δ‖_s̃ ‖Δ_prev‖_s̃),   Δ = y − x
    α⁺     = clip(α/2 if cos < 0, α·1.2 if cos > 1/2, else α;  [α_min, α_max])
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

**Arithmetic** per instance-iteration, beside the field's own: the projection ``J·(5K² + 6K)``,
centring and gap ``≈ 10·J·K``, metric and step control ``≈ 14·J·K``, the pending-lane selects
``5·J·K`` (see :func:`flops_per_iteration`).

Backends: ``interpret=True`` runs the kernel through Pallas' interpreter (any backend; the CPU
tests); otherwise it is compiled by the Pallas Triton backend (GPU). Compilation errors are
raised as :class:`FusedUnavailable` so that callers can fall back on the pure-JAX solver.
"""

from __future__ import annotations

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
    "start_state",
    "triton_compiler_params",
]

Lane = jax.Array  # (B,) one value per instance of the block
Rows = Sequence[Sequence[Lane]]  # x[j][k], J × K lane vectors


class FusedUnavailable(RuntimeError):
    """The fused kernel cannot be built or compiled here (e.g. a Triton lowering failure)."""


class Field(NamedTuple):
    """What a cost field returns at a flow ``x[j][k]`` (all lane vectors)."""

    cost: Rows  # c[j][k]
    scale: Rows  # s[j][k] > 0 (floored by the kernel), ≈ ∂c_jk/∂x_jk
    norm: Lane | None = None  # gap denominator; None → Σ_jk x c over the mask


class FusedState(NamedTuple):
    """Resumable solver state, batch last (``N`` instances); see :func:`start_state`."""

    x: jax.Array  # (J, K, N) last accepted point
    y: jax.Array  # (J, K, N) candidate to evaluate next
    step: jax.Array  # (J, K, N) last accepted step (oscillation test)
    best_x: jax.Array  # (J, K, N) flow of smallest gap seen (the solution)
    alpha: jax.Array  # (N,) step size that produced y
    alpha_next: jax.Array  # (N,) step size once y is accepted
    best_gap: jax.Array  # (N,) gap at best_x (+inf before the first evaluation)
    steps: jax.Array  # (N,) int32 iterations taken
    fresh: jax.Array  # (N,) int32 1 until the start has been evaluated


_FLOAT_GRIDS = ("x", "y", "step", "best_x")
_FLOAT_LANES = ("alpha", "alpha_next", "best_gap")
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


def project_simplex_lanes(
    z: Sequence[Lane], total: Lane, w: Sequence[Lane] | None, m: Sequence[Lane]
) -> list[Lane]:
    """One row's projection onto its scaled simplex, ``K`` lane vectors (see module docstring).

    Same operations, in the same order, as the unrolled branch of
    :func:`poa_jax.kernels.simplex.project_simplex`: ``θ* = max_k θ_{A_k}`` from ``K²``
    elementwise comparisons, then a rescale to the exact total.

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
    zm = [jnp.where(m[i], z[i], 0.0) for i in range(K)]
    brk = [jnp.where(m[i], z[i] if w is None else w[i] * z[i], -jnp.inf) for i in range(K)]
    theta = jnp.full_like(total, -jnp.inf)
    for k in range(K):
        num, den = -total, jnp.zeros_like(total)
        for i in range(K):
            top = brk[i] >= brk[k]
            num = num + jnp.where(top, zm[i], 0.0)
            den = den + jnp.where(top, inv_w[i], 0.0)
        theta = jnp.where(m[k], jnp.maximum(theta, num / jnp.maximum(den, tiny)), theta)
    y = [jnp.where(m[i], jnp.maximum(zm[i] - theta * inv_w[i], 0.0), 0.0) for i in range(K)]
    s = lane_sum(y)
    scale = jnp.where(s > 0, total / jnp.where(s > 0, s, 1.0), 1.0)
    return [yi * scale for yi in y]


# --------------------------------------------------------------------------- the iteration


def _map2(f, *rows):
    return [[f(*vals) for vals in zip(*cols, strict=True)] for cols in zip(*rows, strict=True)]


def _metric(s, m):
    dtype = s[0][0].dtype
    eps = jnp.finfo(dtype).eps
    top = lane_max(
        [
            jnp.where(mk, sk, 0.0)
            for sj, mj in zip(s, m, strict=True)
            for sk, mk in zip(sj, mj, strict=True)
        ]
    )
    floor = jnp.maximum(top, 1.0) * eps**0.5
    return _map2(lambda sk, mk: jnp.where(mk, jnp.maximum(sk, floor), 1.0), s, m)


def _row_min(cj, mj):
    return lane_min([jnp.where(mk, ck, jnp.inf) for ck, mk in zip(cj, mj, strict=True)])


def _gap(x, c, norm, demand, m):
    dtype = demand[0].dtype
    total = lane_sum(
        [
            jnp.where(mk, xk * ck, 0.0)
            for xj, cj, mj in zip(x, c, m, strict=True)
            for xk, ck, mk in zip(xj, cj, mj, strict=True)
        ]
    )
    best = lane_sum(
        [
            jnp.where(d > 0, d * _row_min(cj, mj), 0.0)
            for d, cj, mj in zip(demand, c, m, strict=True)
        ]
    )
    den = jnp.abs(total) if norm is None else norm
    return jnp.maximum(total - best, 0.0) / jnp.maximum(den, _tiny(dtype))


def _centred(c, x, demand, m):
    tiny = _tiny(demand[0].dtype)
    out = []
    for cj, xj, mj, d in zip(c, x, m, demand, strict=True):
        mean = lane_sum(
            [jnp.where(mk, xk * ck, 0.0) for ck, xk, mk in zip(cj, xj, mj, strict=True)]
        )
        mean = mean / jnp.maximum(d, tiny)
        ref = jnp.where(d > 0, mean, _row_min(cj, mj))
        out.append([jnp.where(mk, ck - ref, 0.0) for ck, mk in zip(cj, mj, strict=True)])
    return out


def _dot(a, b, s):
    return lane_sum(
        [
            sk * ak * bk
            for aj, bj, sj in zip(a, b, s, strict=True)
            for ak, bk, sk in zip(aj, bj, sj, strict=True)
        ]
    )


class _Options(NamedTuple):
    tol: float
    max_iters: int
    alpha0: float
    alpha_min: float
    alpha_max: float
    grow: float


def _solve_block(field_fn, opt: _Options, st: dict, budget, demand, m, params) -> dict:
    """The loop for one block of lanes; ``st`` holds the state fields as (nested) lane vectors.

    One field evaluation and one projection per iteration: the body evaluates the pending
    candidate ``y``, accepts or rejects it exactly as ``kernels.vi`` does, and projects the next
    candidate from the accepted point (its step size ``α_next`` decided there, as ``kernels.vi``
    decides it when the candidate is made). A rejected candidate (non-finite gap) makes the
    accepted point itself the next candidate, with ``α/2`` and no previous step: the state
    ``kernels.vi`` reaches, one iteration later.
    """
    where_rows = lambda p, a, b: _map2(lambda u, v: jnp.where(p, u, v), a, b)
    limit = jnp.minimum(st["steps"] + budget, opt.max_iters)

    def pending(err, k):
        return ~(err <= opt.tol) & (k < limit) & ~jnp.isnan(err)

    def cond(c):
        return jnp.max(pending(c["best_gap"], c["steps"]).astype(jnp.int32)) > 0

    def body(c):
        x, y, step, alpha = c["x"], c["y"], c["step"], c["alpha"]
        live = pending(c["best_gap"], c["steps"])
        fresh = c["fresh"] > 0
        f = field_fn(y, params)
        cost, s = f.cost, _metric(f.scale, m)
        g = _gap(y, cost, f.norm, demand, m)
        ok = jnp.isfinite(g)
        # Accept y (x ← y, α ← α_next, previous step ← y − x) or reject it (α/2, no step).
        x1 = where_rows(ok, y, x)
        alpha1 = jnp.where(ok, c["alpha_next"], alpha * 0.5)
        step1 = _map2(lambda a, b: jnp.where(ok, a - b, 0.0), y, x)
        # The start's gap is recorded whatever it is (a NaN start stops the lane, reported).
        improved = fresh | (ok & (g < c["best_gap"]))
        # The next candidate, from x1 (where the field is known when y was accepted).
        cc = _centred(cost, x1, demand, m)
        z = _map2(lambda xv, cv, sv: xv - alpha1 * cv / sv, x1, cc, s)
        y1 = [
            project_simplex_lanes(zj, d, sj, mj)
            for zj, d, sj, mj in zip(z, demand, s, m, strict=True)
        ]
        dx = _map2(lambda a, b: a - b, y1, x1)
        inner = _dot(dx, step1, s)
        nrm = jnp.sqrt(_dot(dx, dx, s) * _dot(step1, step1, s))
        cos = inner / jnp.maximum(nrm, _tiny(nrm.dtype))
        a2 = jnp.where(cos < 0, alpha1 * 0.5, jnp.where(cos > 0.5, alpha1 * opt.grow, alpha1))
        a2 = jnp.clip(a2, opt.alpha_min, opt.alpha_max)
        y1 = where_rows(ok, y1, x1)
        a2 = jnp.where(ok, a2, alpha1)
        keep = lambda new, old: jnp.where(live, new, old)
        rows = lambda new, old: _map2(keep, new, old)
        return dict(
            x=rows(x1, x),
            y=rows(y1, y),
            step=rows(step1, step),
            best_x=rows(where_rows(improved, y, c["best_x"]), c["best_x"]),
            alpha=keep(alpha1, alpha),
            alpha_next=keep(a2, c["alpha_next"]),
            best_gap=keep(jnp.where(improved, g, c["best_gap"]), c["best_gap"]),
            steps=c["steps"] + (live & ~fresh).astype(c["steps"].dtype),
            fresh=jnp.where(live, 0, c["fresh"]),
        )

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
    return FusedState(
        x=x, y=x, step=z, best_x=x, alpha=a, alpha_next=a,
        best_gap=jnp.full((n,), jnp.inf, x.dtype), steps=jnp.zeros((n,), jnp.int32),
        fresh=jnp.ones((n,), jnp.int32),
    )  # fmt: skip


class ProjectionKernel(NamedTuple):
    """A built fused solver; ``advance(params, demand, mask, state, budget)`` → state."""

    advance: Callable[..., FusedState]
    block: int
    options: _Options


def projection_kernel(
    field_fn: Callable[[Rows, Any], Field],
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
) -> ProjectionKernel:
    """Builds the fused projection-dynamics solver for a cost field.

    Args:
      field_fn: ``(x, params) → Field``; ``x[j][k]`` lane vectors, ``params`` the caller's
        pytree with every ``(R, N)`` leaf given as a tuple of ``R`` lane vectors (``(N,)``
        leaves as one lane vector). Elementwise ``jnp`` only (it is traced into the kernel).
      tol: relative-gap tolerance.
      max_iters: iteration bound per lane (over all calls).
      block: lanes per program ``B``, a power of two (one instance per GPU thread at
        ``B = 32·num_warps``).
      interpret: run in Pallas interpret mode (CPU tests).
      num_warps, num_stages: Triton compiler parameters (GPU only).
      alpha0, alpha_min, alpha_max, grow: step control, as :func:`kernels.vi.projection_iteration`.

    Returns:
      A :class:`ProjectionKernel` whose ``advance(params, demand (J, N), mask (J, K, N), state,
      budget)`` runs at most ``budget`` (a Python int, traced: no recompile) more iterations on
      every pending lane. ``N`` is padded to a multiple of ``block`` inside.
    """
    if block < 1 or block & (block - 1):
        raise ValueError(f"block = {block}: must be a power of two")
    opt = _Options(float(tol), int(max_iters), alpha0, alpha_min, alpha_max, grow)
    params_kw = {}
    if not interpret:
        cp = triton_compiler_params(num_warps, num_stages)
        if cp is not None:
            params_kw["compiler_params"] = cp

    @jax.jit
    def advance(params, demand, mask, state: FusedState, budget) -> FusedState:
        J, K, n = state.x.shape
        jk = J * K
        dtype = state.x.dtype
        leaves, treedef = jax.tree_util.tree_flatten(params)
        sizes = [a.shape[0] if a.ndim == 2 else 0 for a in leaves]
        rows = [jnp.asarray(a, dtype).reshape(-1, n) for a in leaves]
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

        def pad(a, r):
            # Extra rows are never read; extra lanes repeat lane 0 (a valid instance).
            a = jnp.pad(a, ((0, r - a.shape[0]), (0, 0)))
            return jnp.pad(a, ((0, 0), (0, n_pad - n)), mode="edge") if n_pad > n else a

        packed_p, packed_s, ints = pad(packed_p, p_pad), pad(packed_s, s_pad), pad(ints, i_pad)
        n_user = sum(max(z, 1) for z in sizes)
        s_off = {f: i * jk for i, f in enumerate(_FLOAT_GRIDS)}
        s_off.update({f: 4 * jk + i for i, f in enumerate(_FLOAT_LANES)})

        def kernel(p_ref, s_ref, i_ref, so_ref, io_ref):
            ld = lambda ref, r: ref[r, :]
            demand_l = [ld(p_ref, j) for j in range(J)]
            m = [[ld(p_ref, J + j * K + k) > 0.5 for k in range(K)] for j in range(J)]
            prm = _unflatten_rows(treedef, sizes, [ld(p_ref, J + jk + r) for r in range(n_user)])
            grid = lambda off: [[ld(s_ref, off + j * K + k) for k in range(K)] for j in range(J)]
            st = {f: grid(s_off[f]) for f in _FLOAT_GRIDS}
            st.update({f: ld(s_ref, s_off[f]) for f in _FLOAT_LANES})
            st.update({f: ld(i_ref, i) for i, f in enumerate(_INT_LANES)})
            out = _solve_block(field_fn, opt, st, ld(i_ref, 2), demand_l, m, prm)
            for f in _FLOAT_GRIDS:
                for j in range(J):
                    for k in range(K):
                        so_ref[s_off[f] + j * K + k, :] = out[f][j][k]
            for f in _FLOAT_LANES:
                so_ref[s_off[f], :] = out[f]
            for i, f in enumerate(_INT_LANES):
                io_ref[i, :] = out[f]

        spec = lambda r: pl.BlockSpec((r, block), lambda i: (0, i))
        so, io = pl.pallas_call(
            kernel,
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
        out = {f: so[s_off[f] : s_off[f] + jk].reshape(J, K, n) for f in _FLOAT_GRIDS}
        out.update({f: so[s_off[f]] for f in _FLOAT_LANES})
        out.update({f: io[i] for i, f in enumerate(_INT_LANES)})
        return FusedState(**out)

    return ProjectionKernel(advance, block, opt)


def flops_per_iteration(num_rows: int, num_cols: int, field_flops: int) -> int:
    """Arithmetic per instance-iteration of the fused loop (one FLOP per elementwise op).

    Counted from the kernel body: every add, multiply, divide, compare, select, min/max and
    square root on a lane vector is one operation; ``field_flops`` is the caller's field (cost,
    metric, gap denominator) at one point.

    * projection, per row: ``3K`` setup (1/w, masks, w·z), ``K²`` pairs × (compare + 2 selects
      + 2 adds), ``K`` × (max, divide, max, select), ``K`` × (multiply, sub, max, select),
      ``K`` sum and rescale ``K`` → ``J·(5K² + 11K)``;
    * centring ``J·(4K + 3)`` + the step ``z = x − α c/s`` ``3JK``;
    * metric floor ``4JK``; gap ``4JK + 4J``; step control ``9JK + 10``;
    * pending-lane selects for ``x, c, s, step, best_x`` and the loop test ``≈ 8JK + 10``.
    """
    J, K = num_rows, num_cols
    proj = J * (5 * K * K + 11 * K)
    centre = J * (4 * K + 3) + 3 * J * K
    metric = 4 * J * K
    gap = 4 * J * K + 4 * J
    control = 9 * J * K + 10
    select = 8 * J * K + 10
    return int(proj + centre + metric + gap + control + select + field_flops)
