r"""Serving-model presets: the paper's three P/D setups (and H100/H200/A100 variants) as numbers.

A :class:`ServingPreset` describes one disaggregated deployment — a model, a GPU, the tensor
parallel degree, one prefill worker and ``n_D`` decode workers placed on nodes, and the
workload — and :func:`coefficients` turns it into the arrays the closed-loop model
(:mod:`poa_jax.load`) evaluates. Every coefficient is a roofline estimate from public hardware
and model numbers, or a least-squares fit to the user's own measurements (:func:`fit_csv`).

**Prefill (DistServe's form, per engine iteration).** An iteration that prefills ``T`` tokens
from requests of ``n_i`` tokens takes

    t_P(T) = a_P + b_P·T + c_P·Σ_i n_i²                                  (seconds)
    a_P = N·w / (tp·B_hbm·mbu)          one read of the weights (a memory floor per iteration)
    b_P = 2·N / (tp·F·mfu)              dense FLOPs per token
    c_P = 2·layers·hidden / (tp·F·mfu)  causal attention, QKᵀ and AV: 2·n²·hidden per layer

(``N`` parameters, ``w`` bytes per weight, ``F`` FLOP/s, ``B_hbm`` HBM bytes/s). An iteration
carries at most ``B_tok = max_num_batched_tokens`` tokens (16 384 — *assumed*: vLLM's default
for the offline ``LLM`` class on ≥ 70 GiB GPUs other than A100; ``vllm serve`` defaults to 8 192,
2 048 on A100), so the prefill worker's token capacity is **budget-limited**:

    κ_P = B_tok / t_P(B_tok)          (tokens/s; 1/b_P only as B_tok → ∞)

**Decode (a roofline floor).** A decode step of a batch of ``B`` sequences at mean context
``n + m/2`` reads the weights and every sequence's KV cache, or is compute-bound:

    ITL(B) = max(α + β·B, γ·B) · max(1, B / B_max)
    α = N·w / (tp·B_hbm·mbu),  β = k_tok·(n + m/2) / (tp·B_hbm·mbu),  γ = 2·N / (tp·F·mfu)
    B_max = ⌊(tp·HBM·u − N·w) / (k_tok·(n + m))⌋         (the KV-capacity cliff)

with ``k_tok`` KV bytes per token and ``u`` the engine's memory share (vLLM's
``gpu_memory_utilization`` 0.9). Past ``B_max`` sequences no longer fit in HBM: only ``B_max``
run per step and the others are preempted, so each one's step time grows by ``B/B_max``.

**KV transfer.** The uncached part of a prompt's KV cache crosses from the prefill worker to its
decode worker over NVLink (same node) or InfiniBand: ``k_tok`` bytes per token at the link
bandwidth of :mod:`poa_jax.topology`'s cluster (``tp`` × per-GPU NVLink or NIC bandwidth), plus a
fixed latency per transfer.

Presets (``PRESETS``): ``llama70b-1p2d``, ``llama70b-1p5d``, ``nemotron340b-1p2d`` on B200, and
``-h100``, ``-h200``, ``-a100`` variants of each (no ``nemotron340b-1p2d-a100``: 682 GB of
BF16 weights do not fit in 8 × 85e9 bytes, the visible HBM of 8 × "80 GB"). Placements and link
bandwidths come from :func:`poa_jax.topology.paper_70b_1p2d` & co.

Example:
  >>> from poa_jax import serving
  >>> p = serving.preset("llama70b-1p2d")
  >>> co = serving.coefficients(p)
  >>> round(co.prefill_b * 1e6, 2), co.decode_alpha.shape      # µs per prefill token, (K,)
  (19.6, (2,))
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import numbers
import os
from typing import NamedTuple

import numpy as np

from poa_jax import topology as topo
from poa_jax.errors import InputError

__all__ = [
    "ServingPreset",
    "Coefficients",
    "Fit",
    "PRESETS",
    "preset",
    "preset_names",
    "coefficients",
    "fit_csv",
    "H100",
    "H200",
    "A100",
    "HIDDEN",
]

#: NVIDIA H100 SXM5 (H100 data sheet): FP8 dense 1 979 TFLOP/s (3 958 with sparsity), HBM3
#: 3.35 TB/s, "80 GB"; NVLink 4 900 GB/s per GPU bidirectional ⇒ 450 GB/s per direction; one
#: ConnectX-7 400 Gb/s = 50 GB/s NIC per GPU; 8 GPUs per node (DGX/HGX H100).
#: ``hbm_bytes`` is the CUDA-visible capacity that vLLM's ``gpu_memory_utilization`` multiplies,
#: as for :data:`poa_jax.topology.B200` (192e9 bytes): the data sheets' "80 GB" / "141 GB" are
#: GiB-sized, nvidia-smi reports 81 559 MiB = 85.5e9 bytes (H100), 143 771 MiB = 150.8e9 (H200),
#: 81 920 MiB = 85.9e9 (A100 80 GB; torch ``total_memory`` 85.06e9) ⇒ 85e9, 150e9, 85e9.
H100 = topo.GPUSpec("H100", 1.979e15, 3.35e12, 85e9, 0.45e12, 50e9, 8)
#: NVIDIA H200 SXM (H200 data sheet): the H100's compute (FP8 dense 1 979 TFLOP/s), HBM3e
#: 4.8 TB/s, "141 GB" (150e9 bytes visible, see :data:`H100`); NVLink and NIC as H100.
H200 = topo.GPUSpec("H200", 1.979e15, 4.8e12, 150e9, 0.45e12, 50e9, 8)
#: NVIDIA A100 SXM4 80 GB (A100 data sheet): no FP8 — BF16 dense 312 TFLOP/s, HBM2e
#: 2.039 TB/s, "80 GB" (85e9 bytes visible, see :data:`H100`); NVLink 3 600 GB/s bidirectional
#: ⇒ 300 GB/s per direction; HDR InfiniBand 200 Gb/s = 25 GB/s per GPU (DGX A100); 8 GPUs per
#: node. Presets on A100 use BF16 weights and KV cache (2 bytes per value).
A100 = topo.GPUSpec("A100", 312e12, 2.039e12, 85e9, 0.3e12, 25e9, 8)

#: Hidden size (attention width) per model, for the attention coefficient ``c_P``:
#: Llama-3.1-70B ``hidden_size 8192`` (HF ``config.json``); Nemotron-4-340B ``hidden_size 18432``
#: (NeMo ``model_config.yaml``) — the same sources as :mod:`poa_jax.topology`'s ModelSpecs.
HIDDEN = {topo.LLAMA_3_1_70B.name: 8192, topo.NEMOTRON_4_340B.name: 18432}

_GPUS = {"b200": topo.B200, "h100": H100, "h200": H200, "a100": A100}
_TOPOLOGIES = {
    "llama70b-1p2d": (topo.LLAMA_3_1_70B, 4, topo.paper_70b_1p2d),
    "llama70b-1p5d": (topo.LLAMA_3_1_70B, 4, topo.paper_70b_1p5d),
    "nemotron340b-1p2d": (topo.NEMOTRON_4_340B, 8, topo.paper_340b_1p2d),
}


@dataclasses.dataclass(frozen=True)
class ServingPreset:
    """One disaggregated deployment and its workload (all fields overridable with
    ``dataclasses.replace``).

    Sources of the defaults (each *assumed* number is marked):

    * ``model``, ``gpu``: :data:`poa_jax.topology.LLAMA_3_1_70B` / ``NEMOTRON_4_340B`` (HF and
      NeMo configs) and :data:`poa_jax.topology.B200` / :data:`H100` / :data:`H200` /
      :data:`A100` (vendor data sheets); FP8 weights and KV cache, BF16 on A100.
    * ``tp``: 4 for Llama-3.1-70B, 8 for Nemotron-4-340B — the paper's setups.
    * ``decode_nodes``, link bandwidths and latencies: the placements of
      :func:`poa_jax.topology.paper_70b_1p2d` / ``paper_70b_1p5d`` / ``paper_340b_1p2d``
      (prefill worker on node 0; ``tp`` × 0.9 TB/s NVLink, ``tp`` × 50 GB/s IB on B200; 10 µs
      and 30 µs per transfer — *assumed* there).
    * ``prompt_tokens = 128``, ``templates = 5``: the paper's workload (5 prompt templates of
      128 input tokens). ``output_tokens = 128`` — *assumed* (as in :mod:`poa_jax.topology`).
    * ``shareable = 0.5``: fraction of a prompt that is the template's shared prefix — *assumed*
      (the paper does not give it; the knee moves with it, see ``benchmarks/RESULTS.md``).
    * ``max_num_batched_tokens = 16 384``: the per-iteration prefill token budget — *assumed*,
      on every GPU variant (128 requests × 128 tokens). vLLM's own default is 16 384 only for
      the offline ``LLM`` class on GPUs with ≥ 70 GiB other than A100 (8 192 otherwise); its
      OpenAI server (``vllm serve``) defaults to 8 192 (2 048 on A100) — ``EngineArgs``'
      usage-context defaults. ``benchmarks/RESULTS.md`` shows 8 192 does not move the knee.
    * ``mfu = 0.4``, ``mbu = 0.7`` — *assumed* (as :func:`poa_jax.topology.prefill_worker`).
    * ``gpu_memory_utilization = 0.9``: vLLM's default share of HBM for weights + KV cache.
    * ``residency = 1.0`` req/s: a template's prefix stays resident on a decode worker that sees
      it at this rate with half probability (:mod:`poa_jax.game` hit model) — *assumed*;
      ``cache_size``: the worker's KV capacity, ``B_max`` sequences (the load model
      turns it into a flow, :func:`poa_jax.load.model_arrays`).
    * ``ttft_slo = 0.5`` s, ``itl_slo = 0.05`` s: SLOs for Γ_PD — *assumed*, typical of
      interactive serving benchmarks.
    """

    name: str
    model: topo.ModelSpec
    gpu: topo.GPUSpec
    tp: int
    decode_nodes: tuple[int, ...]
    nvlink_bandwidth: float
    ib_bandwidth: float
    nvlink_latency: float = 10e-6
    ib_latency: float = 30e-6
    prompt_tokens: int = 128
    output_tokens: int = 128
    templates: int = 5
    shareable: float = 0.5
    max_num_batched_tokens: int = 16384
    mfu: float = 0.4
    mbu: float = 0.7
    gpu_memory_utilization: float = 0.9
    residency: float = 1.0
    ttft_slo: float = 0.5
    itl_slo: float = 0.05

    @property
    def decode_workers(self) -> int:
        return len(self.decode_nodes)

    @property
    def hidden(self) -> int:
        return HIDDEN[self.model.name]


def _build(name: str) -> ServingPreset:
    parts = name.split("-")
    topo_name = "-".join(parts[:2])
    gpu_key = parts[2] if len(parts) > 2 else "b200"
    model, tp, make = _TOPOLOGIES[topo_name]
    gpu = _GPUS[gpu_key]
    if gpu_key == "a100":  # no FP8 on Ampere: BF16 weights and KV cache
        model = dataclasses.replace(model, weight_bytes_per_param=2.0, kv_bytes_per_value=2.0)
    cluster = make(gpu=gpu)
    return ServingPreset(
        name=name,
        model=model,
        gpu=gpu,
        tp=tp,
        decode_nodes=tuple(w.node for w in cluster.decode_workers),
        nvlink_bandwidth=cluster.nvlink_bandwidth,
        ib_bandwidth=cluster.ib_bandwidth,
        nvlink_latency=cluster.nvlink_latency,
        ib_latency=cluster.ib_latency,
    )


#: Every preset name.
PRESETS = tuple(
    f"{t}{'' if g == 'b200' else '-' + g}"
    for t in _TOPOLOGIES
    for g in _GPUS
    if not (t.startswith("nemotron") and g == "a100")
)


def preset_names() -> tuple[str, ...]:
    """The preset names (``PRESETS``)."""
    return PRESETS


def preset(name: str) -> ServingPreset:
    """The preset called ``name``; :class:`InputError` listing the names that exist otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise InputError(f"preset {name!r} does not exist: must be one of {', '.join(PRESETS)}")
    return _build(name)


