r"""Scenarios: a workload, a worker model, topologies, a load axis and router policies to sweep.

A :class:`Scenario` is a frozen, hashable description of a sweep of routing games (DESIGN §2.2,
§3): every *topology* × *load point* × *policy* is one instance. It is loaded from TOML
(:func:`load_scenario`; the built-in one is :func:`default_scenario`) or built in Python, and is
checked eagerly: a bad field raises :class:`~poa_jax.InputError` naming the file, the TOML key
path (e.g. ``policies[2].name``) and the rule, before anything is compiled.

Units (the numbers every scenario shares):

* ``tokens`` — prompt tokens per request of a class (a count, e.g. 128);
* rates — requests per second (demand, ``residency``, ``cache_size``);
* worker load — uncached prefill tokens per second (``kappa``, the load ``W_k`` of the latency);
* times — milliseconds (the latency family ``a, b, c, d`` and the DistServe prefill time, whose
  published OPT-13B coefficients are in ms with ``n`` in tokens).

The load axis is *utilisation* ``u`` of a topology's token capacity ``Σ_k κ_k``: the total
request rate is ``u·Σ_k κ_k / Σ_j mix_j L_j`` (requests/s), split over classes by ``mix``. At
``u = 1`` the offered prompt tokens equal the capacity; prefix-cache hits remove part of that
work, so overload (a worker past ``ρ_max·κ``) starts near ``u = 1``, later where more hits are
kept.

:meth:`Scenario.build` turns any set of point indices into a batch of instances (the flat order
is topology, workload variant, seed, load, policy — policy fastest), topologies padded to the
largest worker count with ``worker_mask`` False, with columnar labels. A point is rebuilt from its
index alone, so sweeps of any size are expanded lazily, chunk by chunk.

Besides topologies, load and policies, a scenario may have workload variants (``[[variants]]``:
per-class replacements of ``mix``, ``tokens``, ``shareable``), random replicates (``[seeds]``:
``count`` seeds jittering the class mix and the worker capacities by log-normal factors) and
policy grids (``[[policy_grid]]``: one policy per combination of listed parameter values).

Size bounds (checked before anything is expanded): every axis has at most
:data:`MAX_AXIS_POINTS` (10⁸) values — load points, seeds, policies after expanding the grids,
topologies, variants — and a sweep at most :data:`MAX_POINTS` (10¹⁰) points in all.

Example:
  >>> from poa_jax import scenario
  >>> sc = scenario.default_scenario()
  >>> sc.axes                        # topologies × variants × seeds × loads × policies
  {'topology': 2, 'variant': 1, 'seed': 1, 'load': 24, 'policy': 4}
  >>> batch = sc.build()
  >>> batch.game.demand.shape, batch.labels[0].policy
  ((192, 5), 'selfish')
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import inspect
import itertools
import json
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from poa_jax import policies as _policies
from poa_jax.errors import InputError
from poa_jax.game import RoutingGame
from poa_jax.latency import Latency, PrefillTime

__all__ = [
    "RequestClass",
    "WorkerModel",
    "Topology",
    "LoadAxis",
    "PolicySpec",
    "SolverSettings",
    "WorkloadVariant",
    "SeedAxis",
    "Scenario",
    "PointLabel",
    "Labels",
    "Batch",
    "load_scenario",
    "default_scenario",
    "DTYPES",
    "DEFAULT_TOPOLOGIES",
    "DEFAULT_POLICIES",
    "MAX_AXIS_POINTS",
    "MAX_POINTS",
]

DTYPES = ("float32", "float64")
#: Most values on one axis (load points, seeds, policies, topologies, variants).
MAX_AXIS_POINTS = 10**8
#: Most points in one scenario (the product of its axes).
MAX_POINTS = 10**10
_LATENCY_FIELDS = ("a", "b", "c", "p", "d", "kappa", "rho_max")
_PREFILL_FIELDS = ("a", "b", "c")
#: Per-worker fields a topology may override (scalars or one value per worker).
_WORKER_FIELDS = _LATENCY_FIELDS + ("residency", "cache_size")


# --------------------------------------------------------------------------- the parts


@dataclasses.dataclass(frozen=True)
class RequestClass:
    """A request class (prompt template / prefix group).

    Attributes:
      name: unique label.
      tokens: prompt tokens per request ``L_j`` (> 0).
      shareable: shareable-prefix fraction ``η_j`` in [0, 1].
      mix: relative share of requests (> 0); normalised over the classes.
    """

    name: str
    tokens: float
    shareable: float = 0.0
    mix: float = 1.0


@dataclasses.dataclass(frozen=True)
class WorkerModel:
    """One worker: latency family (ms, load in tokens/s), DistServe prefill time, prefix cache.

    Attributes:
      a, b, c, p, d, kappa, rho_max: ``ℓ(W) = a + b·W + c·W^p + d·W/(κ − W)`` in ms for an
        uncached prefill load ``W`` in tokens/s; ``kappa`` is the token capacity (finite, > 0).
      prefill: DistServe prefill time ``s(n) = a + b·n + c·n²`` (ms, ``n`` uncached tokens).
      residency: flow (requests/s) at which an idle worker keeps half of a class's prefix.
      cache_size: flow (requests/s) at which eviction pressure doubles the residency.
    """

    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    p: float = 1.0
    d: float = 0.0
    kappa: float = 1.0
    rho_max: float = 0.99
    prefill: PrefillTime = dataclasses.field(default_factory=PrefillTime)
    residency: float = 1.0
    cache_size: float = math.inf


class _FrozenMap(tuple):
    """A mapping frozen as a sorted tuple of ``(key, value)`` pairs (hashable)."""

    __slots__ = ()


def _freeze(value):
    """Mappings → :class:`_FrozenMap`, lists → tuples, recursively (so configs hash)."""
    if isinstance(value, _FrozenMap):
        return value
    if isinstance(value, Mapping):
        return _FrozenMap(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    """Inverse of :func:`_freeze`: dicts and lists."""
    if isinstance(value, _FrozenMap):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Topology:
    """A pool of ``workers`` identical workers, optionally with per-worker overrides.

    Attributes:
      name: unique label, e.g. ``"1P/2D"``.
      workers: number of (decode) workers the router chooses from, ≥ 1.
      worker: overrides of :class:`WorkerModel` fields for this topology: a scalar for all its
        workers or one value per worker (e.g. ``{"a": [8.0, 12.0]}``); ``"prefill"`` takes a
        mapping of ``a, b, c``. Stored frozen; read it back with :meth:`overrides`.
    """

    name: str
    workers: int
    worker: Any = ()

    def __post_init__(self):
        object.__setattr__(self, "worker", _freeze(self.worker or {}))

    def overrides(self) -> dict:
        """The overrides as a plain dict."""
        return _thaw(self.worker) if isinstance(self.worker, _FrozenMap) else {}


@dataclasses.dataclass(frozen=True)
class LoadAxis:
    """Utilisation points ``u`` of a topology's capacity ``Σκ``.

    Either ``points`` evenly spaced values from ``min`` to ``max`` (inclusive), or explicit
    ``values`` (then ``min``/``max``/``points`` are ignored).
    """

    min: float = 0.05
    max: float = 1.20
    points: int = 24
    values: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.values is not None:
            object.__setattr__(self, "values", tuple(self.values))

    @property
    def size(self) -> int:
        """``U``, the number of utilisation points (without building the grid)."""
        return len(self.values) if self.values is not None else int(self.points)

    def utilisation(self) -> np.ndarray:
        """The utilisation grid, ``(U,)``."""
        if self.values is not None:
            return np.asarray(self.values, np.float64)
        # Rounded so that grid points read as typed (0.4, not 0.39999999999999997).
        return np.round(np.linspace(self.min, self.max, int(self.points)), 12)

    def at(self, index: np.ndarray) -> np.ndarray:
        """``utilisation()[index]``, computed for those indices only (as ``np.linspace`` does)."""
        index = np.asarray(index, np.int64)
        if self.values is not None:
            return np.asarray(self.values, np.float64)[index]
        lo, hi, n = float(self.min), float(self.max), int(self.points)
        if n <= 1:
            y = np.full(index.shape, lo)
        else:
            delta, div = hi - lo, n - 1
            step = delta / div
            y = index.astype(np.float64)
            y = y / div * delta if step == 0 else y * step
            y = np.where(index == n - 1, hi, y + lo)
        return np.round(y, 12)


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """A router policy by name (:func:`poa_jax.policies.from_name`) with parameters and a label.

    Attributes:
      name: ``selfish``, ``dynamo`` or ``load_balanced``.
      params: keyword parameters of the policy constructor (e.g. ``omega``, ``tau``).
      label: unique label in tables; default derived from name and parameters.
    """

    name: str
    params: Any = ()
    label: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "params", _freeze(self.params or {}))

    def kwargs(self) -> dict:
        """The parameters as a plain dict (lists for sequences)."""
        return _thaw(self.params) if isinstance(self.params, _FrozenMap) else {}

    def display(self) -> str:
        """The label, or ``name(k=v, ...)`` when none was given."""
        if self.label is not None:
            return self.label
        kw = self.kwargs()
        if not kw:
            return self.name
        return f"{self.name}({', '.join(f'{k}={_fmt(v)}' for k, v in sorted(kw.items()))})"

    def policy(self) -> _policies.Policy:
        """The :class:`~poa_jax.policies.Policy` it names."""
        kw = self.kwargs()
        if "credits" in kw:
            kw["credits"] = tuple(kw["credits"])
        return _policies.from_name(self.name, **kw)


def _fmt(v) -> str:
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclasses.dataclass(frozen=True)
class WorkloadVariant:
    """A variant of the workload: per-class replacements of ``mix``, ``tokens``, ``shareable``.

    Each given field is a list with one value per request class (in the order of
    ``workload.classes``); fields left out keep the base workload's values.
    """

    name: str
    mix: tuple[float, ...] | None = None
    tokens: tuple[float, ...] | None = None
    shareable: tuple[float, ...] | None = None

    def __post_init__(self):
        for f in _VARIANT_FIELDS:
            v = getattr(self, f)
            if isinstance(v, list):
                object.__setattr__(self, f, tuple(v))


_VARIANT_FIELDS = ("mix", "tokens", "shareable")


@dataclasses.dataclass(frozen=True)
class SeedAxis:
    r"""Random replicates of every point: ``count`` seeds, each jittering the workload and workers.

    Seed ``s`` draws, from ``numpy.random.default_rng([seed, s])``, one log-normal factor
    ``exp(jitter·z)`` (``z ~ N(0, 1)``) per request class, multiplying its ``mix`` (then
    renormalised), and one per worker slot, multiplying its capacity ``kappa``. With
    ``jitter = 0`` (the default) every seed is the base scenario. The draws depend only on
    ``(seed, s)``, so any chunk of a sweep is rebuilt identically on any machine.
    """

    count: int = 1
    jitter: float = 0.0
    seed: int = 0

    def factors(self, s: int, num_classes: int, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
        """``(mix factors (J,), kappa factors (K,))`` of seed ``s``."""
        if self.jitter == 0:
            return np.ones(num_classes), np.ones(num_workers)
        z = np.random.default_rng([int(self.seed), int(s)]).standard_normal(
            num_classes + num_workers
        )
        f = np.exp(float(self.jitter) * z)
        return f[:num_classes], f[num_classes:]


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Options passed to :func:`poa_jax.price_of_anarchy`.

    Attributes:
      starts: equilibrium starts per instance (≥ 1).
      tol: relative-gap tolerance (default by dtype).
      max_iters: iteration bound (default 1000).
      dtype: ``"float32"`` or ``"float64"`` (float64 needs ``jax_enable_x64``).
      optimum_starts: generated optimum starts besides the equilibria found (≥ 1; default 4,
        as :func:`poa_jax.price_of_anarchy`). The optimum is a local search and more starts
        find lower optima (a higher PoA); the default scenario sets 16 (see its comment and
        benchmarks/RESULTS.md, ninth and tenth sessions).
      warm_start: ``None`` (every point from the generated starts) or ``"load"``: continuation
        along the load axis — every 4th load point of a curve from the generated starts, the
        ones halfway between from those (``u − 2``), the rest from their lower neighbour
        (``u − 1``), each start from where the same start ended there (see
        :mod:`poa_jax.sweep`). Fewer iterations; with several equilibria it can select others.
    """

    starts: int = 4
    tol: float | None = None
    max_iters: int | None = None
    dtype: str = "float32"
    optimum_starts: int = 4
    warm_start: str | None = None


