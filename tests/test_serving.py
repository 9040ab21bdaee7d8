"""Serving presets, the closed/open-loop load model, the serving sweep CLI and the plot."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from poa_jax import cli, load, policies, serving, serving_sweep
from poa_jax import topology as topo
from poa_jax.errors import InputError

GRID = (8.0, 16.0, 32.0, 64.0, 96.0, 128.0, 160.0, 192.0, 256.0, 384.0, 512.0)
PAPER = ("llama70b-1p2d", "llama70b-1p5d", "nemotron340b-1p2d")


# --------------------------------------------------------------------------- presets


def test_presets_exist_and_unknown_lists_them():
    for name in PAPER + ("llama70b-1p2d-h100", "llama70b-1p5d-h200", "llama70b-1p2d-a100"):
        assert name in serving.PRESETS
        serving.coefficients(name)
    assert "nemotron340b-1p2d-a100" not in serving.PRESETS  # 682 GB BF16 > 8 × 80 GB
    with pytest.raises(InputError, match="does not exist: must be one of llama70b-1p2d"):
        serving.preset("llama70b-9p9d")


def test_coefficients_by_hand_llama70b_b200():
    co = serving.coefficients("llama70b-1p2d")
    n_par = topo.LLAMA_3_1_70B.parameters
    assert co.prefill_a == pytest.approx(n_par / (4 * 8e12 * 0.7))  # one weight read, 3.15 ms
    assert co.prefill_b == pytest.approx(2 * n_par / (4 * 4.5e15 * 0.4))  # 19.6 µs/token
    assert co.prefill_c == pytest.approx(2 * 80 * 8192 / (4 * 4.5e15 * 0.4))
    assert co.budget == 16384
    kv_tok = 80 * 8 * 128 * 2  # FP8 KV bytes per token = 163 840
    assert co.decode_beta[0] == pytest.approx(kv_tok * (128 + 64) / (4 * 8e12 * 0.7))
    assert co.decode_bmax[0] == math.floor((4 * 192e9 * 0.9 - n_par) / (kv_tok * 256))
    # D0 shares node 0 with P0 (NVLink), D1 is across InfiniBand
    assert co.kv_sec_per_token[0] == pytest.approx(kv_tok / (4 * 0.9e12))
    assert co.kv_sec_per_token[1] == pytest.approx(kv_tok / (4 * 50e9))


def test_bad_preset_fields():
    import dataclasses

    p = serving.preset("llama70b-1p2d")
    with pytest.raises(InputError, match="ttft_slo"):
        serving.coefficients(dataclasses.replace(p, ttft_slo=0.0))
    with pytest.raises(InputError, match="max_num_batched_tokens"):
        serving.coefficients(dataclasses.replace(p, max_num_batched_tokens=64))


def test_csv_fit_recovers_coefficients(tmp_path):
    a, b, c = 0.004, 2e-5, 3e-10
    alpha, beta = 0.003, 8e-9
    lines = ["batch,tokens,latency,phase"]
    for bt in (1, 4, 16, 64):
        for n in (64, 128, 512):
            lines.append(f"{bt},{n},{a + b * bt * n + c * bt * n * n!r},prefill")
            lines.append(f"{bt},{n},{alpha + beta * bt * n!r},decode")
    f = tmp_path / "m.csv"
    f.write_text("\n".join(lines) + "\n")
    fit = serving.fit_csv(f)
    np.testing.assert_allclose(fit.prefill, (a, b, c), rtol=1e-6)
    np.testing.assert_allclose(fit.decode, (alpha, beta), rtol=1e-6)
    co = serving.coefficients("llama70b-1p2d", fit)
    assert co.prefill_b == pytest.approx(b)


def test_csv_missing_columns(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("batch,latency\n1,0.1\n")
    with pytest.raises(InputError, match="missing column.*tokens"):
        serving.fit_csv(f)
    with pytest.raises(InputError, match="no such CSV"):
        serving.fit_csv(tmp_path / "none.csv")


# --------------------------------------------------------------------------- load model


@pytest.fixture(scope="module")
def paper_grid():
    """The three paper presets × the paper's C grid, Dynamo default router, 2 starts."""
    mds = [load.model_arrays(p, 5) for p in PAPER]
    wl = load.workload(PAPER[0])
    md = [m for m in mds for _ in GRID]
    md = load.Model(*(np.stack([getattr(m, f) for m in md]) for f in load.Model._fields))
    n = len(md.pa)
    wl_n = load.Workload(*(np.broadcast_to(a, (n,) + a.shape) for a in wl))
    c = np.tile(GRID, len(PAPER))
    res = load.solve(md, wl_n, policies.dynamo(), c, starts=2)
    return c, res


