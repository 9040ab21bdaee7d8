r"""Cluster descriptions → graph games whose paths are (prefill worker, KV link, decode worker).

In a disaggregated cluster a request is prefilled on a prefill worker ``P``, its KV cache crosses a
link to a decode worker ``D`` and is decoded there (DESIGN §2.2, "resource graph"). The KV link is
the NVLink fabric of the node when ``node(P) = node(D)`` and the InfiniBand link
``node(P) → node(D)`` otherwise. Links are shared: every (P, D) pair with the same two nodes uses
the same KV link, so its congestion couples the routing of different worker pairs.

Graph (a DAG; :func:`cluster_game` builds it, links in this order)::

    source ──prefill:P──▶ [P] ──port──▶ [out:A] ──kv──▶ [in:B] ──port──▶ [D] ──decode:D──▶ sink

with one ``out:A`` node per cluster node ``A`` hosting a prefill worker, one ``in:B`` node per
cluster node ``B`` hosting a decode worker and one KV link per ordered pair ``(A, B)``. Every
source→sink path is therefore exactly *prefill link, port, KV link, port, decode link*; no path
skips a stage or uses two KV links. Ports have zero latency. Flow on every link is a request rate
(requests/s).

Latencies (all of the family of :mod:`poa_jax.latency`, load ``x`` in requests/s):

* **Worker** (prefill or decode) with base service time ``s`` (seconds at zero load) and capacity
  ``μ`` (requests/s): the service time plus the M/M/1 waiting time in queue,

      ℓ_w(x) = s + (1/μ)·x/(μ − x)          →  a = s, d = 1/μ, κ = μ.

  Derivation: the M/M/1 sojourn time splits exactly as ``1/(μ − x) = 1/μ + (1/μ)·x/(μ − x)``
  (service + wait), so this is M/M/1 with the service term ``1/μ`` replaced by ``s``; a batching
  engine's single-request latency ``s`` is not its inverse throughput ``1/μ``. With ``s = 1/μ``
  it *is* :func:`poa_jax.latency.mm1` (``a = d = 1/μ, κ = μ``; not ``a = 0``).
* **KV link** with bandwidth ``β`` (bytes/s), ``k`` KV bytes per request and fixed latency ``L``:
  per-request transfer time ``τ = k/β``, capacity ``κ = β/k = 1/τ`` requests/s, and the mean
  sojourn of a processor-sharing server (M/G/1-PS: a link shares its bandwidth among the transfers
  in flight; the mean is insensitive to the size distribution) ``τ/(1 − x/κ)``, plus ``L``:

      ℓ_kv(x) = L + τ + τ·x/(κ − x) = L + 1/(κ − x)     →  a = L + τ, d = τ, κ = β/k.

* **Port**: ``ℓ ≡ 0``.

Above ``ρ_max·κ`` (``ρ_max = 0.99``) every latency continues linearly (:class:`Latency`), so an
overloaded point is finite.

Presets (:func:`paper_340b_1p2d`, :func:`paper_70b_1p2d`, :func:`paper_70b_1p5d`) reproduce the
paper's three B200 topologies (arXiv 2606.17081) with capacities estimated from public hardware
and model numbers by :func:`prefill_worker` and :func:`decode_worker`; every number is either
public (cited) or marked *assumed*, and all of them are keyword arguments or dataclass fields that
``dataclasses.replace`` overrides.

Example:
  >>> import poa_jax.topology as topo
  >>> cluster = topo.paper_70b_1p2d()
  >>> game = topo.cluster_game(cluster, demand=[100.0, 200.0, 300.0])
  >>> game.demand.shape, game.latency.a.shape
  ((3, 1), (3, 8))
  >>> topo.path_triples(cluster)
  [('P0', 'kv:nvlink:n0', 'D0'), ('P0', 'kv:ib:n0->n1', 'D1')]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from jax.typing import ArrayLike

from poa_jax.errors import InputError
from poa_jax.graph import GraphGame
from poa_jax.latency import Latency
from poa_jax.validation import as_array, check, integer

__all__ = [
    "Worker",
    "Cluster",
    "ModelSpec",
    "GPUSpec",
    "LLAMA_3_1_70B",
    "NEMOTRON_4_340B",
    "B200",
    "prefill_worker",
    "decode_worker",
    "cluster_game",
    "paths",
    "path_triples",
    "kv_link_traffic",
    "paper_340b_1p2d",
    "paper_70b_1p2d",
    "paper_70b_1p5d",
]

ROLES = ("prefill", "decode")
SOURCE, SINK = 0, 1  # graph node indices; both are centroids (first_thru_node = 2)


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _number(field: str, value, rule: str) -> float:
    """``value`` as a float, checked against a :mod:`poa_jax.validation` rule."""
    arr = as_array(field, value)
    if arr.ndim != 0:
        raise InputError(f"{field} = {value!r}: must be a scalar number")
    check(field, arr, rule)
    return float(arr)


# ---------------------------------------------------------------------------------------------
# Cluster description
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Worker:
    """One prefill or decode engine (a tensor-parallel group of ``tp`` GPUs on one node).

    Attributes:
      name: label, unique within a cluster (used in link names, e.g. ``"prefill:P0"``).
      role: ``"prefill"`` or ``"decode"``.
      node: 0-based index of the node hosting it.
      tp: tensor-parallel degree = GPUs it occupies on its node (≥ 1).
      capacity: ``μ``, requests/s it can serve (finite, > 0); the singular point of its latency.
      service_time: ``s``, seconds per request at zero load (finite, ≥ 0).

    Its latency is ``ℓ(x) = s + (1/μ)·x/(μ − x)`` (module docstring).
    """

    name: str
    role: Literal["prefill", "decode"]
    node: int
    tp: int
    capacity: float
    service_time: float

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"Worker.name = {self.name!r}: must be a non-empty string")
        if not isinstance(self.role, str) or self.role not in ROLES:
            raise InputError(f"Worker.role = {self.role!r}: must be 'prefill' or 'decode'")
        if not _is_int(self.node) or self.node < 0:
            raise InputError(f"Worker.node = {self.node!r}: must be an integer >= 0")
        if not _is_int(self.tp) or self.tp < 1:
            raise InputError(f"Worker.tp = {self.tp!r}: must be an integer >= 1")
        object.__setattr__(
            self, "capacity", _number("Worker.capacity", self.capacity, "finite_gt0")
        )
        object.__setattr__(
            self, "service_time", _number("Worker.service_time", self.service_time, "finite_ge0")
        )
        if not math.isfinite(1.0 / self.capacity):
            raise InputError(
                f"Worker.capacity = {self.capacity!r}: too small (1/capacity, the latency's "
                "queueing coefficient, overflows)"
            )


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Nodes of ``gpus_per_node`` GPUs, the workers placed on them and the KV-transfer fabric.

    Attributes:
      nodes: number of nodes (≥ 1); nodes are ``0..nodes−1``.
      gpus_per_node: GPUs per node (≥ 1); the ``tp`` of the workers on a node sum to at most this.
      workers: the :class:`Worker` s (a list is converted to a tuple); at least one of each role,
        names unique.
      nvlink_bandwidth: ``β_nv``, bytes/s of KV traffic one node's NVLink fabric carries from its
        prefill to its decode workers (finite, > 0).
      ib_bandwidth: ``β_ib``, bytes/s of KV traffic InfiniBand carries from one node to another,
        per ordered node pair (finite, > 0). Pairs are independent links: egress sharing of a
        node's NICs across destinations is not modelled.
      kv_bytes_per_request: ``k``, KV-cache bytes one request moves from prefill to decode
        (finite, > 0).
      nvlink_latency, ib_latency: ``L``, fixed seconds per transfer on each kind of link (≥ 0).
      name: a label.
    """

    nodes: int
    gpus_per_node: int
    workers: tuple[Worker, ...]
    nvlink_bandwidth: float
    ib_bandwidth: float
    kv_bytes_per_request: float
    nvlink_latency: float = 0.0
    ib_latency: float = 0.0
    name: str = "cluster"

    def __post_init__(self):
        if not _is_int(self.nodes) or self.nodes < 1:
            raise InputError(f"Cluster.nodes = {self.nodes!r}: must be an integer >= 1")
        if not _is_int(self.gpus_per_node) or self.gpus_per_node < 1:
            raise InputError(
                f"Cluster.gpus_per_node = {self.gpus_per_node!r}: must be an integer >= 1"
            )
        try:
            workers = tuple(self.workers)
        except TypeError:
            raise InputError(
                f"Cluster.workers = {self.workers!r}: must be a sequence of Worker"
            ) from None
        object.__setattr__(self, "workers", workers)
        for i, w in enumerate(workers):
            if not isinstance(w, Worker):
                raise InputError(f"Cluster.workers[{i}] = {w!r}: must be a Worker")
            if w.node >= self.nodes:
                raise InputError(
                    f"Cluster.workers[{i}].node = {w.node}: must be < Cluster.nodes = "
                    f"{self.nodes} (worker {w.name!r} is on a node that does not exist)"
                )
        names = [w.name for w in workers]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise InputError(f"Cluster.workers[{i}].name = {n!r}: must be unique")
        for role in ROLES:
            if not any(w.role == role for w in workers):
                raise InputError(f"Cluster.workers: must contain at least one {role} worker")
        used: dict[int, int] = {}  # only the occupied nodes: ``nodes`` may be huge
        for w in workers:
            used[w.node] = used.get(w.node, 0) + w.tp
        for node, g in sorted(used.items()):
            if g > self.gpus_per_node:
                raise InputError(
                    f"Cluster.workers: node {node} holds {g} GPUs (sum of tp of its workers): "
                    f"must be <= Cluster.gpus_per_node = {self.gpus_per_node}"
                )
        for field, rule in (
            ("nvlink_bandwidth", "finite_gt0"),
            ("ib_bandwidth", "finite_gt0"),
            ("kv_bytes_per_request", "finite_gt0"),
            ("nvlink_latency", "finite_ge0"),
            ("ib_latency", "finite_ge0"),
        ):
            value = _number(f"Cluster.{field}", getattr(self, field), rule)
            object.__setattr__(self, field, value)
        for field in ("nvlink_bandwidth", "ib_bandwidth"):
            # τ = k/β overflows for absurd ratios: the link's latency would be inf (and κ = 0).
            tau = self.kv_bytes_per_request / getattr(self, field)
            if not math.isfinite(tau):
                raise InputError(
                    f"Cluster.kv_bytes_per_request / Cluster.{field} = {tau!r}: the transfer "
                    "time per request must be finite"
                )

    @property
    def prefill_workers(self) -> tuple[Worker, ...]:
        """Prefill workers in ``workers`` order."""
        return tuple(w for w in self.workers if w.role == "prefill")

    @property
    def decode_workers(self) -> tuple[Worker, ...]:
        """Decode workers in ``workers`` order."""
        return tuple(w for w in self.workers if w.role == "decode")


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The graph of a cluster, host side: links in order, and the paths as link tuples."""

    tail: np.ndarray  # (E,) int
    head: np.ndarray  # (E,) int
    names: tuple[str, ...]  # (E,)
    a: np.ndarray  # (E,) latency fields
    d: np.ndarray
    kappa: np.ndarray
    num_nodes: int
    kv_links: tuple[int, ...]  # link indices of the KV links
    paths: tuple[tuple[int, ...], ...]
    triples: tuple[tuple[str, str, str], ...]


def _kv_name(a: int, b: int) -> str:
    return f"kv:nvlink:n{a}" if a == b else f"kv:ib:n{a}->n{b}"


def _layout(cluster: Cluster) -> _Layout:
    pre, dec = cluster.prefill_workers, cluster.decode_workers
    src_nodes = sorted({w.node for w in pre})  # cluster nodes with a prefill worker
    dst_nodes = sorted({w.node for w in dec})  # ... with a decode worker
    # Graph nodes: 0 source, 1 sink, then P_i, out:A, in:B, D_j.
    p_node = {w.name: 2 + i for i, w in enumerate(pre)}
    out_node = {a: 2 + len(pre) + i for i, a in enumerate(src_nodes)}
    in_node = {b: 2 + len(pre) + len(src_nodes) + i for i, b in enumerate(dst_nodes)}
    first_d = 2 + len(pre) + len(src_nodes) + len(dst_nodes)
    d_node = {w.name: first_d + i for i, w in enumerate(dec)}
    num_nodes = first_d + len(dec)

    tail, head, names, a, d, kappa = [], [], [], [], [], []

    def link(t, h, name, aa=0.0, dd=0.0, kk=math.inf):
        tail.append(t)
        head.append(h)
        names.append(name)
        a.append(aa)
        d.append(dd)
        kappa.append(kk)
        return len(tail) - 1

    def worker_link(t, h, w):
        # ℓ = s + (1/μ)·x/(μ − x): service time plus M/M/1 waiting time.
        return link(t, h, f"{w.role}:{w.name}", w.service_time, 1.0 / w.capacity, w.capacity)

    prefill = {w.name: worker_link(SOURCE, p_node[w.name], w) for w in pre}
    port_out = {
        w.name: link(p_node[w.name], out_node[w.node], f"port:{w.name}->out:n{w.node}") for w in pre
    }
    kv = {}
    for sa in src_nodes:
        for sb in dst_nodes:
            same = sa == sb
            bw = cluster.nvlink_bandwidth if same else cluster.ib_bandwidth
            lat = cluster.nvlink_latency if same else cluster.ib_latency
            tau = cluster.kv_bytes_per_request / bw
            # ℓ = L + τ + τ·x/(κ − x) = L + 1/(κ − x): processor-sharing link, κ = β/k = 1/τ
            # (τ may underflow to 0 for a tiny k/β: an uncongested link, κ = inf).
            kappa_kv = 1 / tau if tau > 0 else math.inf
            kv[sa, sb] = link(out_node[sa], in_node[sb], _kv_name(sa, sb), lat + tau, tau, kappa_kv)
    port_in = {
        w.name: link(in_node[w.node], d_node[w.name], f"port:in:n{w.node}->{w.name}") for w in dec
    }
    decode = {w.name: worker_link(d_node[w.name], SINK, w) for w in dec}

    path_list, triples = [], []
    for p in pre:
        for q in dec:
            e_kv = kv[p.node, q.node]
            path_list.append(
                (prefill[p.name], port_out[p.name], e_kv, port_in[q.name], decode[q.name])
            )
            triples.append((p.name, names[e_kv], q.name))
    return _Layout(
        tail=np.asarray(tail, dtype=np.int32),
        head=np.asarray(head, dtype=np.int32),
        names=tuple(names),
        a=np.asarray(a, dtype=np.float64),
        d=np.asarray(d, dtype=np.float64),
        kappa=np.asarray(kappa, dtype=np.float64),
        num_nodes=num_nodes,
        kv_links=tuple(kv.values()),
        paths=tuple(path_list),
        triples=tuple(triples),
    )


def _check_cluster(cluster) -> Cluster:
    if not isinstance(cluster, Cluster):
        raise InputError(f"cluster = {cluster!r}: must be a poa_jax.topology.Cluster")
    return cluster


def cluster_game(cluster: Cluster, demand: ArrayLike) -> GraphGame:
    r"""The routing game of a cluster: one OD pair (source → sink) carrying the request rate.

    Links, in order: ``prefill:<P>`` per prefill worker, ``port:<P>->out:n<A>``, the KV links
    ``kv:nvlink:n<A>`` / ``kv:ib:n<A>->n<B>`` (one per ordered pair of a node with a prefill worker
    and a node with a decode worker), ``port:in:n<B>-><D>``, ``decode:<D>`` per decode worker.
    Latencies (module docstring): workers ``s + (1/μ)·x/(μ − x)``; KV links
    ``L + τ + τ·x/(κ − x)`` with ``τ = k/β``, ``κ = β/k``; ports ``0``.

    Args:
      cluster: the :class:`Cluster`.
      demand: request rate (requests/s), finite and ≥ 0; a scalar or an array of batch shape
        ``(...)``.

    Returns:
      A :class:`~poa_jax.graph.GraphGame` with ``demand (..., 1)``, latency fields ``(..., E)``
      (the same for every batch entry; read-only broadcast views of ``(E,)`` data), origin
      node 0 (source), destination node 1 (sink), ``first_thru_node = 2`` and link ``names``.
    """
    lay = _layout(_check_cluster(cluster))
    # A copy: as_array returns a float64 input itself, and the game must not change when the
    # caller refills that array (e.g. one buffer reused to build a list of games).
    dem = np.array(as_array("demand", demand))
    check("demand", dem, "finite_ge0")
    batch = dem.shape
    e = len(lay.names)

    def field(v):
        # A read-only broadcast view: (..., E) without copying E numbers per batch entry.
        return np.broadcast_to(np.asarray(v, dtype=np.float64), (*batch, e))

    latency = Latency(
        a=field(lay.a),
        b=field(0.0),
        c=field(0.0),
        p=field(1.0),
        d=field(lay.d),
        kappa=field(lay.kappa),
        rho_max=field(0.99),
    )
    return GraphGame(
        tail=lay.tail,
        head=lay.head,
        latency=latency,
        origins=np.asarray([SOURCE], dtype=np.int32),
        destinations=np.asarray([SINK], dtype=np.int32),
        demand=dem[..., None],
        num_nodes=lay.num_nodes,
        first_thru_node=2,
        names=lay.names,
    )


def paths(cluster: Cluster) -> list[tuple[int, ...]]:
    """Every source→sink path of :func:`cluster_game` as a tuple of link indices.

    Order: prefill-major — path ``i·n_D + j`` runs through the ``i``-th prefill and ``j``-th
    decode worker (in ``cluster.workers`` order). Each tuple is ``(prefill, port, kv, port,
    decode)``.
    """
    return list(_layout(_check_cluster(cluster)).paths)


def path_triples(cluster: Cluster) -> list[tuple[str, str, str]]:
    """``(prefill worker name, KV link name, decode worker name)`` per path, in :func:`paths`
    order, e.g. ``("P0", "kv:ib:n0->n1", "D1")``."""
    return list(_layout(_check_cluster(cluster)).triples)


def kv_link_traffic(cluster: Cluster, path_flows: ArrayLike) -> dict[str, float | np.ndarray]:
    """KV bytes/s on each KV link: ``k · Σ_{π ∋ e} x_π``.

    Args:
      cluster: the :class:`Cluster`.
      path_flows: ``(..., n_paths)`` requests/s per path, in :func:`paths` order.

    Returns:
      ``{kv link name: bytes/s}`` for every KV link (zero-traffic ones included), a ``float`` for
      1-D ``path_flows`` and an array ``(...)`` otherwise.
    """
    lay = _layout(_check_cluster(cluster))
    x = as_array("path_flows", path_flows)
    n = len(lay.paths)
    if x.ndim == 0 or x.shape[-1] != n:
        raise InputError(
            f"path_flows: shape {x.shape} must end in the number of paths ({n}) of the cluster"
        )
    check("path_flows", x, "finite_ge0")
    out: dict[str, float | np.ndarray] = {}
    for e in lay.kv_links:
        through = [i for i, p in enumerate(lay.paths) if e in p]
        bytes_s = cluster.kv_bytes_per_request * x[..., through].sum(axis=-1)
        out[lay.names[e]] = float(bytes_s) if bytes_s.ndim == 0 else bytes_s
    return out


# ---------------------------------------------------------------------------------------------
# Capacity estimates from public numbers
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer, as far as serving cost goes.

    Attributes:
      name: label.
      parameters: parameter count ``N`` (FLOPs per token ≈ ``2N``; weight bytes ``N·w``).
      layers, kv_heads, head_dim: attention shape; KV bytes per token
        ``layers · kv_heads · head_dim · 2 (K and V) · kv_bytes_per_value``.
      weight_bytes_per_param: ``w`` (1 for FP8).
      kv_bytes_per_value: 1 for an FP8 KV cache.
    """

    name: str
    parameters: float
    layers: int
    kv_heads: int
    head_dim: int
    weight_bytes_per_param: float = 1.0
    kv_bytes_per_value: float = 1.0

    @property
    def kv_bytes_per_token(self) -> float:
        return float(self.layers * self.kv_heads * self.head_dim * 2 * self.kv_bytes_per_value)

    @property
    def weight_bytes(self) -> float:
        return float(self.parameters * self.weight_bytes_per_param)