class Coefficients(NamedTuple):
    """The numbers :mod:`poa_jax.load` evaluates (seconds, tokens, requests); ``K`` decode
    workers.

    Attributes:
      prefill_a, prefill_b, prefill_c: ``t_P(T) = a + b·T + c·Σn²`` (s, s/token, s/token²).
      budget: ``B_tok`` tokens per prefill iteration.
      decode_alpha, decode_beta, decode_gamma: ``(K,)`` ITL roofline (s, s/sequence, s/sequence).
      decode_bmax: ``(K,)`` KV capacity in sequences (the cliff).
      kv_latency: ``(K,)`` fixed seconds per KV transfer on worker k's link.
      kv_sec_per_token: ``(K,)`` seconds per uncached token on that link.
      link: ``(K,)`` int, index of the link worker k's transfers use (shared links share load).
      link_tokens_per_s: ``(K,)`` capacity of link ``k`` (by link index) in tokens/s.
      output_tokens: ``m``.
      prompt_tokens: ``n``.
    """

    prefill_a: float
    prefill_b: float
    prefill_c: float
    budget: float
    decode_alpha: np.ndarray
    decode_beta: np.ndarray
    decode_gamma: np.ndarray
    decode_bmax: np.ndarray
    kv_latency: np.ndarray
    kv_sec_per_token: np.ndarray
    link: np.ndarray
    link_tokens_per_s: np.ndarray
    output_tokens: float
    prompt_tokens: float


