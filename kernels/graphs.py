r"""Shortest paths, all-or-nothing loading and path–link algebra on a directed graph (one instance).

A graph has nodes ``0..V−1`` and links ``e`` from ``tail[e]`` to ``head[e]`` with costs
``t_e ≥ 0`` (``inf``: the link is absent). Nodes with ``thru[v] = False`` may start or end a path
but not be passed through (traffic-assignment centroids). The topology arrays are static
NumPy data shared by a batch; costs are traced, so callers ``vmap`` over instances.

* :func:`in_links` — each node's incoming links padded to a rectangle (a gather table).
* :func:`shortest_paths` — Bellman–Ford from a set of origins, vectorised over origins: with
  ``D_0[o, v] = 0 if v = o else ∞``,

      D_{i+1}[o, v] = min(D_i[o, v], min_{e: head[e]=v, tail[e] passable} D_i[o, tail[e]] + t_e),

  to a fixed point (at most ``V − 1`` rounds; the loop stops as soon as no label changes). It
  returns distances and the predecessor link of every node: among the *tight* links
  (``D[o, tail] + t_e = D[o, head]``) the one on a fewest-links shortest path, so ties through
  zero-cost links or cycles never make predecessors point at each other (the tree is acyclic and
  every traced path starts at its origin). Costs must be ≥ 0 (no negative cycles), which every
  latency of the family guarantees.
* :func:`trace_paths` — the links of the tree path ``o → d`` for a list of OD pairs, by following
  predecessor links back from ``d`` (``V − 1`` gathers), as a ``(W, V − 1)`` array padded with
  ``−1``.
* :func:`all_or_nothing` — link flows when every OD pair's demand takes its tree path.
* :func:`link_sums` / :func:`path_sums` — ``f = Δ x`` and ``c = Δᵀ t`` for paths stored as padded
  link-index tables ``(W, P, L)`` (padding index ``E``, a zero-cost dummy link).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "in_links",
    "shortest_paths",
    "trace_paths",
    "all_or_nothing",
    "link_sums",
    "path_sums",
]


def in_links(head: np.ndarray, num_nodes: int) -> np.ndarray:
    """``(V, D)`` table of each node's incoming link indices, padded with ``E`` (a dummy)."""
    head = np.asarray(head)
    num_links = head.shape[0]
    deg = np.bincount(head, minlength=num_nodes)
    table = np.full((num_nodes, max(int(deg.max(initial=0)), 1)), num_links, np.int32)
    fill = np.zeros(num_nodes, np.int64)
    for e, v in enumerate(head):
        table[v, fill[v]] = e
        fill[v] += 1
    return table


def shortest_paths(
    cost: jax.Array,
    tail: np.ndarray,
    origins: np.ndarray,
    inlinks: np.ndarray,
    thru: np.ndarray,
) -> tuple[jax.Array, jax.Array]:
    """Distances ``(O, V)`` and predecessor links ``(O, V)`` (``−1``: none) from each origin.

    Args:
      cost: ``(E,)`` link costs ≥ 0; ``inf`` removes a link.
      tail: ``(E,)`` int, static.
      origins: ``(O,)`` int node indices, static.
      inlinks: :func:`in_links` table ``(V, D)``, static.
      thru: ``(V,)`` bool, static: nodes that may be passed through.
    """
    num_links = cost.shape[0]
    num_nodes = inlinks.shape[0]
    dtype = cost.dtype
    tail = jnp.asarray(tail)
    origins_ = jnp.asarray(origins)
    # A link leaving a non-thru node is usable only from the origin that node is.
    passable = jnp.asarray(thru)[tail][None, :] | (tail[None, :] == origins_[:, None])  # (O, E)
    table = jnp.asarray(inlinks)
    start = jnp.where(jnp.arange(num_nodes)[None, :] == origins_[:, None], 0.0, jnp.inf).astype(
        dtype
    )

    def relax(dist):
        cand = jnp.where(passable, dist[:, tail] + cost[None, :], jnp.inf)  # (O, E)
        cand = jnp.concatenate([cand, jnp.full((cand.shape[0], 1), jnp.inf, dtype)], axis=1)
        via = cand[:, table]  # (O, V, D)
        best = jnp.min(via, axis=-1)
        return jnp.minimum(dist, best), via

    def cond(c):
        i, _, changed = c
        return changed & (i < num_nodes)

    def body(c):
        i, dist, _ = c
        new, _ = relax(dist)
        return i + 1, new, jnp.any(new < dist)

    _, dist, _ = jax.lax.while_loop(cond, body, (0, start, jnp.array(True)))
    # Predecessors: ties between equally short routes (zero-cost links, zero-cost cycles) must not
    # be broken by the link order, or two nodes of a zero-cost cycle can point at each other and
    # a traced path never reaches its origin. With the distances fixed, a link is *tight* when
    # ``dist[tail] + t_e == dist[head]`` (the same float sum as in `relax`, so exact); every
    # reached node has a tight path from the origin. A breadth-first search on the tight links
    # gives hop counts ``h`` (integers, no rounding), and each node's predecessor is a tight link
    # whose tail has ``h = h[v] − 1``: hop counts fall strictly along predecessors, so the tree is
    # acyclic and every traced path ends at its origin.
    cand = jnp.where(passable, dist[:, tail] + cost[None, :], jnp.inf)  # (O, E)
    inl = np.asarray(inlinks)
    head = np.zeros(num_links, np.int32)  # each link's head, from the in-link table
    rows, cols = np.nonzero(inl < num_links)
    head[inl[rows, cols]] = rows
    tight = jnp.isfinite(cand) & (cand <= dist[:, jnp.asarray(head)])  # (O, E)
    big = jnp.int32(num_nodes + 1)
    hop0 = jnp.where(jnp.arange(num_nodes)[None, :] == origins_[:, None], 0, big).astype(jnp.int32)

    def hop_cand(hop):
        hc = jnp.where(tight, hop[:, tail] + 1, big)  # (O, E)
        hc = jnp.concatenate([hc, jnp.full((hc.shape[0], 1), big, jnp.int32)], axis=1)
        return hc[:, table]  # (O, V, D)

    def hop_body(c):
        i, hop, _ = c
        new = jnp.minimum(hop, jnp.min(hop_cand(hop), axis=-1))
        return i + 1, new, jnp.any(new < hop)

    _, hop, _ = jax.lax.while_loop(cond, hop_body, (0, hop0, jnp.array(True)))
    via = hop_cand(hop)
    arg = jnp.argmin(via, axis=-1)  # (O, V)
    link = table[jnp.arange(num_nodes)[None, :], arg]
    ok = jnp.take_along_axis(via, arg[..., None], axis=-1)[..., 0] == hop  # tail at h[v] − 1
    reached = jnp.isfinite(dist) & (jnp.arange(num_nodes)[None, :] != origins_[:, None])
    pred = jnp.where(reached & ok & (hop < big) & (link < num_links), link, -1)
    return dist, pred.astype(jnp.int32)