@dataclasses.dataclass(frozen=True)
class GPUSpec:
    """One GPU and its node.

    Attributes:
      name: label.
      flops: dense tensor FLOP/s at the serving precision.
      hbm_bandwidth: bytes/s of HBM.
      hbm_bytes: HBM capacity in bytes.
      nvlink_bandwidth: NVLink bytes/s per GPU *per direction*.
      nic_bandwidth: bytes/s of the one InfiniBand NIC per GPU (rail-optimised fabric).
      gpus_per_node: GPUs per node.
    """

    name: str
    flops: float
    hbm_bandwidth: float
    hbm_bytes: float
    nvlink_bandwidth: float
    nic_bandwidth: float
    gpus_per_node: int


#: Llama-3.1-70B (Hugging Face ``meta-llama/Llama-3.1-70B`` ``config.json``): 80 layers, 64
#: attention heads of hidden 8192 ⇒ head_dim 128, 8 KV heads (GQA), ``intermediate_size 28672``,
#: vocabulary 128 256, untied embeddings ⇒ 70 553 706 496 parameters (80 × (2·8192² +
#: 2·8192·1024 + 3·8192·28672 + 2·8192) + 2·128256·8192 + 8192; the Hub's safetensors total).
#: FP8 weights and KV cache ⇒ 163 840 KV bytes per token.
LLAMA_3_1_70B = ModelSpec("Llama-3.1-70B", 70_553_706_496, layers=80, kv_heads=8, head_dim=128)