#: Values of ``solver.warm_start`` (None: cold starts everywhere).
WARM_STARTS = (None, "load")

#: Topologies when a scenario names none: 1P/2D and 1P/5D, identical workers.
DEFAULT_TOPOLOGIES = (Topology("1P/2D", 2), Topology("1P/5D", 5))
#: Policies when a scenario names none: selfish, Dynamo's defaults, the paper's saturated-regime
#: Dynamo setting, and least-loaded routing.
DEFAULT_POLICIES = (
    PolicySpec("selfish", label="selfish"),
    PolicySpec("dynamo", {"omega": 1.0, "tau": 0.0}, label="dynamo(w=1.0,t=0.0)"),
    PolicySpec("dynamo", {"omega": 0.1, "tau": 0.8}, label="dynamo(w=0.1,t=0.8)"),
    PolicySpec("load_balanced", label="load_balanced"),
)


class PointLabel(NamedTuple):
    """Axis labels of one instance of :meth:`Scenario.build`."""

    topology: str
    workers: int
    utilisation: float
    demand_total: float  # requests/s
    policy: str  # the policy's label
    omega: float  # Dynamo's prefill weight ω (NaN for selfish)
    tau: float  # router temperature τ
    variant: str = "base"  # the workload variant's name
    seed: int = 0  # the seed index