def test_closed_loop_littles_law(paper_grid):
    c, res = paper_grid
    assert res.converged.all()
    # X·R = C to 1e-9 (float64), R recomputed from the model at the returned point
    np.testing.assert_array_less(res.little_residual, 1e-9)
    np.testing.assert_allclose(res.throughput * res.latency, np.repeat(c[:, None], 2, 1), rtol=1e-9)
    # throughput increases with C and saturates; latency increases
    thr = res.throughput[:, 0].reshape(3, -1)
    lat = res.latency[:, 0].reshape(3, -1)
    assert (np.diff(thr, axis=1) > 0).all() and (np.diff(lat, axis=1) > 0).all()
    # tail ordering
    assert (res.ttft_p50 <= res.ttft_p90).all() and (res.ttft_p90 <= res.ttft_p99).all()


def test_extra_starts_duplicates_and_bound():
    """Extra starts stopped as duplicates report the first start's equilibrium, which running
    them to convergence reaches too; ``extra_iters`` bounds them; bad values are rejected."""
    labels, pol = load.router_settings(taus=(0.5,), omegas=(1.0,))
    md = load.model_arrays("llama70b-1p5d")
    wl = load.workload_variants("llama70b-1p5d", 4, seed=3)
    c = np.array([32.0, 128.0, 256.0, 384.0])
    b = lambda t: jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (4,) + np.shape(a)), t)
    pol4 = type(pol)(
        **{f: np.repeat(np.asarray(getattr(pol, f)), 4) for f in pol.__dataclass_fields__}
    )
    wl4 = load.Workload(*(np.asarray(a) for a in wl))
    fast = load.solve(b(md), wl4, pol4, c, starts=2)
    full = load.solve(b(md), wl4, pol4, c, starts=2, dup_tol=0.0, extra_iters=400)
    assert not full.duplicate.any() and fast.converged.all()
    d = fast.duplicate[:, 1]
    assert d.any()
    np.testing.assert_array_equal(fast.throughput[d, 1], fast.throughput[d, 0])
    ok = full.converged[:, 1] & d
    np.testing.assert_allclose(full.throughput[ok, 1], fast.throughput[ok, 1], rtol=1e-9)
    assert (fast.iterations[:, 1] <= 64).all()
    np.testing.assert_array_less(fast.little_residual, 1e-9)
    for bad in ({"extra_iters": 0}, {"dup_tol": -1.0}):
        with pytest.raises(InputError):
            load.solve(b(md), wl4, pol4, c, starts=2, **bad)


def test_closed_loop_independent_recompute(paper_grid):
    # Little's law re-checked outside the solver: SC of the returned flow equals C.
    import jax.numpy as jnp

    c, res = paper_grid
    md = load.model_arrays(PAPER[0], 5)
    wl = load.workload(PAPER[0])
    for i in range(len(GRID)):
        x = res.throughput[i, 0] * wl.mix[:, None] * res.shares[i, 0]
        sc = float(load.social_cost(
            load.Model(*map(jnp.asarray, md)), load.Workload(*map(jnp.asarray, wl)), jnp.asarray(x),
            exact=True,  # the closed loop uses the exact singular wait (it stays below capacity)
        ))  # fmt: skip
        assert sc == pytest.approx(c[i], rel=1e-9)


