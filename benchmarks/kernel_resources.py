r"""Registers, spills and stack of the fused Pallas kernel for a GPU, without a GPU.

Lowers :mod:`poa_jax.fused`'s kernels (equilibrium and optimum, each layout) for the ``cuda``
platform on this machine — JAX emits the Triton IR without a device — and writes each module's
Triton IR (``.ttir``). Given a Python that has the ``triton`` package (``--triton-python``; it
is not a project dependency: ``python3 -m venv /tmp/tr && /tmp/tr/bin/pip install triton``),
it then compiles each module for ``sm_90`` (H100 / H200) with Triton's own pipeline and runs
the ``ptxas`` shipped with it on the PTX (``-v``), and prints one row per kernel: registers per
thread, spill stores and loads, stack frame, and the occupancy those registers allow.

The JAX on a GPU machine compiles the same IR with its own Triton and ``ptxas``, so the
numbers can differ in detail; what they show reliably is whether a layout spills (2026-11-27:
the register layout used all 255 registers with ~1 KB of spills per thread, the memory layout
109–137 registers and none).

    python -m benchmarks.kernel_resources --triton-python /tmp/tr/bin/python
    python -m benchmarks.kernel_resources --out /tmp/ttir          # the IR only
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

__all__ = ["lower", "main"]

_COMPILE = r"""
import sys, triton
from triton.backends.compiler import GPUTarget
k = triton.compile(sys.argv[1], target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": int(sys.argv[2]), "num_stages": 1})
open(sys.argv[3], "w").write(k.asm["ptx"])
import os
bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
names = sorted(n for n in os.listdir(bin_dir) if n.startswith("ptxas"))
print(os.path.join(bin_dir, names[-1]))  # ptxas-blackwell (newest) sorts last where present
"""


def lower(out: Path, block: int, num_warps: int) -> list[tuple[str, str, Path]]:
    """Writes the Triton IR of every (kind, layout) to ``out``; returns (kind, layout, path)."""
    from jax._src.pallas.triton import lowering
    from poa_jax.kernels import pallas_vi as pv

    from poa_jax import batching, fused, solve
    from poa_jax.policies import selfish
    from poa_jax.synthetic import random_games

    texts: list[str] = []
    build = lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = build(*args, **kwargs)
        texts.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    lowering.lower_jaxpr_to_triton_module = capture
    try:
        prep = batching.prepare(random_games(0, 256, 5, 6, cache=True), selfish(), "float32")
        written = []
        for kind in ("equilibrium", "optimum"):
            x0 = solve.starting_flows(prep, 1 if kind == "equilibrium" else 2)
            (g, p), x = fused._lanes(prep.game, prep.policy if kind == "equilibrium" else None, x0)
            params, demand, mask, xt = fused._inputs(g, p, x)
            for layout in ("registers", "memory"):
                kern = fused._kernel(kind, 1e-5, 100, False, block, num_warps, layout)
                st = pv.start_state(xt, demand, mask)
                kern.advance.trace(*params, demand, mask, st, 100).lower(
                    lowering_platforms=("cuda",)
                )
                path = out / f"{kind}_{layout}.ttir"
                path.write_text(texts[-1])
                written.append((kind, layout, path))
        return written
    finally:
        lowering.lower_jaxpr_to_triton_module = build


def _resources(py: str, ttir: Path, num_warps: int) -> dict:
    ptx = ttir.with_suffix(".ptx")
    run = subprocess.run([py, "-c", _COMPILE, str(ttir), str(num_warps), str(ptx)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    ptxas = run.stdout.strip().splitlines()[-1]
    cubin = str(ttir.with_suffix(".cubin"))
    rep = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(ptx), "-o", cubin],
                         capture_output=True, text=True, check=True)  # fmt: skip
    text = rep.stderr + rep.stdout
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, text)) else 0
    regs = num(r"Used (\d+) registers")
    # sm_90: 65 536 registers per SM, allocated per warp in units of 256, at most 64 warps
    per_warp = -(-regs * 32 // 256) * 256
    warps = min(64, (65536 // max(per_warp, 1)) // num_warps * num_warps)
    return dict(
        registers=regs, spill_stores=num(r"(\d+) bytes spill stores"),
        spill_loads=num(r"(\d+) bytes spill loads"), stack=num(r"(\d+) bytes stack frame"),
        warps_per_sm=warps, ir_lines=ttir.read_text().count("\n"),
    )  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_resources",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("/tmp/poa_jax_ttir"))
    p.add_argument("--block", type=int, default=None, help="lanes per program (default BLOCK)")
    p.add_argument("--num-warps", type=int, default=None, help="default NUM_WARPS")
    p.add_argument("--triton-python", default=None, help="a Python with triton installed")
    a = p.parse_args(argv)
    from poa_jax import fused

    block, warps = a.block or fused.BLOCK, a.num_warps or fused.NUM_WARPS
    a.out.mkdir(parents=True, exist_ok=True)
    written = lower(a.out, block, warps)
    print(f"block {block}, num_warps {warps}, sm_90; Triton IR in {a.out}\n")
    print("| kernel | layout | IR lines | registers | spill stores / loads (B) | stack (B) "
          "| warps / SM |\n|---|---|---:|---:|---|---:|---:|")  # fmt: skip
    for kind, layout, path in written:
        if not a.triton_python:
            print(f"| {kind} | {layout} | {path.read_text().count(chr(10))} | – | – | – | – |")
            continue
        r = _resources(a.triton_python, path, warps)
        print(
            f"| {kind} | {layout} | {r['ir_lines']} | {r['registers']} | "
            f"{r['spill_stores']} / {r['spill_loads']} | {r['stack']} | {r['warps_per_sm']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