class Labels:
    """Columnar labels of a batch: ``columns[name]`` is an ``(N,)`` array per label field.

    Indexing gives one :class:`PointLabel`; ``len`` the number of instances.
    """

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["topology"])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        c = self.columns
        return PointLabel(
            str(c["topology"][i]), int(c["workers"][i]), float(c["utilisation"][i]),
            float(c["demand_total"][i]), str(c["policy"][i]), float(c["omega"][i]),
            float(c["tau"][i]), str(c["variant"][i]), int(c["seed"][i]),
        )  # fmt: skip

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class Batch(NamedTuple):
    """What :meth:`Scenario.build` returns: a flat batch of ``N`` instances."""

    game: RoutingGame  # fields (N, J) / (N, K), NumPy float64
    policy: _policies.Policy  # fields (N,)
    labels: Labels  # N labels, in batch order
    points: np.ndarray | None = None  # (N,) the instances' indices in the scenario's flat order


# --------------------------------------------------------------------------- scenario


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A sweep: topologies × workload variants × seeds × load points × policies.

    Built directly (values are checked here) or by :func:`load_scenario` /
    :meth:`from_dict` (keys and types checked there too). ``source`` names where it came from
    (a file path) for error messages; it is not part of the scenario's identity.

    The flat order of the points is :data:`AXES` (topology slowest, policy fastest): the
    policies of one game are consecutive, and so is a load curve. A point's index is all that
    is needed to rebuild it (:meth:`build`), so a sweep of any size is expanded lazily, one
    chunk at a time.

    Attributes:
      name: scenario name (default output folder ``out/<name>``).
      description: free text.
      classes: the request classes (``J``).
      worker: the worker model shared by all topologies.
      topologies: the topologies (``T``; default :data:`DEFAULT_TOPOLOGIES`).
      load: the utilisation axis (``U`` points; default 0.05 to 1.20 in 24 points).
      policies: the router policies (``P``; default :data:`DEFAULT_POLICIES`).
      solver: solver settings.
      variants: workload variants (``V``; none: the base workload alone).
      seeds: random replicates (``S``; default one seed, no jitter).
    """

    name: str
    classes: tuple[RequestClass, ...]
    worker: WorkerModel
    topologies: tuple[Topology, ...] = DEFAULT_TOPOLOGIES
    load: LoadAxis = dataclasses.field(default_factory=LoadAxis)
    policies: tuple[PolicySpec, ...] = DEFAULT_POLICIES
    solver: SolverSettings = dataclasses.field(default_factory=SolverSettings)
    description: str = ""
    source: str = dataclasses.field(default="", compare=False, repr=False)
    variants: tuple[WorkloadVariant, ...] = ()
    seeds: SeedAxis = dataclasses.field(default_factory=SeedAxis)

    def __post_init__(self):
        for f in ("classes", "topologies", "policies", "variants"):
            v = getattr(self, f)
            if isinstance(v, list):
                object.__setattr__(self, f, tuple(v))
        _validate(self)

    # -- shape and identity

    @property
    def axes(self) -> dict[str, int]:
        """The named axes and their sizes, slowest first (see :data:`AXES`)."""
        return dict(zip(AXES, self.shape, strict=True))

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(T, V, S, U, P)``: topologies, variants, seeds, load points, policies."""
        return (
            len(self.topologies),
            max(len(self.variants), 1),
            int(self.seeds.count),
            self.load.size,
            len(self.policies),
        )

    @property
    def num_points(self) -> int:
        """``T·V·S·U·P``, the number of instances."""
        return math.prod(self.shape)

    def variant_names(self) -> list[str]:
        """Each workload variant's name (``["base"]`` when there are none)."""
        return [v.name for v in self.variants] or ["base"]

    def policy_labels(self) -> list[str]:
        """Each policy's display label, in order."""
        return [p.display() for p in self.policies]

    def to_dict(self, *, canonical: bool = False) -> dict:
        """All fields (defaults filled in) as TOML/JSON-ready data; inverse of :meth:`from_dict`.

        Args:
          canonical: write every policy's display label (what the results are labelled with)
            even where none was given, for :meth:`canonical_json`.
        """
        w = self.worker
        worker = {f: getattr(w, f) for f in _LATENCY_FIELDS}
        worker["prefill"] = {f: float(np.asarray(getattr(w.prefill, f))) for f in _PREFILL_FIELDS}
        worker["residency"] = w.residency
        worker["cache_size"] = w.cache_size
        load = (
            {"values": list(self.load.values)}
            if self.load.values is not None
            else {"min": self.load.min, "max": self.load.max, "points": self.load.points}
        )
        solver = {k: v for k, v in dataclasses.asdict(self.solver).items() if v is not None}
        if canonical:
            # tol and max_iters written as their defaults are the same computation as left out
            # (and leaving them out is how every scenario so far hashed)
            from poa_jax import tolerances

            if solver.get("tol") == tolerances.default_tol(np.dtype(self.solver.dtype)):
                del solver["tol"]
            if solver.get("max_iters") == tolerances.DEFAULT_MAX_ITERS:
                del solver["max_iters"]
        out = {
            "name": self.name,
            "description": self.description,
            "workload": {"classes": [dataclasses.asdict(c) for c in self.classes]},
            "worker": worker,
            "topologies": [
                {
                    "name": t.name,
                    "workers": t.workers,
                    **({"worker": t.overrides()} if t.worker else {}),
                }
                for t in self.topologies
            ],
            "load": load,
            "policies": [
                {
                    "name": p.name,
                    **({"label": p.display()} if canonical or p.label is not None else {}),
                    **({"params": p.kwargs()} if p.params else {}),
                }
                for p in self.policies
            ],
            "solver": solver,
        }
        # Written only when used, so a scenario without them keeps its hash.
        if self.variants:
            out["variants"] = [
                {"name": v.name}
                | {f: list(getattr(v, f)) for f in _VARIANT_FIELDS if getattr(v, f) is not None}
                for v in self.variants
            ]
        if self.seeds != SeedAxis():
            out["seeds"] = dataclasses.asdict(self.seeds)
        return out

    def canonical_json(self) -> str:
        """Canonical JSON of everything that determines the results (not name/description)."""
        d = self.to_dict(canonical=True)
        d.pop("name")
        d.pop("description")
        return json.dumps(_jsonable(d), sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def with_solver(self, **changes) -> Scenario:
        """A copy with some :class:`SolverSettings` fields replaced (e.g. ``dtype``)."""
        return dataclasses.replace(self, solver=dataclasses.replace(self.solver, **changes))

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "") -> Scenario:
        """A scenario from parsed TOML/JSON data; unknown keys and wrong types raise."""
        return _parse(data, source)

    # -- the batch

    def worker_arrays(self, topology: Topology) -> dict[str, np.ndarray]:
        """Per-worker fields ``(workers,)`` of a topology: the model with its overrides."""
        n = topology.workers
        base = {f: getattr(self.worker, f) for f in _WORKER_FIELDS}
        base.update({f"prefill.{f}": np.asarray(getattr(self.worker.prefill, f)) for f in "abc"})
        over = dict(topology.overrides())
        for f, v in over.pop("prefill", {}).items():
            over[f"prefill.{f}"] = v
        base.update(over)
        return {f: np.broadcast_to(np.asarray(v, np.float64), (n,)).copy() for f, v in base.items()}

    def _tables(self) -> dict:
        """Per-axis tables that :meth:`build` indexes (small: one row per axis value)."""
        k_max = max(t.workers for t in self.topologies)
        per_topo = []
        for t in self.topologies:
            arr = self.worker_arrays(t)
            pad = k_max - t.workers
            arr = {f: np.concatenate([v, np.repeat(v[:1], pad)]) for f, v in arr.items()}
            arr["mask"] = np.arange(k_max) < t.workers
            per_topo.append(arr)
        topo = {f: np.stack([a[f] for a in per_topo]) for f in per_topo[0]}  # (T, K)
        base = {
            "mix": [c.mix for c in self.classes],
            "tokens": [c.tokens for c in self.classes],
            "shareable": [c.shareable for c in self.classes],
        }
        variants = self.variants or (WorkloadVariant("base"),)
        var = {
            f: np.array(
                [base[f] if getattr(v, f) is None else getattr(v, f) for v in variants], np.float64
            )
            for f in _VARIANT_FIELDS
        }  # (V, J)
        pols = [p.policy() for p in self.policies]
        pol_rows = {
            f.name: np.array([float(np.asarray(getattr(p, f.name))) for p in pols])
            for f in dataclasses.fields(_policies.Policy)
        }
        omega = [
            float("nan") if p.name == "selfish" else float(np.asarray(q.w_prefill))
            for p, q in zip(self.policies, pols, strict=True)
        ]
        return {
            "topo": topo,
            "var": var,
            "pol": pol_rows,
            "omega": np.array(omega),
            "tau": pol_rows["tau"],
            "k_max": k_max,
        }

    def build(self, points: np.ndarray | None = None) -> Batch:
        """The instances ``points`` (indices in the flat order; default all of them).

        Instance ``i`` is ``np.unravel_index(i, shape)`` = (topology, variant, seed, load point,
        policy). Topologies with fewer workers than the largest are padded with copies of their
        first worker (valid, finite parameters) and ``worker_mask`` False. Work and memory are
        proportional to ``len(points)``, not to the size of the sweep.

        Returns:
          A :class:`Batch` ``(game, policy, labels, points)``; game fields are NumPy float64
          arrays ``(N, J)`` / ``(N, K)``, policy fields ``(N,)``.
        """
        n_all = self.num_points
        if points is None:
            points = np.arange(n_all, dtype=np.int64)
        points = np.asarray(points, np.int64)
        if points.ndim != 1 or (points.size and (points.min() < 0 or points.max() >= n_all)):
            raise InputError(f"points: must be a 1-D array of indices in [0, {n_all})")
        tb = self._tables()
        t, v, s, u, p = np.unravel_index(points, self.shape)
        util = self.load.at(u)
        topo, var = tb["topo"], tb["var"]
        j, k = len(self.classes), tb["k_max"]

        # Seed factors: computed once per distinct seed in the chunk.
        seeds, s_inv = np.unique(s, return_inverse=True)
        fac = [self.seeds.factors(int(x), j, k) for x in seeds]
        mix_f = np.stack([f[0] for f in fac])[s_inv]  # (N, J)
        kap_f = np.stack([f[1] for f in fac])[s_inv]  # (N, K)

        mix = var["mix"][v] * mix_f
        mix = mix / mix.sum(-1, keepdims=True)
        tokens = var["tokens"][v]
        kappa = topo["kappa"][t] * kap_f
        mask = topo["mask"][t]
        capacity = np.where(mask, kappa, 0.0).sum(-1)
        total = util * capacity / np.einsum("nj,nj->n", mix, tokens)

        def k_field(name):
            return kappa if name == "kappa" else topo[name][t]

        game = RoutingGame(
            demand=total[:, None] * mix,
            latency=Latency(**{f: k_field(f) for f in _LATENCY_FIELDS}),
            tokens=tokens,
            shareable=var["shareable"][v],
            residency=k_field("residency"),
            cache_size=k_field("cache_size"),
            prefill=PrefillTime(**{f: k_field(f"prefill.{f}") for f in _PREFILL_FIELDS}),
            worker_mask=mask,
        )
        policy = _policies.Policy(**{f: rows[p] for f, rows in tb["pol"].items()})
        names = np.array([x.name for x in self.topologies], dtype=object)
        labels = Labels(
            {
                "topology": names[t],
                "workers": np.array([x.workers for x in self.topologies], np.int64)[t],
                "utilisation": util,
                "demand_total": total,
                "policy": np.array(self.policy_labels(), dtype=object)[p],
                "omega": tb["omega"][p],
                "tau": tb["tau"][p],
                "variant": np.array(self.variant_names(), dtype=object)[v],
                "seed": s.astype(np.int64),
            }
        )
        return Batch(game, policy, labels, points)