#: Nemotron-4-340B (NeMo ``model_config.yaml``: ``num_layers 96, hidden_size 18432,
#: num_attention_heads 96`` ⇒ head_dim 192, ``num_query_groups 8``, ``ffn_hidden_size 73728``,
#: vocabulary 256 000, untied embeddings). Parameters ≈ 341e9, counted from that shape
#: (96 × (18432·(18432 + 2·8·192) + 18432² + 2·18432·73728) + 2·256000·18432). FP8 weights
#: and KV cache ⇒ 294 912 KV bytes per token.
NEMOTRON_4_340B = ModelSpec("Nemotron-4-340B", 341e9, layers=96, kv_heads=8, head_dim=192)

#: NVIDIA B200 (HGX/DGX B200 data sheets): FP8 dense 4.5 PFLOP/s per GPU (the data sheet's 9 PF
#: is with 2:4 sparsity), HBM3e 8 TB/s, 192 GB per GPU (the CUDA-visible capacity: nvidia-smi
#: reports 183 359 MiB = 192.3e9 bytes, which the DGX B200 data sheet rounds to "180 GB");
#: NVLink 5 1.8 TB/s per GPU bidirectional ⇒ 0.9 TB/s per direction; one ConnectX-7 NIC at
#: 400 Gb/s = 50 GB/s per GPU (8 per node); 8 GPUs per node.
B200 = GPUSpec(
    name="B200",
    flops=4.5e15,
    hbm_bandwidth=8e12,
    hbm_bytes=192e9,
    nvlink_bandwidth=0.9e12,
    nic_bandwidth=50e9,
    gpus_per_node=8,
)


