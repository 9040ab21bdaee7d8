"""Generated start shares for the routing games (:mod:`poa_jax.solve`, :mod:`poa_jax.load`).

Start 0 is the uniform split over an instance's workers. The next starts put 90% of every
class on one existing worker each (herding, the shape of the cache-affinity equilibria Dynamo
users report) while there are workers left, then random Dirichlet mixes. Each random start is
**one** draw from ``seed``, shared by every instance and restricted to its workers: an
instance's starts depend only on its own worker mask, the start index and the seed — not on its
position in the batch, the batch size or how a sweep is chunked — so batched results equal
one-at-a-time results.
"""

from __future__ import annotations

import numpy as np

from poa_jax.validation import MAX_STARTS, integer


def start_shares(mask: np.ndarray, starts: int, seed: int = 0) -> np.ndarray:
    """Shares ``(N, S, K)`` (rows on the simplex over each instance's workers) for worker masks
    ``(N, K)``: uniform, herds, then seeded random mixes (module docstring)."""
    starts = integer("starts", starts, 1, MAX_STARTS)
    mask = np.asarray(mask, bool)
    k = mask.shape[-1]
    uniform = mask / mask.sum(-1, keepdims=True)
    rank = np.cumsum(mask, -1) - 1  # index of each worker among the existing ones
    count = mask.sum(-1)
    shares = [uniform]
    i = 0
    while len(shares) < starts:
        herd = (rank == i) & mask & (i < count)[:, None]
        # One draw per start index, shared by every instance and indexed by each worker's rank
        # among the existing ones: normalised over an instance's `count` workers it is a
        # Dirichlet(1, …, 1) mix of those workers, whatever the padded width K (prefixes of the
        # stream agree), so padding a topology to batch it with larger ones changes nothing.
        draw = np.random.default_rng([seed, i]).standard_exponential(k)
        rand = np.where(mask, draw[np.clip(rank, 0, k - 1)], 0.0)
        rand /= rand.sum(-1, keepdims=True)
        shares.append(np.where(herd.any(-1, keepdims=True), 0.9 * herd + 0.1 * uniform, rand))
        i += 1
    return np.stack(shares, 1)
