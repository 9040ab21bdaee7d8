"""Seeded random routing games for tests, property checks and benchmarks.

:func:`random_games` draws ``batch`` heterogeneous games with ``J`` classes and ``K`` workers
in normalised units (prompt length ~1, worker capacity ~1–3) so that the load factor
``Σ_j d_j L_j / Σ_k κ_k`` is drawn in ``load``. Latencies mix all terms of the family (affine,
polynomial up to degree 4, singular at capacity), so every code path is exercised.
"""

from __future__ import annotations

import numpy as np

from poa_jax.game import RoutingGame
from poa_jax.latency import Latency, PrefillTime

__all__ = ["random_games"]


def random_games(
    seed: int,
    batch: int,
    classes: int = 5,
    workers: int = 6,
    *,
    cache: bool = True,
    load: tuple[float, float] = (0.2, 0.9),
    singular: bool = True,
) -> RoutingGame:
    """``batch`` random games with fields ``(batch, J)`` / ``(batch, K)`` (NumPy float64).

    Args:
      seed: NumPy seed.
      batch, classes, workers: shape of the batch.
      cache: include the cache externality (shareable prefixes, finite cache sizes, prefill).
      load: range of the load factor ``Σ d·L / Σ κ``.
      singular: include the singular ``d·x/(κ − x)`` term (else ``κ = ∞``).
    """
    rng = np.random.default_rng(seed)
    b, j, k = batch, classes, workers
    tokens = rng.uniform(0.5, 2.0, (b, j)) if cache else np.ones((b, j))
    kappa = rng.uniform(1.0, 3.0, (b, k))
    rho = rng.uniform(*load, (b, 1))
    mix = rng.dirichlet(np.ones(j), b)
    demand = mix * rho * kappa.sum(-1, keepdims=True) / (mix * tokens).sum(-1, keepdims=True)
    lat = Latency(
        a=rng.uniform(0.1, 1.0, (b, k)),
        b=rng.uniform(0.0, 0.5, (b, k)),
        c=rng.uniform(0.0, 0.5, (b, k)),
        p=rng.integers(1, 5, (b, k)).astype(float),
        d=rng.uniform(0.1, 1.0, (b, k)) if singular else np.zeros((b, k)),
        kappa=kappa if singular else np.full((b, k), np.inf),
    )
    if not cache:
        return RoutingGame(demand=demand, latency=lat)
    mean_flow = demand.sum(-1, keepdims=True) / k
    return RoutingGame(
        demand=demand,
        latency=lat,
        tokens=tokens,
        shareable=rng.uniform(0.2, 0.9, (b, j)),
        residency=rng.uniform(0.1, 1.0, (b, k)) * mean_flow,
        cache_size=rng.uniform(1.0, 5.0, (b, k)) * mean_flow,
        # One prefill model per instance (one GPU type), as in DESIGN §2.1: per-worker prefill
        # offsets that differ by class make the class split a degenerate transportation problem.
        prefill=PrefillTime(
            a=np.repeat(rng.uniform(0.0, 0.2, (b, 1)), k, 1),
            b=np.repeat(rng.uniform(0.0, 0.2, (b, 1)), k, 1),
            c=np.repeat(rng.uniform(0.0, 0.05, (b, 1)), k, 1),
        ),
    )