def _share(field: str, value) -> float:
    """A utilisation in ``(0, 1]`` (``mfu``, ``mbu``)."""
    v = _number(field, value, "finite_gt0")
    if v > 1:
        raise InputError(f"{field} = {value!r}: must be in (0, 1]")
    return v


def _check_specs(model, gpu) -> None:
    """The :class:`ModelSpec` and :class:`GPUSpec` numbers the roofline estimates divide by."""
    if not isinstance(model, ModelSpec):
        raise InputError(f"model = {model!r}: must be a poa_jax.topology.ModelSpec")
    if not isinstance(gpu, GPUSpec):
        raise InputError(f"gpu = {gpu!r}: must be a poa_jax.topology.GPUSpec")
    for f in ("parameters", "weight_bytes_per_param", "kv_bytes_per_value"):
        _number(f"ModelSpec.{f}", getattr(model, f), "finite_gt0")
    for f in ("layers", "kv_heads", "head_dim"):
        integer(f"ModelSpec.{f}", getattr(model, f), 1)
    for f in ("flops", "hbm_bandwidth", "hbm_bytes", "nvlink_bandwidth", "nic_bandwidth"):
        _number(f"GPUSpec.{f}", getattr(gpu, f), "finite_gt0")
    integer("GPUSpec.gpus_per_node", gpu.gpus_per_node, 1)