def trace_paths(
    pred: jax.Array,
    tail: np.ndarray,
    origin_index: np.ndarray,
    destinations: np.ndarray,
) -> jax.Array:
    """Links of the tree path of each OD pair, ``(W, V − 1)``, from the destination backwards,
    padded with ``−1`` (all ``−1`` if unreachable or ``o = d``).

    Args:
      pred: ``(O, V)`` predecessor links from :func:`shortest_paths`.
      tail: ``(E,)`` int.
      origin_index: ``(W,)`` row of ``pred`` (the origin's position in ``origins``) per pair.
      destinations: ``(W,)`` node per pair.
    """
    num_nodes = pred.shape[1]
    tail = jnp.asarray(tail)
    rows = jnp.asarray(origin_index)

    def step(cur, _):
        e = jnp.where(cur >= 0, pred[rows, jnp.maximum(cur, 0)], -1)
        nxt = jnp.where(e >= 0, tail[jnp.maximum(e, 0)], -1)
        return nxt, e

    _, links = jax.lax.scan(step, jnp.asarray(destinations), None, length=max(num_nodes - 1, 1))
    return links.T


def all_or_nothing(
    pred: jax.Array,
    tail: np.ndarray,
    origin_index: np.ndarray,
    destinations: np.ndarray,
    demand: jax.Array,
    num_links: int,
) -> jax.Array:
    """Link flows ``(E,)`` when each pair's demand ``(W,)`` takes its shortest-path-tree path."""
    links = trace_paths(pred, tail, origin_index, destinations)  # (W, V − 1)
    w = jnp.where(links >= 0, demand[:, None], 0.0)
    idx = jnp.where(links >= 0, links, num_links)
    return jnp.zeros(num_links + 1, demand.dtype).at[idx].add(w)[:num_links]


def link_sums(x: jax.Array, path_links: jax.Array, num_links: int) -> jax.Array:
    """``f_e = Σ_{paths π ∋ e} x_π``, ``(E,)``, for path flows ``x (W, P)`` and a padded link table
    ``path_links (W, P, L)`` (padding ``E``)."""
    w = jnp.broadcast_to(x[..., None], path_links.shape)
    return jnp.zeros(num_links + 1, x.dtype).at[path_links].add(w)[:num_links]


def path_sums(t: jax.Array, path_links: jax.Array) -> jax.Array:
    """``c_π = Σ_{e ∈ π} t_e``, ``(W, P)``, for link values ``t (E,)`` (padding adds 0)."""
    t_ext = jnp.concatenate([t, jnp.zeros((1,), t.dtype)])
    return jnp.sum(t_ext[path_links], axis=-1)
