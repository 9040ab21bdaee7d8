r"""Facility-location coverage over all subsets, and best response in binary-action games.

Items ``i = 1..n`` with a non-negative cost matrix ``D (n, n)``. For a subset ``S`` (a bitmask:
bit ``j`` set when item ``j ∈ S``) the **nearest-other-member cost** of item ``i`` is

    G_S[i] = min { D[i, j] : j ∈ S, j ≠ i }          (+inf when S \ {i} is empty).

Excluding ``i`` itself is what a binary-action game needs: for ``i ∉ S`` it is ``i``'s distance
to ``S``; for ``i ∈ S`` it is what ``i`` would face after leaving ``S``. One array therefore
answers both "what does ``i`` pay" and "what would ``i`` pay if it switched".

**Exhaustive enumeration, meet in the middle.** Split the ``n`` bits into blocks
(``n = n_top + n_mid + n_low``); a minimum over a union is the minimum of the minima, so

    G_{t|h|l}[i] = min(G^top_t[i], G^mid_h[i], G^low_l[i]),

where each small table ``G^blk (n, 2^{n_blk})`` costs ``n·n_blk·2^{n_blk}``. For each of the
``2^{n_top}`` top values the ``(n, 2^{n_mid}, 2^{n_low})`` slab is formed by broadcasting and
combined over ``i`` on the fly (XLA fuses the broadcasts into one pass), so memory stays at
``O(n·2^{n_mid + n_low})`` per instance whatever ``n`` is, and the ``2^n`` axis is walked in
``2^{n_top}`` chunks by a ``lax.scan``. :func:`scan_subsets` drives the walk: the caller maps a
slab to per-subset values and folds them into a carry.

**Best-response dynamics** (:func:`binary_best_response`): players ``i = 0..n-1`` in order, each
switching its action only when that is *strictly* better by more than a tolerance; a round with
no switch is a pure Nash equilibrium and stops the loop (:mod:`poa_jax.kernels.loop` statuses).

Everything acts on **one** instance; callers ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from poa_jax.kernels import loop

__all__ = [
    "block_split",
    "subset_bits",
    "nearest_other_member",
    "scan_subsets",
    "binary_best_response",
]

#: Bits per enumerated slab axis: a slab is ``n × 2^LOW_BITS × 2^MID_BITS`` values.
LOW_BITS = 6
MID_BITS = 6


def block_split(n: int) -> tuple[int, int, int]:
    """``(n_top, n_mid, n_low)`` with ``n_low, n_mid ≤ 6``: the enumeration's bit blocks."""
    low = min(n, LOW_BITS)
    mid = min(n - low, MID_BITS)
    return n - low - mid, mid, low


def subset_bits(first: int, width: int, n: int) -> jax.Array:
    """Membership ``(n, 2^width)`` of item ``i`` in the subsets of bits ``first..first+width-1``.

    Column ``v`` is the subset whose bits ``first + k`` are the bits ``k`` of ``v``; items
    outside the block are never members.
    """
    v = jnp.arange(2**width, dtype=jnp.int32)
    i = jnp.arange(n, dtype=jnp.int32)[:, None]
    inside = (i >= first) & (i < first + width)
    return inside & (((v[None, :] >> jnp.clip(i - first, 0, 31)) & 1) == 1)


def nearest_other_member(dist_off: jax.Array, bits: jax.Array) -> jax.Array:
    """``min_{j ∈ S, j ≠ i} D[i, j]`` for each column ``S`` of ``bits``, ``(n, P)``.

    Args:
      dist_off: ``(n, n)`` cost matrix with ``+inf`` on the diagonal (so ``j = i`` never counts).
      bits: ``(n, P)`` membership of ``P`` subsets.
    """
    inf = jnp.asarray(jnp.inf, dist_off.dtype)
    return jnp.min(jnp.where(bits[None, :, :], dist_off[:, :, None], inf), axis=1)


def scan_subsets(
    dist_off: jax.Array,
    fold: Callable[[Any, Callable, Callable, jax.Array], Any],
    carry0: Any,
) -> Any:
    """Walks all ``2^n`` subsets in ``2^{n_top}`` slabs; returns the folded carry.

    Args:
      dist_off: ``(n, n)`` with ``+inf`` on the diagonal.
      fold: ``(carry, near, member, index) → carry`` for one slab of ``H × L`` subsets:
        ``near(i)`` is item ``i``'s :func:`nearest_other_member` cost in every subset of the
        slab, ``(H, L)``, ``member(i)`` its membership ``(H, L)`` bool (``i`` a Python int), and
        ``index (H, L)`` int32 the subsets' bitmasks (bit ``i`` = item ``i``). Combining the
        items one at a time in Python (``for i in range(n)``) keeps every operation elementwise
        over the slab, which XLA fuses into one vectorised pass (a reduction over a short item
        axis is slow on CPU backends).
      carry0: initial carry.
    """
    n = dist_off.shape[0]
    n_top, n_mid, n_low = block_split(n)
    low_b = subset_bits(0, n_low, n)  # (n, L)
    mid_b = subset_bits(n_low, n_mid, n)  # (n, H)
    top_b = subset_bits(n_low + n_mid, n_top, n)  # (n, T)
    g_low = nearest_other_member(dist_off, low_b)
    g_mid = nearest_other_member(dist_off, mid_b)
    g_top = nearest_other_member(dist_off, top_b)
    index_hl = (jnp.arange(2**n_mid, dtype=jnp.int32)[:, None] << n_low) | jnp.arange(
        2**n_low, dtype=jnp.int32
    )[None, :]

    def body(carry, t):
        gt, bt = g_top[:, t], top_b[:, t]

        def near(i):
            return jnp.minimum(jnp.minimum(g_mid[i][:, None], g_low[i][None, :]), gt[i])

        def member(i):
            return (mid_b[i][:, None] | low_b[i][None, :]) | bt[i]

        index = index_hl | (t << (n_low + n_mid))
        return fold(carry, near, member, index), None

    carry, _ = jax.lax.scan(body, carry0, jnp.arange(2**n_top, dtype=jnp.int32))
    return carry


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

        x, flips = jax.lax.fori_loop(0, n, visit, (x, jnp.int32(0)))
        flips = flips.astype(jnp.float32)
        return (flips, x), flips

    out = loop.iterate(one_round, (jnp.float32(jnp.inf), x0), tol=0.0, max_steps=max_rounds)
    return out._replace(state=out.state[1])