def prefill_worker(
    name: str,
    node: int,
    model: ModelSpec,
    gpu: GPUSpec,
    tp: int,
    prompt_tokens: int = 128,
    mfu: float = 0.4,
    mbu: float = 0.7,
) -> Worker:
    r"""A prefill worker with a roofline estimate of its capacity and service time.

    Batched prefill is compute-bound; a lone request is bounded by compute or by one read of the
    weights, whichever is slower:

        μ = tp · F · mfu / (2 · N · n)                                   (requests/s)
        s = max(2 · N · n / (tp · F · mfu),  N·w / (tp · B_hbm · mbu))   (seconds)

    with ``F`` the GPU's FLOP/s, ``B_hbm`` its HBM bandwidth, ``N`` parameters, ``w`` bytes per
    weight and ``n = prompt_tokens``. ``mfu`` (model FLOPs utilisation) and ``mbu`` (memory
    bandwidth utilisation) are assumed (defaults 0.4 and 0.7).

    Raises :class:`InputError` unless ``tp`` and ``prompt_tokens`` are integers >= 1, ``mfu``
    and ``mbu`` are in (0, 1] and the specs' numbers are finite and > 0.
    """
    _check_specs(model, gpu)
    tp = integer("tp", tp, 1)
    n = integer("prompt_tokens", prompt_tokens, 1)
    mfu, mbu = _share("mfu", mfu), _share("mbu", mbu)
    work = 2.0 * model.parameters * n
    capacity = tp * gpu.flops * mfu / work
    weights = model.weight_bytes / (tp * gpu.hbm_bandwidth * mbu)
    _check_fits(name, model.weight_bytes / tp, gpu)
    return Worker(name, "prefill", node, tp, capacity, max(1.0 / capacity, weights))


