r"""Registers, spills, stack and instructions per iteration of the fused Pallas kernel for a
GPU, without a GPU.

Lowers :mod:`poa_jax.fused`'s kernels (equilibrium and optimum, each layout) for the ``cuda``
platform on this machine — JAX emits the Triton IR without a device — and writes each module's
Triton IR (``.ttir``). Given a Python that has the ``triton`` package (``--triton-python``; it
is not a project dependency: ``python3 -m venv /tmp/tr && /tmp/tr/bin/pip install triton``),
it then compiles each module for ``sm_90`` (H100 / H200) with Triton's own pipeline and runs
the ``ptxas`` shipped with it on the PTX (``-v``), and prints one row per kernel: registers per
thread, spill stores and loads, stack frame, and the occupancy those registers allow.

**Instructions per iteration.** The same Python disassembles the cubin (``cuobjdump -sass``,
shipped with ``triton``) and counts the SASS instructions that one iteration of the solver
loop issues per lane (= per thread: one instance per thread): the loop nest is read from the
backward branches — the solver's ``while`` is the outermost loop that holds others, its inner
loops are, in address order, the field's loop over the ``K`` workers and the row loop over
the ``J`` classes (any loop inside that one is the projection's over ``K`` breakpoints) — and
each block counts once per trip of the loops around it (rarely taken paths, such as the
slow paths of ``powf``, count as if always taken: an upper bound). From that comes the
**issue bound**: an SM issues at most one warp instruction per cycle per scheduler (4), so
the lane-iterations per second cannot exceed ``SMs·4·32·clock / instructions`` (H100 SXM and
H200: 132 SMs at 1.98 GHz, 3.35·10¹³ lane-instructions/s), before any stall. The table splits
the count into floating-point arithmetic, selects, address arithmetic (``LEA``, ``IADD3``,
``IMAD``…), loads and stores, and moves.

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
                variant = fused.kernel_variant(params, mask)  # as fused._run decides
                kern = fused._kernel(kind, 1e-5, 100, False, block, num_warps, layout,
                                     fused._momentum(kind), **variant)  # fmt: skip
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


#: Lane-instructions per second an H100 SXM / H200 can issue: 132 SMs × 4 schedulers × 32
#: lanes × 1.98 GHz (one warp instruction per scheduler per cycle).
ISSUE_RATE = 132 * 4 * 32 * 1.98e9

_CLASSES = (  # SASS opcode (before the first dot) → class, first match wins
    ("select", ("FSEL", "SEL")),
    ("address", ("LEA", "IADD3", "IMAD", "VIADD", "IADD", "SHF", "ULEA", "UIADD3", "UIMAD")),
    ("memory", ("LDG", "STG", "LDL", "STL", "LDS", "STS", "LDC", "ULDC", "LD", "ST")),
    ("move", ("MOV", "UMOV", "P2R", "R2P", "S2R", "S2UR", "CS2R", "PLOP3", "LOP3", "HFMA2")),
    ("float", ("F", "MUFU", "HADD2", "HMUL2", "I2F", "F2I")),
)


def _opclass(op: str) -> str:
    base = op.split(".")[0]
    if base == "IMAD" and ".MOV" in op:
        return "move"
    for name, prefixes in _CLASSES:
        if base in prefixes or (name == "float" and base.startswith(prefixes)):
            return name
    return "other"


def parse_sass(text: str) -> list[tuple[int, str]]:
    """``(address, instruction)`` of every SASS instruction in a ``cuobjdump -sass`` listing."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2)))
    return out


def _opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P[T\d]+\s+", "", ins).split()[0]


def per_iteration(sass: list[tuple[int, str]], num_rows: int, num_cols: int) -> dict:
    """SASS instructions one lane issues per solver iteration, by class (see module docstring).

    Loops are the spans ``[target, branch]`` of backward branches. The solver's loop is the
    outermost one that holds other loops; its direct inner loops get ``K`` (the field's, first)
    and ``J`` (the rows') trips, and loops inside the row loop ``K`` (the breakpoints').

    Raises:
      ValueError: the loop nest is not the one the kernel is built as.
    """
    loops = []
    for addr, ins in sass:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) <= addr:
            loops.append((int(m.group(1), 16), addr))
    inside = lambda a, b: b[0] <= a[0] and a[1] <= b[1] and a != b  # noqa: E731
    outer = [lp for lp in loops if any(inside(o, lp) for o in loops)]
    outer = [lp for lp in outer if not any(inside(lp, o) for o in outer)]
    if len(outer) != 1:
        raise ValueError(f"expected one solver loop around the others, found {outer}")
    (solver,) = outer
    kids = sorted(lp for lp in loops if inside(lp, solver))
    direct = [lp for lp in kids if not any(inside(lp, o) for o in kids)]
    if len(direct) != 2:
        raise ValueError(f"expected the field's and the rows' loops in the solver's, got {direct}")
    trips = {direct[0]: num_cols, direct[1]: num_rows}
    for lp in kids:
        if lp not in direct:
            if not inside(lp, direct[1]):
                raise ValueError(f"unexpected loop {lp} in the field's loop")
            trips[lp] = num_cols
    counts: dict[str, float] = {}
    for addr, ins in sass:
        if not solver[0] <= addr <= solver[1]:
            continue
        weight = 1
        for lp, n in trips.items():
            if lp[0] <= addr <= lp[1]:
                weight *= n
        cls = _opclass(_opcode(ins))
        counts[cls] = counts.get(cls, 0) + weight
    counts["total"] = sum(counts.values())
    return counts


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
    sass = subprocess.run([str(Path(ptxas).with_name("cuobjdump")), "-sass", cubin],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    return dict(
        per_iteration=per_iteration(parse_sass(sass), 5, 6),
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
          "| warps / SM | SASS / iteration (float · select · address · memory · move · other) "
          "| issue bound, lane-iterations/s |\n"
          "|---|---|---:|---:|---|---:|---:|---|---:|")  # fmt: skip
    for kind, layout, path in written:
        if not a.triton_python:
            lines = path.read_text().count("\n")
            print(f"| {kind} | {layout} | {lines} |" + " – |" * 6)
            continue
        r = _resources(a.triton_python, path, warps)
        c = r["per_iteration"]
        parts = " · ".join(f"{c.get(k, 0):.0f}" for k in
                           ("float", "select", "address", "memory", "move", "other"))  # fmt: skip
        print(
            f"| {kind} | {layout} | {r['ir_lines']} | {r['registers']} | "
            f"{r['spill_stores']} / {r['spill_loads']} | {r['stack']} | {r['warps_per_sm']} | "
            f"{c['total']:.0f} ({parts}) | {ISSUE_RATE / c['total']:.3g} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