class Fit(NamedTuple):
    """Least-squares coefficients from measured points (:func:`fit_csv`)."""

    prefill: tuple[float, float, float] | None  # (a, b, c) of t_P
    decode: tuple[float, float] | None  # (α, β_token): ITL = α + β_token·batch·context
    rmse: dict  # phase -> root-mean-square residual (s)
    points: dict  # phase -> rows used


def _real(name: str, v, rule: str) -> float:
    """``v`` as a float under ``rule`` (``gt0``: finite and > 0; ``ge0``: finite and >= 0)."""
    if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
        raise InputError(f"{name} = {v!r}: must be a real number")
    f = float(v)
    if rule == "gt0" and not (math.isfinite(f) and f > 0):
        raise InputError(f"{name} = {v!r}: must be finite and > 0")
    if rule == "ge0" and not (math.isfinite(f) and f >= 0):
        raise InputError(f"{name} = {v!r}: must be finite and >= 0")
    return f


def _int(name: str, v, minimum: int) -> int:
    """``v`` as an ``int >= minimum`` (integers and integral floats; no bools)."""
    text = f"{name} = {v!r}: must be an integer >= {minimum}"
    if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
        raise InputError(text)
    if not (math.isfinite(float(v)) and float(v).is_integer() and v >= minimum):
        raise InputError(text)
    return int(v)


