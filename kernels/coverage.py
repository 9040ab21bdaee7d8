r"""Facility-location coverage over all subsets, and best response in binary-action games.

Items ``i = 1..n`` with a cost matrix ``C (n, n)`` whose diagonal is ``+inf`` and a base cost
``e (n,)``. For a subset ``S`` (a bitmask: bit ``j`` set when item ``j ∈ S``) the
**nearest-other-member cost** of item ``i`` is

    G_S[i] = min(e_i, min { C[i, j] : j ∈ S, j ≠ i }).

Excluding ``i`` itself is what a binary-action game needs: for ``i ∉ S`` it is ``i``'s cost of
being served by ``S``; for ``i ∈ S`` it is what ``i`` would face after leaving ``S``. One value
therefore answers both "what does ``i`` pay" and "what would ``i`` pay if it switched".

**Exhaustive enumeration: subset tables, meet in the middle.** The table of ``G`` over all
subsets of a block of ``w`` bits is built by a subset DP, ``T_{b+1} = [T_b, min(T_b, C[:, b])]``
(the new half adds item ``b``): ``n·2^w`` minima, no gathers (:func:`subset_min`). Split the
``n`` bits into blocks (``n = n_top + n_mid + n_low``); a minimum over a union is the minimum of
the minima, so for the profile ``t|h|l``

    G_{t|h|l}[i] = min(G^mid_h[i] ∧ G^top_t[i], G^low_l[i])

— one minimum per item and profile once the top block is folded into the (small) mid table
(:func:`slab_tables`). The ``2^n`` axis is walked in ``2^{n_top}`` slabs of ``2^{n_mid} ×
2^{n_low}`` profiles; :func:`slab_member` gives an item's membership in a slab, and
:func:`first_in_slab` the first profile of a slab attaining a value (a row-wise reduction and a
search in one row, much cheaper on CPU than an ``argmin`` over the slab). The caller writes the
per-slab values (one elementwise pass, unrolled over items) and folds them.

**Best-response dynamics** (:func:`binary_best_response`): players ``i = 0..n-1`` in order, each
switching its action only when that is *strictly* better by more than a tolerance; a round with
no switch is a pure Nash equilibrium and stops the loop (:mod:`poa_jax.kernels.loop` statuses).

Everything acts on **one** instance; callers ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from poa_jax.kernels import loop

__all__ = [
    "block_split",
    "subset_min",
    "slab_tables",
    "slab_member",
    "first_in_slab",
    "binary_best_response",
]

#: Bits per enumerated slab axis: a slab is ``2^MID_BITS × 2^LOW_BITS`` profiles.
LOW_BITS = 6
MID_BITS = 6


def block_split(n: int) -> tuple[int, int, int]:
    """``(n_top, n_mid, n_low)`` with ``n_low, n_mid ≤ 6``: the enumeration's bit blocks."""
    low = min(n, LOW_BITS)
    mid = min(n - low, MID_BITS)
    return n - low - mid, mid, low


def subset_min(cost: jax.Array, base: jax.Array, first: int, width: int) -> jax.Array:
    """``min(base_i, min_{j ∈ S} cost[i, j])`` for every subset ``S`` of bits ``first..first +
    width - 1``, ``(n, 2^width)``.

    Column ``v`` is the subset whose bits ``first + k`` are the bits ``k`` of ``v``. Built by
    the subset DP (each new bit doubles the table with one minimum), ``n·2^width`` work.

    Args:
      cost: ``(n, n)`` with ``+inf`` on the diagonal (so ``j = i`` never counts).
      base: ``(n,)`` value for the empty subset.
    """
    t = base[:, None]
    for b in range(first, first + width):
        t = jnp.concatenate([t, jnp.minimum(t, cost[:, b : b + 1])], axis=1)
    return t