#: The axes of a scenario, slowest first: a point's index is ``ravel_multi_index`` over these.
AXES = ("topology", "variant", "seed", "load", "policy")


_INT_KEYS = {"workers", "points", "starts", "max_iters", "optimum_starts"}


def _jsonable(v, key: str = ""):
    """JSON-ready copy: numbers as floats (ints only for counts, so ``8000`` ≡ ``8000.0``, and
    for integers a float cannot hold exactly, such as ``seeds.seed = 2**53 + 1``)."""
    if isinstance(v, dict):
        return {k: _jsonable(x, k) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x, key) for x in v]
    if _is_int(v) and (key in _INT_KEYS or abs(int(v)) > 2**53):
        return int(v)  # past 2**53 a float would round distinct integers (seeds) together
    if _is_number(v):
        v = float(v)
        return v if math.isfinite(v) else repr(v)  # "inf": JSON has no infinity
    return v


# --------------------------------------------------------------------------- value rules


def _is_number(v) -> bool:
    return isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


class _Check:
    """Raises :class:`InputError` as ``<source>: <key path> = <value>: <rule>``."""

    def __init__(self, source: str):
        self.source = source or "Scenario"

    def fail(self, path: str, rule: str, value: Any = dataclasses.MISSING):
        if isinstance(value, tuple):  # shown as written in TOML: [1.0, 2.0], not (1.0, 2.0)
            value = _thaw(value)
        shown = "" if value is dataclasses.MISSING else f" = {value!r}"
        raise InputError(f"{self.source}: {path}{shown}: {rule}")

    def number(self, path, v, rule="finite", *, allow_inf=False):
        if not _is_number(v):
            self.fail(path, f"must be a number, got {type(v).__name__}", v)
        given, v = v, float(v)  # messages show the value as written (-128, not -128.0)
        if math.isnan(v) or (math.isinf(v) and not (allow_inf and v > 0)):
            self.fail(path, "must be finite" + (" (or inf)" if allow_inf else ""), given)
        tests = {
            "finite": (lambda x: True, ""),
            "ge0": (lambda x: x >= 0, "must be >= 0"),
            "gt0": (lambda x: x > 0, "must be > 0"),
            "ge1": (
                lambda x: x >= 1,
                "must be >= 1 (the latency family is convex only for p >= 1)",
            ),
            "unit": (lambda x: 0 <= x <= 1, "must be in [0, 1]"),
            "open_unit": (lambda x: 0 < x < 1, "must be in (0, 1)"),
        }
        ok, text = tests[rule]
        if not ok(v):
            self.fail(path, text, given)

    def integer(self, path, v, minimum=1, maximum=None):
        if not _is_int(v):
            self.fail(path, f"must be an integer, got {type(v).__name__}", v)
        if v < minimum:
            self.fail(path, f"must be an integer >= {minimum}", v)
        if maximum is not None and v > maximum:
            self.fail(path, f"must be at most {_count(maximum)} (points per axis)", v)

    def size(self, path, n, what):
        """At most :data:`MAX_AXIS_POINTS` values on one axis."""
        if n > MAX_AXIS_POINTS:
            self.fail(path, f"{n} {what}: at most {_count(MAX_AXIS_POINTS)} (points per axis)")

    def string(self, path, v):
        if not isinstance(v, str) or not v.strip():
            self.fail(path, "must be a non-empty string", v)