def test_open_loop_matches_closed_loop(paper_grid):
    c, res = paper_grid
    lam = res.throughput[:3, 0]
    r = load.open_loop("llama70b-1p2d", lam, policies.dynamo())
    np.testing.assert_allclose(r.latency, res.latency[:3, 0], rtol=1e-6)


def test_kv_capacity_cliff_in_itl():
    # Shrink HBM so that ~40 sequences fit: ITL beyond the cliff grows by B/B_max.
    import dataclasses

    p = serving.preset("llama70b-1p2d")
    small = dataclasses.replace(p, gpu=dataclasses.replace(p.gpu, hbm_bytes=20e9), name="tiny")
    co = serving.coefficients(small)
    assert co.decode_bmax[0] < 50
    r = load.closed_loop(small, [8.0, 512.0], policies.dynamo())
    assert r.decode_batch[1] > co.decode_bmax[0]
    assert r.itl[1] > 2 * r.itl[0]


def test_load_bad_inputs():
    with pytest.raises(InputError, match=r"concurrency\[1\] = -4.0"):
        load.closed_loop("llama70b-1p2d", [8.0, -4.0])
    with pytest.raises(InputError, match="does not exist"):
        load.closed_loop("gpt5-1p2d", [8.0])


# --------------------------------------------------------------------------- CLI and plot


@pytest.fixture(scope="module")
def cli_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("serving")
    code = cli.main(
        ["sweep", "--preset", "llama70b-1p2d", "--concurrency", "32,512", "--variants", "2",
         "--seed", "3", "--out", str(out)]
    )  # fmt: skip
    return code, out


def test_cli_sweep_preset_end_to_end(cli_sweep, capsys):
    code, out = cli_sweep
    assert code == 0
    t = pq.read_table(os.path.join(out, "results.parquet")).to_pydict()
    for col in ("concurrency", "throughput", "ttft_p99", "itl", "regime", "knee", "poa"):
        assert col in t
    # 2 loads × 2 workload variants × (16 Dynamo settings + selfish + load-balanced)
    assert len(t["poa"]) == 2 * 2 * 18
    assert sorted(set(t["variant"])) == [0, 1]
    assert min(t["poa"]) >= 1.0
    s = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert s["variants"] == 2
    d = s["per_topology_policy"][0]
    assert d["topology"] == "llama70b-1p2d" and len(d["poa"]) == 2
    assert d["knee_interval"] is None or len(d["knee_interval"]) == 2
    # the largest PoA over the variants is at least their mean, at every load
    assert np.all(np.asarray(d["poa_max_over_variants"]) >= np.asarray(d["poa"]) - 1e-12)
    assert len(s["per_topology"][0]["poa_spread_across_settings"]) == 2