def decode_worker(
    name: str,
    node: int,
    model: ModelSpec,
    gpu: GPUSpec,
    tp: int,
    prompt_tokens: int = 128,
    output_tokens: int = 128,
    batch: int = 64,
    mbu: float = 0.7,
) -> Worker:
    r"""A decode worker with a memory-bound estimate of its capacity and service time.

    A decode step reads the weights once and the KV cache of every sequence in the batch (at
    the mean context ``n + m/2``); a request needs ``m = output_tokens`` steps:

        t(B) = (N·w + B · k_tok · (n + m/2)) / (tp · B_hbm · mbu)        (seconds per step)
        μ    = B / (m · t(B))                                            (requests/s at batch B)
        s    = m · t(1)                                                  (a lone request)

    ``k_tok`` is the model's KV bytes per token. ``batch`` (default 64), ``output_tokens``
    (default 128) and ``mbu`` (default 0.7) are assumed. Raises :class:`InputError` if the
    weights and the batch's full KV cache do not fit in ``tp`` GPUs' HBM, and unless ``tp``,
    ``prompt_tokens``, ``output_tokens`` and ``batch`` are integers >= 1, ``mbu`` is in (0, 1]
    and the specs' numbers are finite and > 0.
    """
    _check_specs(model, gpu)
    tp = integer("tp", tp, 1)
    n = integer("prompt_tokens", prompt_tokens, 1)
    m = integer("output_tokens", output_tokens, 1)
    batch = integer("batch", batch, 1)
    mbu = _share("mbu", mbu)
    kv_seq = model.kv_bytes_per_token * (n + m / 2.0)

    def step(b):
        return (model.weight_bytes + b * kv_seq) / (tp * gpu.hbm_bandwidth * mbu)

    _check_fits(name, (model.weight_bytes + batch * model.kv_bytes_per_token * (n + m)) / tp, gpu)
    return Worker(name, "decode", node, tp, batch / (m * step(batch)), m * step(1))