def check_preset(p: ServingPreset) -> ServingPreset:
    """Checks a preset's fields; :class:`InputError` names the field and the rule.

    Rules: SLOs, ``residency``, link bandwidths, every :class:`~poa_jax.topology.GPUSpec`
    rate and capacity and the model's ``parameters`` and bytes per weight / KV value are finite
    and > 0; link latencies are finite and >= 0; ``mfu``, ``mbu`` and
    ``gpu_memory_utilization`` are in (0, 1] and ``shareable`` in [0, 1]; ``tp``, token counts,
    ``templates``, the model's ``layers``/``kv_heads``/``head_dim`` and ``gpus_per_node`` are
    integers >= 1; ``decode_nodes`` is a non-empty tuple of integer node indices >= 0.
    """
    if not isinstance(p, ServingPreset):
        raise InputError(f"preset: expected a ServingPreset or a name, got {type(p).__name__}")
    for f in ("ttft_slo", "itl_slo", "mfu", "mbu", "residency", "nvlink_bandwidth",
              "ib_bandwidth", "gpu_memory_utilization"):  # fmt: skip
        _real(f"ServingPreset.{f}", getattr(p, f), "gt0")
    for f in ("nvlink_latency", "ib_latency"):
        _real(f"ServingPreset.{f}", getattr(p, f), "ge0")
    for f in ("mfu", "mbu", "gpu_memory_utilization"):
        v = getattr(p, f)
        if not 0 < v <= 1:
            raise InputError(f"ServingPreset.{f} = {v!r}: must be in (0, 1]")
    _real("ServingPreset.shareable", p.shareable, "ge0")
    if not 0 <= p.shareable <= 1:
        raise InputError(f"ServingPreset.shareable = {p.shareable!r}: must be in [0, 1]")
    for f in ("tp", "prompt_tokens", "output_tokens", "templates", "max_num_batched_tokens"):
        _int(f"ServingPreset.{f}", getattr(p, f), 1)
    if p.max_num_batched_tokens < p.prompt_tokens:
        raise InputError(
            f"ServingPreset.max_num_batched_tokens = {p.max_num_batched_tokens}: must be >= "
            f"prompt_tokens = {p.prompt_tokens} (a prompt must fit in one iteration)"
        )
    if not isinstance(p.decode_nodes, tuple | list) or len(p.decode_nodes) < 1:
        raise InputError("ServingPreset.decode_nodes: must name at least one decode worker")
    for i, b in enumerate(p.decode_nodes):
        _int(f"ServingPreset.decode_nodes[{i}]", b, 0)
    g, m = p.gpu, p.model
    if not isinstance(g, topo.GPUSpec):
        raise InputError(f"ServingPreset.gpu: expected a GPUSpec, got {type(g).__name__}")
    if not isinstance(m, topo.ModelSpec):
        raise InputError(f"ServingPreset.model: expected a ModelSpec, got {type(m).__name__}")
    for f in ("flops", "hbm_bandwidth", "hbm_bytes", "nvlink_bandwidth", "nic_bandwidth"):
        _real(f"ServingPreset.gpu.{f}", getattr(g, f), "gt0")
    _int("ServingPreset.gpu.gpus_per_node", g.gpus_per_node, 1)
    for f in ("parameters", "weight_bytes_per_param", "kv_bytes_per_value"):
        _real(f"ServingPreset.model.{f}", getattr(m, f), "gt0")
    for f in ("layers", "kv_heads", "head_dim"):
        _int(f"ServingPreset.model.{f}", getattr(m, f), 1)
    if m.name not in HIDDEN:
        raise InputError(
            f"ServingPreset.model.name = {m.name!r}: no hidden size known (HIDDEN has "
            f"{', '.join(HIDDEN)}); add it to serving.HIDDEN"
        )
    return p