def _count(n: int) -> str:
    """``10**8`` as ``10^8``; other counts as digits."""
    e = round(math.log10(n)) if n > 0 else 0
    return f"10^{e}" if 10**e == n else str(n)


_WORKER_RULES = dict(
    a="ge0", b="ge0", c="ge0", p="ge1", d="ge0", kappa="gt0", rho_max="open_unit",
    residency="gt0", cache_size="gt0",
)  # fmt: skip


def _policy_params(name: str) -> list[str]:
    """Keyword parameters of the policy constructor ``name``."""
    makers = {
        "selfish": _policies.selfish,
        "dynamo": _policies.dynamo,
        "load_balanced": _policies.load_balanced,
    }
    return list(inspect.signature(makers[name]).parameters)


def _named(ck, items, path: str, cls: type, what: str):
    """Checks a non-empty list of ``cls`` with unique ``name``s; yields ``(key path, item)``."""
    if not items:
        ck.fail(path, f"needs at least one {what}")
    seen = set()
    for i, item in enumerate(items):
        p = f"{path}[{i}]"
        if not isinstance(item, cls):
            ck.fail(p, f"must be a {cls.__name__}, got {type(item).__name__}")
        ck.string(f"{p}.name", item.name)
        if item.name in seen:
            ck.fail(f"{p}.name", f"duplicate {what.split()[-1]} name", item.name)
        seen.add(item.name)
        yield p, item