def _check_fits(name: str, bytes_per_gpu: float, gpu: GPUSpec) -> None:
    if bytes_per_gpu > gpu.hbm_bytes:
        raise InputError(
            f"worker {name!r}: needs {bytes_per_gpu / 1e9:.1f} GB per GPU: must be <= "
            f"GPUSpec.hbm_bytes = {gpu.hbm_bytes / 1e9:.1f} GB"
        )


# ---------------------------------------------------------------------------------------------
# The paper's topologies
# ---------------------------------------------------------------------------------------------


def _paper_cluster(
    name: str,
    model: ModelSpec,
    tp: int,
    nodes: int,
    prefill_nodes: Sequence[int],
    decode_nodes: Sequence[int],
    *,
    gpu: GPUSpec,
    prompt_tokens: int,
    output_tokens: int,
    decode_batch: int,
    mfu: float,
    mbu: float,
    nvlink_latency: float,
    ib_latency: float,
) -> Cluster:
    integer("decode_batch", decode_batch, 1)  # decode_worker would call it ``batch``
    workers = [
        prefill_worker(f"P{i}", a, model, gpu, tp, prompt_tokens, mfu, mbu)
        for i, a in enumerate(prefill_nodes)
    ]
    workers += [
        decode_worker(f"D{j}", b, model, gpu, tp, prompt_tokens, output_tokens, decode_batch, mbu)
        for j, b in enumerate(decode_nodes)
    ]
    # KV leaves through the prefill worker's own tp GPUs: NVLink at tp × per-GPU bandwidth per
    # direction inside a node, tp rail-aligned NICs across nodes.
    return Cluster(
        nodes=nodes,
        gpus_per_node=gpu.gpus_per_node,
        workers=tuple(workers),
        nvlink_bandwidth=tp * gpu.nvlink_bandwidth,
        ib_bandwidth=tp * gpu.nic_bandwidth,
        kv_bytes_per_request=model.kv_bytes_per_token * prompt_tokens,
        nvlink_latency=nvlink_latency,
        ib_latency=ib_latency,
        name=name,
    )


_PRESET_DOC = """

    Common assumptions (every one a keyword argument; ``dataclasses.replace`` overrides the
    returned :class:`Cluster` and its :class:`Worker` s):

    * Hardware :data:`B200` (8 GPUs/node, 4.5 PFLOP/s FP8 dense, 8 TB/s and 192 GB HBM per GPU,
      NVLink 5 0.9 TB/s per GPU per direction, one 400 Gb/s ConnectX-7 NIC per GPU) — public
      data-sheet numbers; FP8 weights and FP8 KV cache.
    * ``prompt_tokens = 128`` (the prompt length the paper's runs are taken to use; not checked
      against the paper text); ``output_tokens = 128`` — *assumed*.
    * Prefill: ``mfu = 0.4`` *assumed*; decode: ``decode_batch = 64`` concurrent sequences per
      worker and ``mbu = 0.7`` — *assumed* (:func:`prefill_worker`, :func:`decode_worker`).
    * KV bytes per request = KV bytes per token × ``prompt_tokens`` (the prompt's cache crosses
      the link; the first generated token's does not).
    * ``nvlink_bandwidth = tp × 0.9 TB/s`` and ``ib_bandwidth = tp × 50 GB/s`` (per ordered node
      pair): the KV cache leaves through the prefill worker's own ``tp`` GPUs, over their
      NVLink ports inside a node and their rail-aligned NICs across nodes — peak rates, *assumed*
      achievable; egress sharing of one node's NICs across several destination nodes is not
      modelled (each node pair is its own link).
    * ``nvlink_latency = 10 µs``, ``ib_latency = 30 µs`` per transfer — *assumed*
      order-of-magnitude figures for the transfer library's set-up and completion cost (the
      hardware one-way latency is ~1 µs on NVLink and a few µs on InfiniBand).
"""


def _preset(fn):
    fn.__doc__ = (fn.__doc__ or "") + _PRESET_DOC
    return fn