def coefficients(p: ServingPreset | str, fit: Fit | None = None) -> Coefficients:
    """The model's coefficients for preset ``p`` (module docstring), optionally overridden by a
    :class:`Fit` of measured points."""
    p = check_preset(preset(p) if isinstance(p, str) else p)
    m, g = p.model, p.gpu
    n, out = p.prompt_tokens, p.output_tokens
    weights = m.weight_bytes / (p.tp * g.hbm_bandwidth * p.mbu)
    flop_tok = 2.0 * m.parameters / (p.tp * g.flops * p.mfu)
    pa, pb = weights, flop_tok
    pc = 2.0 * m.layers * p.hidden / (p.tp * g.flops * p.mfu)
    kv_free = p.tp * g.hbm_bytes * p.gpu_memory_utilization - m.weight_bytes
    if kv_free <= 0:
        raise InputError(
            f"preset {p.name!r}: weights ({m.weight_bytes / 1e9:.0f} GB) do not fit in "
            f"tp × HBM × gpu_memory_utilization = {p.tp * g.hbm_bytes * p.gpu_memory_utilization / 1e9:.0f} GB"  # noqa: E501
        )
    bmax = math.floor(kv_free / (m.kv_bytes_per_token * (n + out)))
    if bmax < 1:
        raise InputError(f"preset {p.name!r}: no sequence of {n + out} tokens fits in the KV cache")
    alpha = weights
    beta = m.kv_bytes_per_token * (n + out / 2.0) / (p.tp * g.hbm_bandwidth * p.mbu)
    gamma = flop_tok
    if fit is not None and fit.prefill is not None:
        pa, pb, pc = fit.prefill
    if fit is not None and fit.decode is not None:
        alpha = fit.decode[0]
        beta = fit.decode[1] * (n + out / 2.0)
    k = p.decode_workers
    # Links: the prefill worker is on node 0; one link per distinct decode node.
    nodes = sorted(set(p.decode_nodes))
    link = np.asarray([nodes.index(b) for b in p.decode_nodes], np.int32)
    same = np.asarray([b == 0 for b in p.decode_nodes])
    bw = np.where(same, p.nvlink_bandwidth, p.ib_bandwidth)
    lat = np.where(same, p.nvlink_latency, p.ib_latency)
    link_bw = np.zeros(k)
    for i, b in enumerate(nodes):
        link_bw[i] = p.nvlink_bandwidth if b == 0 else p.ib_bandwidth
    link_bw[len(nodes) :] = np.inf  # unused link slots
    return Coefficients(
        prefill_a=float(pa),
        prefill_b=float(pb),
        prefill_c=float(pc),
        budget=float(p.max_num_batched_tokens),
        decode_alpha=np.full(k, alpha),
        decode_beta=np.full(k, beta),
        decode_gamma=np.full(k, gamma),
        decode_bmax=np.full(k, float(bmax)),
        kv_latency=lat.astype(np.float64),
        kv_sec_per_token=(m.kv_bytes_per_token / bw).astype(np.float64),
        link=link,
        link_tokens_per_s=link_bw / m.kv_bytes_per_token,
        output_tokens=float(out),
        prompt_tokens=float(n),
    )


