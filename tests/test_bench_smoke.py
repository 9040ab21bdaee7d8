"""The benchmark cannot rot: its smoke mode runs, and the SciPy reference's calculus is right."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not installed
    sys.path.insert(0, str(ROOT))

pytest.importorskip("scipy")

import poa_jax as pj  # noqa: E402
from benchmarks import bench_routing  # noqa: E402
from benchmarks import scipy_reference as sr  # noqa: E402
from poa_jax.synthetic import random_games  # noqa: E402


def test_smoke_mode_reports_everything(tmp_path, capsys):
    out = tmp_path / "bench.json"
    res = bench_routing.main(["--smoke", "--json", str(out)])
    text = capsys.readouterr().out

    assert set(res) == {"meta", "sizes", "scipy", "speedup", "agreement"}
    for key in ("date", "device", "jax", "cpu_count", "dtype", "tol", "git"):
        assert key in res["meta"]
    (row,) = res["sizes"]
    assert row["n"] == 16 and row["repeats"] >= 1
    for part in ("first_call_s", "steady_s", "rate"):
        assert all(v > 0 for v in row[part].values()), part
    assert set(row["rate"]) == {"equilibrium", "optimum", "both"}
    for solver in ("equilibrium", "optimum"):
        conv = row[solver]
        assert 0.0 <= conv["converged_share"] <= 1.0
        assert conv["iterations_max"] >= conv["iterations_median"] >= 0

    sp = res["scipy"]
    assert sp["instances"] == 2
    assert all(v > 0 for v in sp["rate"].values())
    assert all(0.0 <= v <= 1.0 for v in sp["reached_tol"].values())
    assert res["speedup"]["16"] > 0
    assert {"equilibrium_sc", "optimum_sc", "poa", "model"} <= set(res["agreement"])
    # The model itself must agree: poa_jax's SC at its own flows vs the reference's.
    for solver in ("equilibrium", "optimum"):
        assert res["agreement"]["model"][solver]["sc_rel_diff_max"] < 1e-9

    assert json.loads(out.read_text())["sizes"][0]["n"] == 16
    for heading in ("Throughput", "Convergence", "SciPy reference", "Speed-up", "Agreement"):
        assert heading in text


def _central(f, x, eps=1e-6):
    """Central differences of ``f: (J, K) → (...)``, derivative axes last."""
    cols = []
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * eps))
    return np.stack(cols, -1).reshape(np.shape(f(x)) + x.shape)


@pytest.mark.parametrize("i", [0, 3])
def test_reference_derivatives_match_differences(i):
    inst = sr.instance(random_games(11, 8, 5, 6, cache=True), i)
    rng = np.random.default_rng(i)
    x = inst.demand[:, None] * rng.dirichlet(np.full(6, 5.0), 5)  # away from the kinks
    grad = sr.social_cost_grad(inst, x)
    np.testing.assert_allclose(grad, _central(lambda z: sr.social_cost(inst, z), x), rtol=1e-5)
    jac = sr.cost_jacobian(inst, x)
    num = _central(lambda z: sr.true_cost(inst, z), x)
    np.testing.assert_allclose(jac, num, rtol=1e-5, atol=1e-8 * np.abs(jac).max())


def test_reference_on_pigou():
    """Pigou: equilibrium all on the variable link (SC 1), optimum half/half (SC 3/4)."""
    inst = sr.instance(pj.RoutingGame(demand=[1.0], latency=pj.Latency(a=[0.0, 1.0], b=[1.0, 0.0])))
    eq = sr.equilibrium(inst, tol=1e-9)
    opt = sr.optimum(inst, tol=1e-9)
    assert eq.success and opt.success
    assert eq.social_cost == pytest.approx(1.0, rel=1e-8)
    assert opt.social_cost == pytest.approx(0.75, rel=1e-8)


def test_kernel_resources_lowers_every_kernel_and_layout(tmp_path, capsys):
    """Without ``--triton-python`` the script writes each fused kernel's Triton IR (lowered for
    ``cuda`` on the CPU) and lists it; the memory layout's IR stores grids inside its loops."""
    from benchmarks import kernel_resources

    pytest.importorskip("jax._src.pallas.triton.lowering")
    assert kernel_resources.main(["--out", str(tmp_path)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| e") or
            r.startswith("| o")]  # fmt: skip
    assert len(rows) == 4, rows
    for kind in ("equilibrium", "optimum"):
        reg = (tmp_path / f"{kind}_registers.ttir").read_text()
        mem = (tmp_path / f"{kind}_memory.ttir").read_text()
        assert "tt.func" in reg and "tt.func" in mem
        assert mem.count("tt.store") > reg.count("tt.store")  # grids go back to memory per trip


_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                /* 0x0 */
        /*0010*/                   LDG.E R2, desc[UR6][R4.64] ;          /* 0x0 */
        /*0020*/                   FADD R3, R2, R2 ;                     /* 0x0 */
        /*0030*/                   LEA R4, P0, R3, UR8, 0x2 ;            /* 0x0 */
        /*0040*/                   FMUL R3, R3, R3 ;                     /* 0x0 */
        /*0050*/               @P0 BRA 0x40 ;                            /* 0x0 */
        /*0060*/                   FSEL R5, R3, RZ, P1 ;                 /* 0x0 */
        /*0070*/                   FFMA R6, R5, R5, R3 ;                 /* 0x0 */
        /*0080*/                   STG.E desc[UR6][R4.64], R6 ;          /* 0x0 */
        /*0090*/              @!P2 BRA 0x70 ;                            /* 0x0 */
        /*00a0*/                   IMAD.MOV.U32 R7, RZ, RZ, R6 ;         /* 0x0 */
        /*00b0*/                   BRA 0x20 ;                            /* 0x0 */
        /*00c0*/                   EXIT ;                                /* 0x0 */
"""


def test_sass_instructions_per_iteration_weigh_blocks_by_their_loops():
    """The solver's loop (0x20–0xb0) holds the field's loop (0x40–0x50, K trips) and the row
    loop (0x70–0x90, J trips); its other instructions count once, and those before it (MOV,
    LDG) not at all. Hand count with J = 5, K = 6: FADD + LEA + (FMUL + BRA)·6 + FSEL +
    (FFMA + STG + BRA)·5 + IMAD.MOV + BRA."""
    from benchmarks import kernel_resources as kr

    sass = kr.parse_sass(_SASS)
    assert len(sass) == 13 and sass[5] == (0x50, "@P0 BRA 0x40")
    c = kr.per_iteration(sass, num_rows=5, num_cols=6)
    assert c["total"] == 2 + 2 * 6 + 1 + 3 * 5 + 2
    assert c["float"] == 1 + 6 + 5  # FADD, FMUL ×6, FFMA ×5
    assert c["address"] == 1 and c["select"] == 1 and c["memory"] == 5 and c["move"] == 1
    assert c["other"] == 6 + 5 + 1  # the branches
    with pytest.raises(ValueError, match="one solver loop"):
        kr.per_iteration(sass[:10], 5, 6)  # no loop around the two inner ones


def test_fused_bench_smoke_reports_slot_occupancy(tmp_path):
    """``bench_fused --smoke`` (the pure path on the CPU) writes its table and JSON, with the
    fused driver's busy share of lane slots for the equilibria's counts under ``--rounds``:
    with 8 programs of 8 lanes, shorter rounds waste fewer slots (with one program of 64 lanes
    the slowest lane holds every round, whatever their length)."""
    from benchmarks import bench_fused

    busy = {}
    for rounds in ("160,160,320", "32"):
        out = tmp_path / f"fused_{rounds}.md"
        assert bench_fused.main(["--smoke", "--paths", "pure", "--rounds", rounds,
                                 "--block", "8", "--out", str(out)]) == 0  # fmt: skip
        text = out.read_text()
        assert "| eq slots busy |" in text and "| 64 | pure |" in text
        (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
        busy[rounds] = row["eq"]["slots_busy"]
        assert 0.0 < busy[rounds] <= 1.0
    assert busy["32"] > busy["160,160,320"]


def test_coupled_bench_smoke_reports_the_rounds(tmp_path, capsys):
    """``bench_coupled --smoke``: both optima of each configuration, the rounds' one stationary
    and never below the descent's PoA."""
    from benchmarks import bench_coupled

    out = tmp_path / "coupled.json"
    rows = bench_coupled.main(["--smoke", "--json", str(out)])
    assert [r["optimum"] for r in rows] == ["descent", "rounds"]
    descent, rounds = rows
    assert rounds["stationary_share"] == 1.0 and rounds["gap_max"] <= 1e-6
    assert rounds["poa_mean"] >= descent["poa_mean"] and rounds["poa_rise_max"] >= 0
    assert json.loads(out.read_text())["rows"] == rows
    assert "PoA rise max" in capsys.readouterr().out


def test_caching_bench_without_references(capsys):
    """``bench_caching`` with 0 reference instances (either part) skips the reference instead
    of dividing by zero after the whole batched run."""
    from benchmarks import bench_caching

    res = bench_caching.main(["--instances", "8", "--n", "6", "--starts", "2",
                              "--ref-instances", "0", "--fluid-instances", "2",
                              "--fluid-dims", "3,2,16", "--fluid-steps", "20",
                              "--fluid-sweeps", "1", "--fluid-ref-instances", "0"])  # fmt: skip
    for part in ("discrete", "fluid"):
        assert res[part]["rate"] > 0
        assert res[part]["reference"] is None and res[part]["speedup"] is None
    assert '"reference": null' in capsys.readouterr().out


def test_sweep_bench_with_one_chunk(tmp_path, monkeypatch, capsys):
    """``bench_sweep`` where the sweep is one chunk: nothing ran after the first call, so there
    is no steady rate (None, not 0 points/s) and no solver time per point to divide by (the
    real solver is stubbed here too: only the arithmetic is under test)."""
    from benchmarks import bench_sweep
    from poa_jax import sweep

    monkeypatch.setattr(sweep, "price_of_anarchy", bench_sweep.stub_price_of_anarchy)
    out = tmp_path / "sweep.json"
    assert bench_sweep.main(["--stub", "--points", "100", "--solve-points", "100",
                             "--out", str(tmp_path / "s"), "--json", str(out)]) == 0  # fmt: skip
    res = json.loads(out.read_text())
    assert res["points"] == res["chunk"] and res["points_per_s"] is None
    assert res["real_solver"]["points_per_s"] is None and "solver_us_per_point" not in res
    assert "one chunk only" in capsys.readouterr().out