@_preset
def paper_340b_1p2d(
    *,
    gpu: GPUSpec = B200,
    prompt_tokens: int = 128,
    output_tokens: int = 128,
    decode_batch: int = 64,
    mfu: float = 0.4,
    mbu: float = 0.7,
    nvlink_latency: float = 10e-6,
    ib_latency: float = 30e-6,
) -> Cluster:
    """Nemotron-4-340B, 1 prefill + 2 decode workers, TP=8 (a full node each) on 3 nodes.

    Placement: ``P0`` on node 0, ``D0`` on node 1, ``D1`` on node 2 ⇒ every KV transfer crosses
    InfiniBand (links ``kv:ib:n0->n1``, ``kv:ib:n0->n2``). Model :data:`NEMOTRON_4_340B`
    (294 912 KV bytes/token ⇒ 37.7 MB per 128-token request). With the defaults:
    ``P0`` μ ≈ 165 req/s, s ≈ 7.6 ms; each ``D`` μ ≈ 65 req/s, s ≈ 0.97 s; IB 400 GB/s per pair
    (κ ≈ 10 600 req/s).
    """
    return _paper_cluster(
        "paper_340b_1p2d",
        NEMOTRON_4_340B,
        tp=8,
        nodes=3,
        prefill_nodes=(0,),
        decode_nodes=(1, 2),
        gpu=gpu,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        decode_batch=decode_batch,
        mfu=mfu,
        mbu=mbu,
        nvlink_latency=nvlink_latency,
        ib_latency=ib_latency,
    )


@_preset
def paper_70b_1p2d(
    *,
    gpu: GPUSpec = B200,
    prompt_tokens: int = 128,
    output_tokens: int = 128,
    decode_batch: int = 64,
    mfu: float = 0.4,
    mbu: float = 0.7,
    nvlink_latency: float = 10e-6,
    ib_latency: float = 30e-6,
) -> Cluster:
    """Llama-3.1-70B, 1 prefill + 2 decode workers, TP=4 (half a node each) on 2 nodes.

    Placement (*assumed*; the paper gives the worker counts, not the GPU map): ``P0`` and ``D0``
    on node 0, ``D1`` on node 1 (half of node 1 idle) ⇒ ``P0→D0`` over NVLink
    (``kv:nvlink:n0``), ``P0→D1`` over InfiniBand (``kv:ib:n0->n1``). Model
    :data:`LLAMA_3_1_70B` (163 840 KV bytes/token ⇒ 21.0 MB per 128-token request). With the
    defaults: ``P0`` μ ≈ 399 req/s, s ≈ 3.2 ms; each ``D`` μ ≈ 154 req/s, s ≈ 0.40 s; NVLink
    3.6 TB/s (κ ≈ 172 000 req/s), IB 200 GB/s per pair (κ ≈ 9 540 req/s).
    """
    return _paper_cluster(
        "paper_70b_1p2d",
        LLAMA_3_1_70B,
        tp=4,
        nodes=2,
        prefill_nodes=(0,),
        decode_nodes=(0, 1),
        gpu=gpu,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        decode_batch=decode_batch,
        mfu=mfu,
        mbu=mbu,
        nvlink_latency=nvlink_latency,
        ib_latency=ib_latency,
    )


@_preset
def paper_70b_1p5d(
    *,
    gpu: GPUSpec = B200,
    prompt_tokens: int = 128,
    output_tokens: int = 128,
    decode_batch: int = 64,
    mfu: float = 0.4,
    mbu: float = 0.7,
    nvlink_latency: float = 10e-6,
    ib_latency: float = 30e-6,
) -> Cluster:
    """Llama-3.1-70B, 1 prefill + 5 decode workers, TP=4 (two workers per node) on 3 nodes.

    Placement (*assumed*): ``P0, D0`` on node 0, ``D1, D2`` on node 1, ``D3, D4`` on node 2 ⇒
    ``P0→D0`` over ``kv:nvlink:n0``; ``D1`` and ``D2`` share ``kv:ib:n0->n1``; ``D3`` and ``D4``
    share ``kv:ib:n0->n2``. Per-worker numbers as in :func:`paper_70b_1p2d` (decode pool
    ≈ 770 req/s against one prefill worker's ≈ 399 req/s).
    """
    return _paper_cluster(
        "paper_70b_1p5d",
        LLAMA_3_1_70B,
        tp=4,
        nodes=3,
        prefill_nodes=(0,),
        decode_nodes=(0, 1, 1, 2, 2),
        gpu=gpu,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        decode_batch=decode_batch,
        mfu=mfu,
        mbu=mbu,
        nvlink_latency=nvlink_latency,
        ib_latency=ib_latency,
    )