# --------------------------------------------------------------------------- CSV fit

REQUIRED_COLUMNS = ("batch", "tokens", "latency")


def _nnls_small(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares for a handful of columns: best fit over all supports."""
    best, best_r = np.zeros(a.shape[1]), np.inf
    cols = range(a.shape[1])
    for r in range(1, a.shape[1] + 1):
        for sub in itertools.combinations(cols, r):
            coef, *_ = np.linalg.lstsq(a[:, sub], y, rcond=None)
            if np.any(coef < 0):
                continue
            res = float(np.sum((a[:, sub] @ coef - y) ** 2))
            if res < best_r:
                best_r = res
                best = np.zeros(a.shape[1])
                best[list(sub)] = coef
    return best, best_r


def fit_csv(path: str | os.PathLike) -> Fit:
    """Least-squares coefficients from a CSV of measured ``(batch, tokens, latency)`` points.

    Columns (header row required): ``batch`` (requests in the iteration), ``tokens`` (prompt
    tokens per request for prefill rows; context length per sequence for decode rows),
    ``latency`` (seconds per iteration), and optionally ``phase`` (``prefill`` — the default —
    or ``decode``). Fits, with non-negative coefficients (exact over all supports):

        prefill:  latency = a + b·(batch·tokens) + c·(batch·tokens²)      (DistServe's form)
        decode:   latency = α + β_token·(batch·tokens)                   (memory-bound ITL)

    Raises:
      InputError: missing file or columns, non-numeric or negative values, a phase with fewer
        points than coefficients, a fit with no capacity limit (prefill coefficients all 0, or
        a decode floor α = 0: the closed loop would divide by 0). A UTF-8 byte-order mark
        before the header is ignored.
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM is not a name
            rows = list(csv.DictReader(f))
            header = rows and list(rows[0].keys())
    except FileNotFoundError:
        raise InputError(f"{path}: no such CSV file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read as CSV ({e})") from None
    if not rows:
        raise InputError(f"{path}: no data rows (need columns {', '.join(REQUIRED_COLUMNS)})")
    header = [h.strip() for h in header if h is not None]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}: the CSV must have columns "
            f"{', '.join(REQUIRED_COLUMNS)} (and optionally phase); found {', '.join(header)}"
        )
    data = {"prefill": [], "decode": []}
    for i, row in enumerate(rows, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        phase = (row.get("phase") or "prefill").strip().lower()
        if phase not in data:
            raise InputError(f"{path}: line {i}: phase = {phase!r}: must be prefill or decode")
        vals = []
        for c in REQUIRED_COLUMNS:
            try:
                v = float(row[c])
            except (TypeError, ValueError):
                raise InputError(f"{path}: line {i}: {c} = {row[c]!r}: must be a number") from None
            if not (math.isfinite(v) and v >= 0):
                raise InputError(f"{path}: line {i}: {c} = {v!r}: must be finite and >= 0")
            vals.append(v)
        data[phase].append(vals)
    out: dict = {"prefill": None, "decode": None}
    rmse, points = {}, {}
    for phase, pts in data.items():
        if not pts:
            continue
        a = np.asarray(pts)
        b, t, y = a[:, 0], a[:, 1], a[:, 2]
        if phase == "prefill":
            design = np.stack([np.ones_like(b), b * t, b * t**2], 1)
        else:
            design = np.stack([np.ones_like(b), b * t], 1)
        if len(pts) < design.shape[1]:
            raise InputError(
                f"{path}: {len(pts)} {phase} point(s): need at least {design.shape[1]} to fit"
            )
        coef, res = _nnls_small(design, y)
        if phase == "prefill" and not np.any(coef > 0):
            raise InputError(
                f"{path}: prefill fit (a, b, c) = (0, 0, 0): the measured latencies give an "
                "iteration time of 0, i.e. no prefill capacity limit; check the latency column"
            )
        if phase == "decode" and not coef[0] > 0:
            raise InputError(
                f"{path}: decode fit α = {float(coef[0]) + 0.0!r}: the step time at batch → 0 "
                "must be > 0 (with α = 0 the decode worker has no capacity limit); check the "
                "latency column"
            )
        out[phase] = tuple(float(v) for v in coef)
        rmse[phase] = math.sqrt(res / len(pts))
        points[phase] = len(pts)
    return Fit(prefill=out["prefill"], decode=out["decode"], rmse=rmse, points=points)
