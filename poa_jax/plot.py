"""Plots of a serving sweep: PoA and TTFT P99 versus concurrency, regimes shaded (PNG).

:func:`plot_sweep` reads ``out_dir/summary.json`` (written by
:func:`poa_jax.serving_sweep.run_serving_sweep`) and draws one row per topology with two panels:
PoA (variant mean) and TTFT P99 (log scale) versus concurrency ``C`` (log₂ axis), one line per
policy. The regimes of the topology's first Dynamo setting are shaded: slack (green), the knee
interval (amber), saturated (red); the knee interval is labelled. Non-converged points are
marked with a cross. Uses matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import json
import os

from poa_jax.errors import InputError

__all__ = ["plot_sweep"]

_SHADE = {"slack": "#d9f2d9", "knee": "#ffe3a3", "saturated": "#f8d0d0"}
#: The fields of a ``per_topology_policy`` entry that the plot reads.
_ROW_KEYS = (
    "topology", "policy", "concurrency", "poa", "ttft_p99", "regime", "knee_interval",
    "not_converged_at",
)  # fmt: skip


def _load(out_dir: str) -> dict:
    path = os.path.join(out_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (run poa-jax sweep --preset first)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    if not isinstance(summary, dict) or summary.get("kind") != "serving_closed_loop":
        raise InputError(f"{path}: not a serving sweep summary (poa-jax sweep --preset)")
    for key in ("per_topology", "per_topology_policy"):
        if not isinstance(summary.get(key), list):
            raise InputError(f"{path}: {key}: missing or not an array (a damaged summary?)")
    for i, d in enumerate(summary["per_topology_policy"]):
        missing = [k for k in _ROW_KEYS if not isinstance(d, dict) or k not in d]
        if missing:
            raise InputError(
                f"{path}: per_topology_policy[{i}]: missing {', '.join(missing)} (a damaged "
                "summary?)"
            )
    return summary


def _shade(ax, conc, regime, knee):
    """Shades the regimes: the knee interval ``(lo, hi]`` itself (the one in the title), slack
    below it, saturated above; without a knee each grid point's cell by its regime (cells
    meet halfway, geometrically, between grid points)."""
    import numpy as np

    c = np.asarray(conc, float)
    edges = np.concatenate([[c[0] / 1.2], np.sqrt(c[1:] * c[:-1]), [c[-1] * 1.2]])
    if knee:
        lo, hi = (float(v) for v in knee)
        for a, b, r in ((edges[0], lo, "slack"), (lo, hi, "knee"), (hi, edges[-1], "saturated")):
            if b > a:
                ax.axvspan(a, b, color=_SHADE[r], lw=0, zorder=0)
        ax.axvline(hi, color="#b07000", ls="--", lw=1, zorder=1)
        return
    for i, r in enumerate(regime):
        ax.axvspan(edges[i], edges[i + 1], color=_SHADE[r], lw=0, zorder=0)


def plot_sweep(out_dir: str | os.PathLike, png: str | os.PathLike | None = None) -> str:
    """Draws the sweep in ``out_dir``; returns the PNG path (default ``out_dir/poa_ttft.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = os.fspath(out_dir)
    s = _load(out_dir)
    topos = [t["topology"] for t in s["per_topology"]]
    fig, axes = plt.subplots(
        len(topos), 2, figsize=(13, 4.2 * len(topos)), squeeze=False, constrained_layout=True
    )
    cmap = plt.get_cmap("viridis")
    for row, topo in enumerate(topos):
        rows = [d for d in s["per_topology_policy"] if d["topology"] == topo]
        dyn = [d for d in rows if d["policy"].startswith("dynamo")]
        ref = dyn[0] if dyn else rows[0]
        for ax in axes[row]:
            _shade(ax, ref["concurrency"], ref["regime"], ref["knee_interval"])
        for i, d in enumerate(rows):
            c = np.asarray(d["concurrency"], float)
            if d["policy"].startswith("dynamo"):
                color = cmap(i / max(len(dyn) - 1, 1))
                style = dict(color=color, lw=1.2, alpha=0.85, marker=".")
            else:
                style = dict(color="black" if d["policy"] == "selfish" else "#c03030", lw=2,
                             ls="--", marker="o", ms=3)  # fmt: skip
            poa = np.asarray([np.nan if v is None else v for v in d["poa"]], float)
            p99 = np.asarray([np.nan if v is None else v for v in d["ttft_p99"]], float)
            axes[row, 0].plot(c, poa, label=d["policy"], **style)
            axes[row, 1].plot(c, p99 * 1e3, label=d["policy"], **style)
            bad = np.isin(c, d["not_converged_at"])
            if bad.any():
                axes[row, 0].plot(c[bad], poa[bad], "x", color="red", ms=7, zorder=5)
        knee = ref["knee_interval"]
        ktxt = f"knee in ({knee[0]:g}, {knee[1]:g}]" if knee else "no knee"
        axes[row, 0].set_title(f"{topo}: PoA (mean over workload variants) — {ktxt}")
        axes[row, 1].set_title(f"{topo}: TTFT P99 at the worst equilibrium")
        axes[row, 0].set_ylabel("PoA = R(eq) / R(opt)")
        axes[row, 1].set_ylabel("TTFT P99 (ms)")
        axes[row, 1].set_yscale("log")
        axes[row, 0].ticklabel_format(axis="y", useOffset=False)
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency C (in-flight requests)")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="policy")
    fig.suptitle(
        "Closed-loop PoA and TTFT P99 — regimes: slack (green), knee (amber), saturated (red); "
        "× = not converged"
    )
    path = os.fspath(png) if png is not None else os.path.join(out_dir, "poa_ttft.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