def _validate(s: Scenario) -> None:
    """Every value rule of a scenario, with TOML key paths in the messages."""
    ck = _Check(s.source)
    ck.string("name", s.name)
    if not isinstance(s.description, str):
        ck.fail("description", "must be a string", s.description)

    for p, c in _named(ck, s.classes, "workload.classes", RequestClass, "request class"):
        ck.number(f"{p}.tokens", c.tokens, "gt0")
        ck.number(f"{p}.shareable", c.shareable, "unit")
        ck.number(f"{p}.mix", c.mix, "gt0")

    w = s.worker
    if not isinstance(w, WorkerModel):
        ck.fail("worker", f"must be a WorkerModel, got {type(w).__name__}")
    for f, rule in _WORKER_RULES.items():
        ck.number(f"worker.{f}", getattr(w, f), rule, allow_inf=f == "cache_size")
    if not isinstance(w.prefill, PrefillTime):
        ck.fail("worker.prefill", f"must be a PrefillTime, got {type(w.prefill).__name__}")
    for f in _PREFILL_FIELDS:
        ck.number(f"worker.prefill.{f}", getattr(w.prefill, f), "ge0")

    for p, t in _named(ck, s.topologies, "topologies", Topology, "topology"):
        ck.integer(f"{p}.workers", t.workers, 1)
        if t.worker != () and not isinstance(t.worker, _FrozenMap):
            ck.fail(f"{p}.worker", "must be a table of worker fields", _thaw(t.worker))
        over = t.overrides()
        for f, v in over.items():
            if f == "prefill":
                if not isinstance(v, dict):
                    ck.fail(f"{p}.worker.prefill", "must be a table of a, b, c", v)
                for g, x in v.items():
                    if g not in _PREFILL_FIELDS:
                        ck.fail(f"{p}.worker.prefill.{g}", "unknown key (allowed: a, b, c)")
                    _per_worker(ck, f"{p}.worker.prefill.{g}", x, t.workers, "ge0", False)
            elif f in _WORKER_RULES:
                rule = _WORKER_RULES[f]
                _per_worker(ck, f"{p}.worker.{f}", v, t.workers, rule, f == "cache_size")
            else:
                allowed = ", ".join(_WORKER_FIELDS + ("prefill",))
                ck.fail(f"{p}.worker.{f}", f"unknown key (allowed: {allowed})")

    ld = s.load
    if not isinstance(ld, LoadAxis):
        ck.fail("load", f"must be a LoadAxis, got {type(ld).__name__}")
    if ld.values is not None:
        if len(ld.values) == 0:
            ck.fail("load.values", "needs at least one utilisation value")
        for i, v in enumerate(ld.values):
            ck.number(f"load.values[{i}]", v, "gt0")
    else:
        ck.number("load.min", ld.min, "gt0")
        ck.number("load.max", ld.max, "gt0")
        if ld.max < ld.min:
            ck.fail("load.max", f"must be >= load.min = {ld.min!r}", ld.max)
        ck.integer("load.points", ld.points, 1, MAX_AXIS_POINTS)

    if not s.policies:
        ck.fail("policies", "needs at least one policy")
    seen = set()
    for i, pol in enumerate(s.policies):
        p = f"policies[{i}]"
        if not isinstance(pol, PolicySpec):
            ck.fail(p, f"must be a PolicySpec, got {type(pol).__name__}")
        if not isinstance(pol.name, str) or pol.name not in _policies.NAMES:
            ck.fail(
                f"{p}.name",
                f"unknown policy: must be one of {', '.join(_policies.NAMES)}",
                pol.name,
            )
        if pol.label is not None:
            ck.string(f"{p}.label", pol.label)
        if pol.params != () and not isinstance(pol.params, _FrozenMap):
            ck.fail(f"{p}.params", "must be a table of parameters", _thaw(pol.params))
        allowed = _policy_params(pol.name)
        for k, v in pol.kwargs().items():
            if k not in allowed:
                names = ", ".join(allowed) or "none"
                ck.fail(f"{p}.params.{k}", f"unknown parameter of {pol.name} (allowed: {names})")
            if k == "credits":
                if not isinstance(v, list) or len(v) != 3:
                    ck.fail(f"{p}.params.credits", "must be a list of 3 numbers (G1, G2, G3)", v)
                for j, x in enumerate(v):  # fractions of a hit, as dynamo() requires
                    ck.number(f"{p}.params.credits[{j}]", x, "unit")
            else:
                ck.number(f"{p}.params.{k}", v, "ge0")
        label = pol.display()
        if label in seen:
            ck.fail(f"{p}.label", "duplicate policy label (give each policy its own label)", label)
        seen.add(label)

    j = len(s.classes)
    rules = {"mix": "gt0", "tokens": "gt0", "shareable": "unit"}
    for p, var in (
        _named(ck, s.variants, "variants", WorkloadVariant, "workload variant")
        if (s.variants)
        else ()
    ):
        for f in _VARIANT_FIELDS:
            vals = getattr(var, f)
            if vals is None:
                continue
            if not isinstance(vals, tuple) or len(vals) != j:
                ck.fail(f"{p}.{f}", f"must be a list of one number per request class ({j})", vals)
            for i, x in enumerate(vals):
                ck.number(f"{p}.{f}[{i}]", x, rules[f])
    sd = s.seeds
    if not isinstance(sd, SeedAxis):
        ck.fail("seeds", f"must be a SeedAxis, got {type(sd).__name__}")
    ck.integer("seeds.count", sd.count, 1, MAX_AXIS_POINTS)
    ck.number("seeds.jitter", sd.jitter, "ge0")
    ck.integer("seeds.seed", sd.seed, 0)

    sv = s.solver
    if not isinstance(sv, SolverSettings):
        ck.fail("solver", f"must be a SolverSettings, got {type(sv).__name__}")
    ck.integer("solver.starts", sv.starts, 1)
    ck.integer("solver.optimum_starts", sv.optimum_starts, 1)
    if sv.tol is not None:
        ck.number("solver.tol", sv.tol, "gt0")
    if sv.max_iters is not None:
        ck.integer("solver.max_iters", sv.max_iters, 1)
    if sv.dtype not in DTYPES:
        ck.fail("solver.dtype", f"must be one of {', '.join(DTYPES)}", sv.dtype)
    if sv.warm_start not in WARM_STARTS:
        ck.fail("solver.warm_start", 'must be "load" or left out', sv.warm_start)

    # Counted, never expanded: a sweep's points are built chunk by chunk.
    if ld.values is not None:
        ck.size("load.values", len(ld.values), "values")
    ck.size("topologies", len(s.topologies), "topologies")
    ck.size("variants", len(s.variants), "variants")
    ck.size("policies", len(s.policies), "policies")
    total = math.prod(s.shape)
    if total > MAX_POINTS:
        dims = " x ".join(map(str, s.shape))
        ck.fail(
            "scenario",
            f"{dims} (topologies x variants x seeds x loads x policies) = {total} points: "
            f"must be at most {_count(MAX_POINTS)} in all",
        )