def test_cli_plot_writes_png(cli_sweep):
    code, out = cli_sweep
    assert cli.main(["plot", str(out)]) == 0
    png = os.path.join(out, "poa_ttft.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_shades_the_knee_interval_of_the_title():
    """The amber band is the knee interval the title states, slack below, saturated above
    (it used to be the knee point's own cell, which need not overlap the interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from poa_jax import plot

    conc = [64.0, 128.0, 256.0, 384.0, 512.0]
    fig, ax = plt.subplots()
    plot._shade(ax, conc, ["slack", "slack", "slack", "knee", "saturated"], [256.0, 384.0])
    spans = {}
    for patch in ax.patches:
        x0, width = patch.get_x(), patch.get_width()  # axvspan: a rectangle, x in data units
        spans[matplotlib.colors.to_hex(patch.get_facecolor())] = (x0, x0 + width)
    plt.close(fig)
    assert spans[plot._SHADE["knee"]] == (256.0, 384.0)
    assert spans[plot._SHADE["slack"]][1] == 256.0
    assert spans[plot._SHADE["saturated"]][0] == 384.0


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[1]", "not a serving sweep summary"),
        ("null", "not a serving sweep summary"),
        ('{"kind": "serving_closed_loop"}', "per_topology: missing or not an array"),
        (
            '{"kind": "serving_closed_loop", "per_topology": [], '
            '"per_topology_policy": [{"topology": "t"}]}',
            "per_topology_policy[0]: missing policy, concurrency",
        ),
    ],
)
def test_cli_plot_refuses_a_damaged_summary(tmp_path, capsys, content, expected):
    """A summary.json that is not a serving sweep's object is one error line and status 2,
    not a traceback."""
    (tmp_path / "summary.json").write_text(content, encoding="utf-8")
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poa-jax: error: ") and len(err.splitlines()) == 1
    assert expected in err


def test_cli_preset_sweep_refuses_scenario_only_flags(tmp_path, capsys):
    for extra in (["--part", "1"], ["--no-merge"]):
        args = ["sweep", "--preset", "llama70b-1p2d", "--out", str(tmp_path)] + extra
        assert cli.main(args) == 2
        assert f"{extra[0]}: applies to scenario sweeps, not to --preset" in capsys.readouterr().err


def test_cli_bad_inputs(tmp_path, capsys):
    assert cli.main(["sweep", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "does not exist: must be one of" in capsys.readouterr().err
    assert cli.main(["sweep", "--preset", "llama70b-1p2d", "--concurrency", "8,x"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    assert cli.main(["sweep", "--concurrency", "8,16"]) == 2
    assert cli.main(["sweep", "--variants", "2"]) == 2
    assert "--variants: needs --preset NAME" in capsys.readouterr().err
    for opt, bad in (("--variants", "0"), ("--seed", "-1")):
        assert cli.main(["sweep", "--preset", "llama70b-1p2d", opt, bad]) == 2
        assert f"{opt} = {bad}: must be ≥ " in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path)]) == 2


# --------------------------------------------------------------------------- coordinated optimum


def _little_rate(md, wl, shares, c):
    """X with SC(X·π·S) = C, by scipy's brentq on the model's social cost (no solver code)."""
    import jax.numpy as jnp
    from scipy.optimize import brentq

    m, w = load.Model(*map(jnp.asarray, md)), load.Workload(*map(jnp.asarray, wl))
    s = jnp.asarray(shares)
    g = lambda x: float(load.social_cost(m, w, x * w.mix[:, None] * s)) - c
    return brentq(g, 1e-6, 1e5, xtol=1e-13, rtol=1e-15)


def test_optimum_beats_every_whole_class_assignment():
    """SC is non-convex along class exchanges: on identical decode workers the uniform routing
    is a stationary saddle (the old optimum, reported converged). The optimum must converge and
    be at least as good as every whole-class assignment (brute force, 2^5) and beat uniform."""
    import itertools

    name = "nemotron340b-1p2d"
    md = load.model_arrays(name)
    wls = load.workload_variants(name, 4, seed=0)
    c = np.array([32.0, 128.0, 128.0, 256.0])
    wl = load.Workload(*(np.asarray(a) for a in wls))
    b = lambda t: jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (4,) + np.shape(a)), t)
    sel = jax.tree_util.tree_map(lambda a: np.full(4, float(a)), policies.selfish())
    res, _ = load.pick(load.solve(b(md), wl, sel, c, optimum=True, starts=2), "best")
    assert res.converged.all()
    np.testing.assert_array_less(res.little_residual, 1e-9)
    j = wl.tokens.shape[-1]
    for i in range(4):
        wl_i = load.Workload(*(a[i] for a in wl))
        uni = _little_rate(md, wl_i, np.full((j, 2), 0.5), c[i])
        brute = max(
            _little_rate(md, wl_i, np.eye(2)[list(a)], c[i])
            for a in itertools.product(range(2), repeat=j)
        )
        assert res.throughput[i] >= brute * (1 - 1e-9)
        assert res.throughput[i] > uni * (1 + 1e-5)


def test_optimum_converges_on_near_identical_workers():
    """llama70b-1p2d's decode workers differ only in KV link: the descent from spread starts
    crept along the class-exchange ridge (gap ~1e-5, 1–30% converged at C = 64…256)."""
    name = "llama70b-1p2d"
    n = 12
    md = load.model_arrays(name)
    wl = load.Workload(*(np.asarray(a) for a in load.workload_variants(name, n, seed=0)))
    c = np.tile([64.0, 128.0, 192.0, 256.0], n // 4)
    b = lambda t: jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (n,) + np.shape(a)), t)
    sel = jax.tree_util.tree_map(lambda a: np.full(n, float(a)), policies.selfish())
    res, _ = load.pick(load.solve(b(md), wl, sel, c, optimum=True, starts=2), "best")
    assert res.converged.mean() >= 0.9
    np.testing.assert_array_less(res.little_residual, 1e-9)


def test_serving_sweep_log_is_called(tmp_path):
    # run_serving_sweep documented a log callable and never called it.
    lines = []
    serving_sweep.run_serving_sweep(
        "llama70b-1p2d", [32.0, 512.0], tmp_path, include_baselines=False, log=lines.append
    )
    assert len(lines) == 2
    assert lines[0].startswith("solved 32 equilibria") and "2 optima" in lines[0]
    assert "results.parquet (32 rows)" in lines[1]


# --------------------------------------------------------------------------- audited constants


def test_llama70b_parameter_count_from_config_shape():
    # meta-llama/Llama-3.1-70B config.json: vocab 128 256, hidden 8192, intermediate 28 672,
    # 80 layers, 64 heads, 8 KV heads of 128, untied embeddings (the Hub's safetensors total).
    h, kv, ffn, vocab = 8192, 8 * 128, 28672, 128256
    layer = 2 * h * h + 2 * h * kv + 3 * h * ffn + 2 * h  # q, o; k, v; gate/up/down; 2 norms
    assert topo.LLAMA_3_1_70B.parameters == 80 * layer + 2 * vocab * h + h == 70_553_706_496


@pytest.mark.parametrize(
    ("gpu", "mib"),
    [(topo.B200, 183_359), (serving.H100, 81_559), (serving.H200, 143_771), (serving.A100, 81_920)],
)
def test_hbm_bytes_is_the_visible_capacity(gpu, mib):
    # gpu_memory_utilization multiplies the capacity CUDA reports (nvidia-smi's total, in MiB):
    # every GPUSpec in the same unit, within 1.5% (B200 192e9 vs 192.3e9 bytes).
    assert gpu.hbm_bytes == pytest.approx(mib * 2**20, rel=0.015)


def test_variants_change_every_gpu_dependent_field():
    b200 = serving.coefficients("llama70b-1p2d")
    for suffix, gpu in (("h100", serving.H100), ("h200", serving.H200), ("a100", serving.A100)):
        p = serving.preset(f"llama70b-1p2d-{suffix}")
        co = serving.coefficients(p)
        w = 2.0 if suffix == "a100" else 1.0
        assert p.model.weight_bytes_per_param == p.model.kv_bytes_per_value == w
        n_par, kv_tok = topo.LLAMA_3_1_70B.parameters, 80 * 8 * 128 * 2 * w
        assert co.decode_alpha[0] == pytest.approx(n_par * w / (4 * gpu.hbm_bandwidth * 0.7))
        assert co.decode_gamma[0] == pytest.approx(2 * n_par / (4 * gpu.flops * 0.4))
        free = 4 * gpu.hbm_bytes * 0.9 - n_par * w
        assert co.decode_bmax[0] == math.floor(free / (kv_tok * 256))
        assert co.kv_sec_per_token[1] == pytest.approx(kv_tok / (4 * gpu.nic_bandwidth))
        assert co.decode_bmax[0] < b200.decode_bmax[0]