def slab_tables(
    cost: jax.Array, base: jax.Array, top: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The tables of the slab whose top bits are ``top``: ``(g_mid (n, H), g_low (n, L),
    member_top (n,) bool)``, with ``G_{top|h|l}[i] = min(g_mid[i, h], g_low[i, l])``.

    Args:
      cost: ``(n, n)``, ``+inf`` on the diagonal; base: ``(n,)`` (see the module notes).
      top: int32 scalar, the value of the top block's bits (0 when ``n ≤ 12``).
    """
    n = cost.shape[0]
    n_top, n_mid, n_low = block_split(n)
    inf = jnp.full_like(base, jnp.inf)
    g_low = subset_min(cost, base, 0, n_low)
    g_mid = subset_min(cost, inf, n_low, n_mid)
    rel = jnp.arange(n, dtype=jnp.int32) - (n_low + n_mid)
    member_top = (rel >= 0) & (((top >> jnp.clip(rel, 0, 31)) & 1) == 1)
    if n_top:
        g_top = jnp.min(jnp.where(member_top[None, :], cost, jnp.inf), axis=1)
        g_mid = jnp.minimum(g_mid, g_top[:, None])
    return g_mid, g_low, member_top


def slab_member(i: int, n: int, member_top: jax.Array) -> jax.Array:
    """Membership of item ``i`` (a Python int) in the profiles of a slab, broadcastable to
    ``(H, L)`` bool."""
    _, n_mid, n_low = block_split(n)
    if i < n_low:
        return ((jnp.arange(2**n_low, dtype=jnp.int32)[None, :] >> i) & 1) == 1
    if i < n_low + n_mid:
        return ((jnp.arange(2**n_mid, dtype=jnp.int32)[:, None] >> (i - n_low)) & 1) == 1
    return member_top[i]


def first_in_slab(
    values: jax.Array, row_best: jax.Array, target: jax.Array, row_values: Callable
) -> jax.Array:
    """Smallest flat index ``h·L + l`` of a slab with value ``target`` (0 when none).

    Args:
      values: ``(H, L)`` the slab (any encoding; ``row_values`` decodes one row).
      row_best: ``(H,)`` the per-row reduction whose overall reduction is ``target``.
      target: scalar.
      row_values: ``(L,) → (L,)`` the values compared with ``target`` in one row.
    """
    h_size, l_size = values.shape
    h = jnp.min(jnp.where(row_best == target, jnp.arange(h_size, dtype=jnp.int32), h_size))
    h = jnp.minimum(h, h_size - 1)
    row = row_values(jax.lax.dynamic_index_in_dim(values, h, keepdims=False))
    col = jnp.min(jnp.where(row == target, jnp.arange(l_size, dtype=jnp.int32), l_size))
    return h * l_size + jnp.minimum(col, l_size - 1)


def binary_best_response(
    deviation: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    x0: jax.Array,
    *,
    max_rounds: int,
) -> loop.LoopResult:
    """Sequential best-response dynamics in a game where every player picks 0 or 1.

    Args:
      deviation: ``(x (n,) bool, i) → (stay, switch)``: player ``i``'s cost for keeping and
        for flipping its action at profile ``x``, and ``switch`` already includes the strictness
        margin (a player flips only when ``switch < stay``).
      x0: ``(n,)`` bool start profile.
      max_rounds: bound on full rounds (each round visits players ``0..n-1`` once).

    Returns:
      A :class:`~poa_jax.kernels.loop.LoopResult` whose state is the final profile ``(n,)``;
      its error is the number of flips in the last round (0 at a pure Nash equilibrium), its
      steps the rounds run.
    """
    n = x0.shape[0]

    # The state leads with a float so that the driver's error has a float dtype.
    def one_round(state):
        _, x = state

        def visit(i, carry):
            x, flips = carry
            stay, switch = deviation(x, i)
            flip = switch < stay
            return x.at[i].set(x[i] ^ flip), flips + flip.astype(jnp.int32)

        # Unrolled: static player indices make every slice and update static.
        x, flips = jax.lax.fori_loop(0, n, visit, (x, jnp.int32(0)), unroll=True)
        flips = flips.astype(jnp.float32)
        return (flips, x), flips

    out = loop.iterate(one_round, (jnp.float32(jnp.inf), x0), tol=0.0, max_steps=max_rounds)
    return out._replace(state=out.state[1])