def _per_worker(ck: _Check, path, v, n, rule, allow_inf):
    if isinstance(v, list | tuple):
        if len(v) != n:
            ck.fail(path, f"has {len(v)} values: must be one number or one per worker ({n})")
        for i, x in enumerate(v):
            ck.number(f"{path}[{i}]", x, rule, allow_inf=allow_inf)
    else:
        ck.number(path, v, rule, allow_inf=allow_inf)


# --------------------------------------------------------------------------- parsing


_TOP = {
    "name", "description", "workload", "worker", "topologies", "load", "policies", "solver",
    "variants", "seeds", "policy_grid",
}  # fmt: skip
_TOP_REQUIRED = ("workload", "worker")


def _table(ck: _Check, path: str, v, allowed=None, required=()) -> dict:
    """``v`` as a dict; unknown keys (when ``allowed`` is given) and missing keys raise."""
    if not isinstance(v, Mapping):
        ck.fail(path or "scenario", f"must be a table, got {type(v).__name__}")
    pre = f"{path}." if path else ""
    for k in v:
        if allowed is not None and k not in allowed:
            ck.fail(f"{pre}{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for k in required:
        if k not in v:
            ck.fail(path or "scenario", f"missing required key {k!r}")
    return dict(v)


def _array(ck: _Check, path: str, v) -> list:
    if not isinstance(v, list | tuple):
        ck.fail(path, f"must be an array of tables, got {type(v).__name__}")
    return list(v)


def _plain(v):
    """NumPy arrays (a Python scenario's ``np.linspace`` axis) as lists, recursively."""
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _parse(data: Mapping, source: str) -> Scenario:
    ck = _Check(source)
    top = _table(ck, "", _plain(data), _TOP, _TOP_REQUIRED)
    stem = os.path.splitext(os.path.basename(source))[0] if source else ""
    name = top.get("name", stem)

    wl = _table(ck, "workload", top["workload"], {"classes"}, ("classes",))
    classes = []
    for i, c in enumerate(_array(ck, "workload.classes", wl["classes"])):
        p = f"workload.classes[{i}]"
        c = _table(ck, p, c, {"name", "tokens", "shareable", "mix"}, ("name", "tokens"))
        classes.append(RequestClass(**c))

    wk = _table(ck, "worker", top["worker"], set(_WORKER_FIELDS) | {"prefill"}, ("kappa",))
    pre = _table(ck, "worker.prefill", wk.pop("prefill", {}), set(_PREFILL_FIELDS))
    worker = WorkerModel(**wk, prefill=PrefillTime(**pre))

    topologies = []
    for i, t in enumerate(_array(ck, "topologies", top.get("topologies", DEFAULT_TOPOLOGIES))):
        if isinstance(t, Topology):
            topologies.append(t)
            continue
        p = f"topologies[{i}]"
        t = _table(ck, p, t, {"name", "workers", "worker"}, ("name", "workers"))
        over = _table(ck, f"{p}.worker", t.get("worker", {}), set(_WORKER_FIELDS) | {"prefill"})
        if "prefill" in over:
            _table(ck, f"{p}.worker.prefill", over["prefill"], set(_PREFILL_FIELDS))
        topologies.append(Topology(name=t["name"], workers=t["workers"], worker=over))

    ld = _table(ck, "load", top.get("load", {}), {"min", "max", "points", "values"})
    if "values" in ld:
        if set(ld) & {"min", "max", "points"}:
            ck.fail("load", "give either values or min/max/points, not both")
        if not isinstance(ld["values"], list | tuple):
            ck.fail("load.values", "must be an array of numbers", ld["values"])
    load = LoadAxis(**ld)

    pols = []
    default_pols = () if "policy_grid" in top else DEFAULT_POLICIES
    for i, p_ in enumerate(_array(ck, "policies", top.get("policies", default_pols))):
        if isinstance(p_, PolicySpec):
            pols.append(p_)
            continue
        p = f"policies[{i}]"
        p_ = _table(ck, p, p_, {"name", "params", "label"}, ("name",))
        # Parameter names are checked per policy in _validate, which knows the constructor.
        params = _table(ck, f"{p}.params", p_.get("params", {}))
        pols.append(PolicySpec(name=p_["name"], params=params, label=p_.get("label")))

    grid = _policy_grid(ck, top.get("policy_grid", []))
    labels = {}
    for i, pol in enumerate(pols):
        label = pol.display()
        if isinstance(label, str):  # a bad listed label is named by _validate
            labels.setdefault(label, f"policies[{i}]")
    for p, pol in grid:
        label = pol.display()
        if label in labels:
            ck.fail(
                p,
                f"duplicate policy label (a value listed twice, or the same policy as "
                f"{labels[label]})",
                label,
            )
        labels[label] = p
    pols += [pol for _, pol in grid]
    if not pols:
        ck.fail("policies", "needs at least one policy (or a policy_grid)")

    variants = []
    for i, v in enumerate(_array(ck, "variants", top.get("variants", []))):
        p = f"variants[{i}]"
        v = _table(ck, p, v, {"name", *_VARIANT_FIELDS}, ("name",))
        for f in _VARIANT_FIELDS:
            if f in v and not isinstance(v[f], list | tuple):
                ck.fail(f"{p}.{f}", "must be an array of numbers, one per request class", v[f])
        variants.append(WorkloadVariant(**v))
    seeds = SeedAxis(**_table(ck, "seeds", top.get("seeds", {}), {"count", "jitter", "seed"}))

    sv = _table(
        ck, "solver", top.get("solver", {}), {f.name for f in dataclasses.fields(SolverSettings)}
    )
    return Scenario(
        name=name,
        description=top.get("description", ""),
        classes=tuple(classes),
        worker=worker,
        topologies=tuple(topologies),
        load=load,
        policies=tuple(pols),
        solver=SolverSettings(**sv),
        source=source,
        variants=tuple(variants),
        seeds=seeds,
    )


def _policy_grid(ck: _Check, grid) -> list[PolicySpec]:
    """``[[policy_grid]]`` tables → one policy per combination of the listed parameter values.

    ``{name = "dynamo", omega = [0.1, 1.0], tau = [0.0, 0.8]}`` gives four Dynamo policies,
    labelled ``dynamo(omega=0.1, tau=0)`` and so on (the last parameter varies fastest).
    """
    out = []
    for i, g in enumerate(_array(ck, "policy_grid", grid)):
        p = f"policy_grid[{i}]"
        g = _table(ck, p, g, None, ("name",))
        name = g.pop("name")
        # Checked here, with the grid's key paths (the expanded policies have no place in the
        # file that _validate could name).
        if not isinstance(name, str) or name not in _policies.NAMES:
            ck.fail(
                f"{p}.name", f"unknown policy: must be one of {', '.join(_policies.NAMES)}", name
            )
        allowed = _policy_params(name)
        lists = {}
        for k, v in g.items():
            if k not in allowed:
                names = ", ".join(allowed) or "none"
                ck.fail(f"{p}.{k}", f"unknown parameter of {name} (allowed: {names})")
            listed = isinstance(v, list | tuple) and not (
                k == "credits" and v and not isinstance(v[0], list | tuple)
            )  # credits = [g1, g2, g3] is one value; [[...], [...]] lists several
            vals = list(v) if listed else [v]
            if not vals:
                ck.fail(f"{p}.{k}", "must list at least one value", v)
            for j, x in enumerate(vals):
                q = f"{p}.{k}[{j}]" if listed else f"{p}.{k}"
                if k == "credits":
                    if not isinstance(x, list | tuple) or len(x) != 3:
                        ck.fail(q, "must be a list of 3 numbers (G1, G2, G3)", x)
                    for m, c in enumerate(x):
                        ck.number(f"{q}[{m}]", c, "unit")
                else:
                    ck.number(q, x, "ge0")
            lists[k] = vals
        combos = math.prod(len(v) for v in lists.values())
        if len(out) + combos > MAX_AXIS_POINTS:
            ck.fail(p, f"{combos} combinations: at most {_count(MAX_AXIS_POINTS)} policies in all")
        keys = list(lists)
        for combo in itertools.product(*(lists[k] for k in keys)):
            spec = PolicySpec(name=name, params=dict(zip(keys, combo, strict=True)))
            out.append((p, spec))
    return out


def load_scenario(path: str | os.PathLike) -> Scenario:
    """Reads a scenario file: TOML, or Python (``.py``).

    A Python scenario is a script that sets ``SCENARIO`` to a :class:`Scenario` or to a dict
    laid out like a TOML file (checked by :meth:`Scenario.from_dict`); it is run with
    :func:`runpy.run_path`, so it can compute its axes (``poa-jax sweep my_sweep.py``).

    Raises:
      InputError: missing file, a file that is not UTF-8 text, invalid TOML, or a key or value
        breaking a rule (the message names the file, the key path and the rule), including the
        size bounds :data:`MAX_AXIS_POINTS` and :data:`MAX_POINTS`; a Python scenario that
        raises or sets no ``SCENARIO``.
    """
    path = os.fspath(path)
    if path.endswith(".py"):
        return _load_python_scenario(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such scenario file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a scenario file") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    return Scenario.from_dict(data, source=path)


def _load_python_scenario(path: str) -> Scenario:
    import runpy

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such scenario file")
    try:
        names = runpy.run_path(path, run_name="__poa_jax_scenario__")
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    except Exception as e:  # the user's script: its error, named by the file
        raise InputError(f"{path}: running it raised {type(e).__name__}: {e}") from None
    value = names.get("SCENARIO")
    if isinstance(value, Scenario):
        return dataclasses.replace(value, source=path)
    if isinstance(value, Mapping):
        return Scenario.from_dict(value, source=path)
    got = "nothing" if value is None else type(value).__name__
    raise InputError(
        f"{path}: SCENARIO must be a poa_jax.scenario.Scenario or a dict laid out like a "
        f"scenario TOML file, got {got}"
    )


def default_scenario() -> Scenario:
    """The built-in scenario (``poa_jax/data/default.toml``; illustrative numbers)."""
    text = importlib.resources.files("poa_jax.data").joinpath("default.toml").read_text("utf-8")
    return Scenario.from_dict(tomllib.loads(text), source="default.toml")
