"""poa_jax — batched equilibria, optima and Price of Anarchy for disaggregated LLM serving.

One import: ``import poa_jax as pj``.

    >>> import poa_jax as pj
    >>> game = pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0]))
    >>> round(float(pj.price_of_anarchy(game).poa), 4)
    1.3333
"""

__version__ = "0.1.0"

from poa_jax import (
    caching,
    coupled,
    latency,
    load,
    pd_game,
    plot,
    policies,
    queueing,
    regimes,
    scenario,
    serving,
    serving_sweep,
    sweep,
    synthetic,
    tiered_cache,
    tntp,
    topology,
)
from poa_jax.batching import use_cpu_devices
from poa_jax.caching import SelfishCachingGame
from poa_jax.coupled import CoupledGame
from poa_jax.errors import InputError
from poa_jax.game import RoutingGame
from poa_jax.graph import GraphGame, read_tntp, write_tntp_flows
from poa_jax.graph_solve import GraphSolution
from poa_jax.latency import Latency, PrefillTime
from poa_jax.poa import PoAResult, price_of_anarchy
from poa_jax.solve import Solution, solve_equilibrium, solve_optimum
from poa_jax.tiered_cache import TieredCacheGame

__all__ = [
    "CoupledGame",
    "GraphGame",
    "GraphSolution",
    "InputError",
    "Latency",
    "PoAResult",
    "PrefillTime",
    "RoutingGame",
    "SelfishCachingGame",
    "Solution",
    "TieredCacheGame",
    "caching",
    "coupled",
    "latency",
    "load",
    "pd_game",
    "plot",
    "policies",
    "price_of_anarchy",
    "queueing",
    "read_tntp",
    "regimes",
    "scenario",
    "serving",
    "serving_sweep",
    "solve_equilibrium",
    "solve_optimum",
    "sweep",
    "synthetic",
    "tiered_cache",
    "tntp",
    "topology",
    "use_cpu_devices",
    "write_tntp_flows",
]
