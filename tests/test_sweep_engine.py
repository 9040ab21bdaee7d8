"""The sweep engine at scale: lazy expansion, variants and seeds, crash-safe resume, memory.

The solver-free tests replace ``price_of_anarchy`` with the benchmark's stub, so they exercise the
engine alone (expansion, columns, parts, summary, merge) in milliseconds per part.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import tracemalloc

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

import poa_jax as pj
from benchmarks.bench_sweep import stub_price_of_anarchy
from poa_jax import scenario as S
from poa_jax import sweep
from tests.scenarios import TINY


def _tiny(**changes) -> S.Scenario:
    sc = S.Scenario.from_dict(__import__("tomllib").loads(TINY), source="tiny.toml")
    return dataclasses.replace(sc, **changes)


VARIANTS = (
    S.WorkloadVariant("base"),
    S.WorkloadVariant("long", tokens=(256.0, 2048.0), mix=(0.5, 0.5)),
)


# --------------------------------------------------------------------------- expansion


def test_any_chunk_is_built_as_in_the_full_batch():
    sc = _tiny(variants=VARIANTS, seeds=S.SeedAxis(count=3, jitter=0.2, seed=5))
    assert sc.axes == {"topology": 2, "variant": 2, "seed": 3, "load": 3, "policy": 2}
    full = sc.build()
    idx = np.random.default_rng(0).choice(sc.num_points, 17, replace=False)
    part = sc.build(idx)
    for a, b in zip(
        jax.tree_util.tree_leaves((full.game, full.policy)),
        jax.tree_util.tree_leaves((part.game, part.policy)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a)[idx], b)
    for k, col in full.labels.columns.items():
        np.testing.assert_array_equal(col[idx], part.labels.columns[k])  # NaN equals NaN here
    np.testing.assert_array_equal(part.points, idx)


def test_index_order_and_labels():
    sc = _tiny(variants=VARIANTS, seeds=S.SeedAxis(count=3, jitter=0.2))
    b = sc.build()
    t, v, s, u, p = np.unravel_index(np.arange(sc.num_points), sc.shape)
    c = b.labels.columns
    assert list(c["policy"][:2]) == sc.policy_labels()  # policy fastest
    np.testing.assert_array_equal(c["seed"], s)
    assert list(c["variant"][v == 1][:1]) == ["long"]
    np.testing.assert_array_equal(c["utilisation"], sc.load.utilisation()[u])
    np.testing.assert_allclose(c["demand_total"], b.game.demand.sum(-1))
    # Variant "long" replaces the class tokens and mix.
    np.testing.assert_array_equal(b.game.tokens[v == 1][0], [256.0, 2048.0])
    # Offered prompt tokens are utilisation × (jittered) capacity at every point.
    kappa = np.where(b.game.worker_mask, b.game.latency.kappa, 0).sum(-1)
    offered = (b.game.demand * b.game.tokens).sum(-1)
    np.testing.assert_allclose(offered, c["utilisation"] * kappa, rtol=1e-12)


def test_seeds_jitter_deterministically_and_zero_jitter_is_the_base():
    sc = _tiny(seeds=S.SeedAxis(count=2, jitter=0.0))
    b = sc.build()
    _, _, s, _, _ = np.unravel_index(np.arange(sc.num_points), sc.shape)
    np.testing.assert_array_equal(b.game.demand[s == 0], b.game.demand[s == 1])
    j = _tiny(seeds=S.SeedAxis(count=2, jitter=0.3, seed=1))
    b1, b2 = j.build(), j.build()
    np.testing.assert_array_equal(b1.game.latency.kappa, b2.game.latency.kappa)
    assert not np.array_equal(b1.game.demand[s == 0], b1.game.demand[s == 1])
    # A scenario without variants and seeds keeps the hash it had before they existed.
    assert _tiny().hash() == _tiny(seeds=S.SeedAxis()).hash()
    assert _tiny().hash() != j.hash()


def test_a_hundred_million_points_expand_lazily():
    sc = _tiny(seeds=S.SeedAxis(count=8_333_334, jitter=0.1))
    assert sc.num_points >= 10**8
    tracemalloc.start()
    b = sc.build(np.arange(sc.num_points - 1000, sc.num_points))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert b.game.demand.shape == (1000, 2) and b.labels[999].seed == 8_333_333
    assert peak < 5e6  # a chunk's worth, not the sweep's


def test_policy_grid_and_variants_from_toml(tmp_path):
    text = TINY.split("[[policies]]")[0] + (
        '[[policy_grid]]\nname = "dynamo"\nomega = [0.1, 1.0]\ntau = [0.0, 0.8]\n\n'
        '[[variants]]\nname = "chatty"\nmix = [0.9, 0.1]\n\n'
        "[seeds]\ncount = 2\njitter = 0.05\n\n"
        '[solver]\nstarts = 2\ndtype = "float32"\n'
    )
    path = tmp_path / "grid.toml"
    path.write_text(text)
    sc = S.load_scenario(path)
    assert [p.kwargs() for p in sc.policies] == [
        {"omega": 0.1, "tau": 0.0},
        {"omega": 0.1, "tau": 0.8},
        {"omega": 1.0, "tau": 0.0},
        {"omega": 1.0, "tau": 0.8},
    ]
    assert sc.variant_names() == ["chatty"] and sc.seeds.count == 2
    # Round trip through to_dict keeps the identity.
    assert S.Scenario.from_dict(sc.to_dict()).hash() == sc.hash()


@pytest.mark.parametrize(
    "extra, expected",
    [
        ('[[variants]]\nname = "v"\nmix = [1.0]\n', "variants[0].mix"),
        ('[[variants]]\nname = "v"\ntokens = [1.0, -2.0]\n', "variants[0].tokens[1]"),
        ('[[variants]]\nname = "v"\ncolour = "red"\n', "variants[0].colour: unknown key"),
        ("[seeds]\ncount = 0\n", "seeds.count"),
        ("[seeds]\njitter = -0.1\n", "seeds.jitter"),
        ('[[policy_grid]]\nname = "dynamo"\nomega = []\n', "policy_grid[0].omega"),
    ],
)
def test_bad_axes_are_named(tmp_path, extra, expected):
    path = tmp_path / "bad.toml"
    path.write_text(TINY + "\n" + extra)
    with pytest.raises(pj.InputError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        S.load_scenario(path)


# --------------------------------------------------------------------------- engine alone


@pytest.fixture
def stubbed(monkeypatch):
    monkeypatch.setattr(sweep, "price_of_anarchy", stub_price_of_anarchy)


def _peak_during(fn) -> int:
    return _memory_of(fn)[0]


def _memory_of(fn) -> tuple[int, int]:
    """(peak, retained after a full collection) of the Python heap while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        return peak, current
    finally:
        tracemalloc.stop()


def test_numpy_integers_of_a_python_scenario_reach_summary_json(stubbed, tmp_path):
    """A Python scenario computing its axes with NumPy (workers from np.arange): the sweep
    solved every part, then failed writing summary.json (int64 is not JSON serializable)."""
    d = __import__("tomllib").loads(TINY)
    d["topologies"] = [{"name": f"{k}D", "workers": k} for k in np.arange(1, 3)]
    d["seeds"] = {"count": np.int64(2), "seed": np.int64(3), "jitter": 0.1}
    d["solver"]["starts"] = np.int64(2)
    res = sweep.run_sweep(S.Scenario.from_dict(d), tmp_path / "np", progress=False)
    assert res.table.num_rows == 24
    summary = json.loads((tmp_path / "np" / "summary.json").read_text())
    assert [g["workers"] for g in summary["per_topology_policy"]] == [1, 1, 2, 2]
    assert summary["axes"]["seed"]["seed"] == 3 and summary["solver"]["starts"] == 2


def test_overloaded_from_is_the_lowest_overloaded_load(tmp_path, monkeypatch):
    """load.values in any order: overloaded_from was the first overloaded value in the file's
    order (1.0 for [1.0, 0.3, 0.7] overloaded from 0.7)."""

    def stub(game, policy, **kw):
        res = stub_price_of_anarchy(game, policy, **kw)
        util = np.asarray(game.demand).sum(-1) / demand_at_one
        res.equilibrium.overloaded = util > 0.5
        return res

    sc = _tiny(load=S.LoadAxis(values=(1.0, 0.3, 0.7)))
    demand_at_one = sc.build(np.arange(2)).labels.columns["demand_total"][0]
    sc = dataclasses.replace(sc, topologies=sc.topologies[:1])
    monkeypatch.setattr(sweep, "price_of_anarchy", stub)
    res = sweep.run_sweep(sc, tmp_path, progress=False)
    assert [g["overloaded_from"] for g in res.summary["per_topology_policy"]] == [0.7, 0.7]


def test_host_memory_is_flat_in_the_number_of_parts(stubbed, tmp_path):
    def run(seeds):
        sc = _tiny(seeds=S.SeedAxis(count=seeds, jitter=0.1))
        return lambda: sweep.run_sweep(
            sc, tmp_path / str(seeds), chunk_size=8, part_size=16, progress=False, merge=False
        )

    run(3)()  # lazy imports and first-call caches, outside the measurement
    small, large = _memory_of(run(10)), _memory_of(run(200))  # 8 vs 150 parts
    # Nothing is kept per part: what survives a collection does not grow with the parts, and
    # the peak (which includes garbage not yet collected) grows far less than the 19× the
    # parts do.
    assert large[1] < small[1] + 20_000, (small, large)
    assert large[0] < 3 * small[0], (small, large)


def test_summary_streams_means_over_replicates(stubbed, tmp_path):
    sc = _tiny(variants=VARIANTS, seeds=S.SeedAxis(count=3, jitter=0.2))
    res = sweep.run_sweep(sc, tmp_path, chunk_size=8, part_size=8, progress=False)
    cols = res.table.to_pydict()
    s = res.summary
    assert s["points"] == sc.num_points == res.table.num_rows
    assert s["shape"] == {"topologies": 2, "variants": 2, "seeds": 3, "loads": 3, "policies": 2}
    g = s["per_topology_policy"][0]
    rows = [
        i
        for i in range(res.table.num_rows)
        if cols["topology"][i] == g["topology"] and cols["policy"][i] == g["policy"]
    ]
    for m, u in enumerate(s["utilisation"]):
        at = [cols["poa"][i] for i in rows if cols["utilisation"][i] == u]
        assert len(at) == 6 and g["poa"][m] == pytest.approx(np.mean(at), rel=1e-12)
        assert g["poa_max_over_replicates"][m] == pytest.approx(max(at), rel=1e-12)
    assert g["replicates"] == 6


# --------------------------------------------------------------------------- resume


def test_crash_mid_write_resumes_to_the_identical_table(tmp_path, monkeypatch):
    sc = _tiny(variants=VARIANTS)  # 24 points: 6 parts of 4
    kw = dict(chunk_size=4, part_size=4, progress=False)
    clean = sweep.run_sweep(sc, tmp_path / "clean", **kw)

    out = tmp_path / "crashed"
    real_write = sweep.pq.write_table
    writes = []

    def dying_write(table, where, *a, **k):
        writes.append(where)
        if len(writes) == 3:  # the third part: half a file, then the process dies
            real_write(table, where, *a, **k)
            with open(where, "r+b") as f:
                f.truncate(os.path.getsize(where) // 2)
            raise KeyboardInterrupt
        return real_write(table, where, *a, **k)

    monkeypatch.setattr(sweep.pq, "write_table", dying_write)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(sc, out, **kw)
    monkeypatch.setattr(sweep.pq, "write_table", real_write)
    parts = sorted(p.name for p in (out / "parts").iterdir())
    assert parts[:2] == ["_manifest.json", "part-000000.parquet"]
    assert "part-000002.parquet" not in parts  # the killed write never got its final name
    assert not (out / "results.parquet").exists()
    # A part cut short by something other than this engine (a copy, a full disk): redone too.
    half = out / "parts" / "part-000001.parquet"
    half.write_bytes(half.read_bytes()[:100])

    res = sweep.run_sweep(sc, out, **kw)
    wt = res.summary["wall_time_s"]
    assert wt["parts_reused"] == 1 and wt["parts_computed"] == 5
    assert not [p for p in os.listdir(out / "parts") if ".tmp-" in p]
    assert res.table.equals(clean.table)
    assert pq.read_table(out / "results.parquet").equals(clean.table)
    strip = lambda s: {k: v for k, v in s.items() if k != "wall_time_s"}  # noqa: E731
    assert strip(res.summary) == strip(clean.summary)


def test_a_hundred_million_point_sweep_starts_in_bounded_memory(tmp_path, monkeypatch):
    sc = _tiny(seeds=S.SeedAxis(count=8_333_334, jitter=0.1))
    calls = []

    def three_chunks(*a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return stub_price_of_anarchy(*a, **k)

    monkeypatch.setattr(sweep, "price_of_anarchy", three_chunks)

    def run():
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(sc, tmp_path, chunk_size=1024, part_size=2048, progress=False)

    peak = _peak_during(run)
    assert peak < 50e6, peak
    # The first part was finished and kept; the second was interrupted and left nothing.
    assert sorted(os.listdir(tmp_path / "parts")) == ["_manifest.json", "part-000000.parquet"]


def test_cli_prints_the_summary_table_for_replicated_sweeps(stubbed, tmp_path, capsys):
    from poa_jax import cli

    path = tmp_path / "seeds.toml"
    path.write_text(TINY + "\n[seeds]\ncount = 5\njitter = 0.05\n")
    rc = cli.main([
        "sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress", "--chunk", "8",
        "--part", "16",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "60 points = 2 topologies x 1 variants x 5 seeds x 3 loads x 2 policies" in out
    assert "1D (1 worker) · selfish" in out and "PoA max" in out
    assert len(list((tmp_path / "o" / "parts").glob("part-*.parquet"))) == 4


# --------------------------------------------------------------------------- the output folder


def test_parts_folder_reads_as_the_readme_says(stubbed, tmp_path):
    import pyarrow.dataset

    sc = _tiny(variants=VARIANTS)  # 24 points: 6 parts of 4
    out = tmp_path / "x"
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=4, progress=False)
    DIR = str(out)
    table = pyarrow.dataset.dataset(DIR + "/parts").to_table()  # exactly as README says
    assert table.num_rows == 24 and table.sort_by("point").equals(res.table)
    # A folder of an older version (manifest.json, process-NNNN.json) resumes, and is renamed.
    (out / "parts" / "_manifest.json").rename(out / "parts" / "manifest.json")
    (out / "parts" / "process-0001.json").write_text('{"parts_computed": 3}')
    again = sweep.run_sweep(sc, out, chunk_size=4, part_size=4, progress=False)
    assert again.summary["wall_time_s"]["parts_reused"] == 6
    assert [f for f in os.listdir(out / "parts") if not f.startswith("part-")] == ["_manifest.json"]
    assert pyarrow.dataset.dataset(DIR + "/parts").to_table().num_rows == 24


def _mtimes(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_another_scenario_is_refused_before_solving_and_overwrite_discards(stubbed, tmp_path):
    sc = _tiny()
    out = tmp_path / "o"
    sweep.run_sweep(sc, out, chunk_size=4, part_size=4, progress=False)
    before = _mtimes(out)
    other = _tiny(load=S.LoadAxis(values=(0.3, 0.7, 0.9)))
    for changed, what in [
        (other, "load.values[2]: 1.0 there, 0.9 here"),
        (sc.with_solver(dtype="float64"), "solver.dtype: 'float32' there, 'float64' here"),
    ]:
        with pytest.raises(pj.InputError) as err:
            sweep.run_sweep(changed, out, chunk_size=4, part_size=4, progress=False)
        assert str(err.value) == (
            f"{out} holds parts of another scenario ({what}); pass --overwrite to discard them, "
            "or choose another --out"
        )
    with pytest.raises(pj.InputError, match="holds parts of 4 points, not 8; pass --part 4"):
        sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    assert _mtimes(out) == before  # nothing solved, written or removed

    notes = []
    res = sweep.run_sweep(
        other, out, chunk_size=4, part_size=4, progress=False, overwrite=True, log=notes.append
    )
    assert notes == [
        f"--overwrite: discarding 3 part(s) in {out / 'parts'}, and results.parquet and "
        f"summary.json in {out}"
    ]
    assert res.summary["wall_time_s"]["parts_computed"] == 3
    assert pq.read_table(out / "results.parquet")["utilisation"].to_pylist()[-1] == 0.9
    # Parts of the same sweep are still reused under overwrite.
    res = sweep.run_sweep(other, out, chunk_size=4, part_size=4, progress=False, overwrite=True)
    assert res.summary["wall_time_s"]["parts_reused"] == 3


def test_overwrite_also_drops_stale_results_without_parts(stubbed, tmp_path):
    out = tmp_path / "o"
    sweep.run_sweep(_tiny(), out, chunk_size=4, part_size=4, progress=False, merge=False)
    (out / "results.parquet").write_bytes(b"stale")
    for p in (out / "parts").iterdir():
        p.unlink()
    other = _tiny(load=S.LoadAxis(values=(0.3, 0.7, 0.9)))
    with pytest.raises(pj.InputError, match="holds the results of another scenario"):
        sweep.run_sweep(other, out, chunk_size=4, progress=False, merge=False)
    sweep.run_sweep(other, out, chunk_size=4, progress=False, merge=False, overwrite=True)
    assert not (out / "results.parquet").exists()  # not of this scenario: gone, not mixed


def test_resume_keeps_the_folders_chunk_size(stubbed, tmp_path):
    sc = _tiny(variants=VARIANTS)
    out = tmp_path / "o"
    first = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    (out / "parts" / "part-000001.parquet").unlink()
    notes = []
    res = sweep.run_sweep(sc, out, part_size=8, progress=False, log=notes.append)
    assert notes == [
        f"{out} was started with --chunk 4: resuming with it (pass --chunk N --overwrite to "
        "start over with another)"
    ]
    assert res.summary["chunk_points"] == 4 and res.table.equals(first.table)
    assert res.summary["wall_time_s"]["parts_computed"] == 1
    (out / "parts" / "part-000000.parquet").unlink()  # no --part either: the folder's, too
    notes.clear()
    res = sweep.run_sweep(sc, out, progress=False, log=notes.append)
    assert notes == [
        f"{out} was started with --chunk 4: resuming with it (pass --chunk N --overwrite to "
        "start over with another); resuming with --part 8"
    ]
    assert res.table.equals(first.table) and res.summary["wall_time_s"]["parts_computed"] == 1
    with pytest.raises(pj.InputError) as err:
        sweep.run_sweep(sc, out, chunk_size=8, part_size=8, progress=False)
    assert str(err.value).startswith(f"--chunk = 8: {out} was started with --chunk 4 (")
    assert "pass --chunk 4 (or no --chunk) to resume, --overwrite to start over" in str(err.value)
    res = sweep.run_sweep(sc, out, chunk_size=8, part_size=8, progress=False, overwrite=True)
    assert res.summary["chunk_points"] == 8 and res.summary["wall_time_s"]["parts_computed"] == 3


def test_a_rerun_removes_temporaries_of_a_crashed_merge(stubbed, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    stale = ["results.parquet.tmp-4242", "summary.json.tmp-17"]
    kept = ["results.parquet.tmp-x", "my.summary.json.tmp-1", "notes.txt"]
    for f in stale + kept:
        (out / f).write_text("x")
    sweep.run_sweep(_tiny(), out, chunk_size=4, part_size=4, progress=False)
    assert sorted(os.listdir(out)) == sorted(kept + ["parts", "results.parquet", "summary.json"])


# --------------------------------------------------------------------------- progress


class _Bar:
    """Stands in for tqdm: records the postfix at every solved chunk."""

    bars: list = []

    def __init__(self, total, **_):
        self.total, self.n, self.posts = total, 0, []
        _Bar.bars.append(self)

    def set_postfix_str(self, s, refresh=True):
        self.posts.append(s)

    def update(self, k):
        self.n += k

    def close(self):
        pass

    @staticmethod
    def format_interval(t):
        return f"{t:.0f}s"


def test_converged_share_updates_per_chunk(tmp_path, monkeypatch):
    import tqdm.auto

    calls = []

    def second_call_fails(*a, **k):
        res = stub_price_of_anarchy(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            res.equilibrium.converged = np.zeros_like(res.equilibrium.converged)
        return res

    monkeypatch.setattr(sweep, "price_of_anarchy", second_call_fails)
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.bars = []
    sweep.run_sweep(_tiny(), tmp_path, chunk_size=4, part_size=8, progress=True)  # 8 + 4 points
    shares = [p.split("converged=")[1].split(",")[0] for p in _Bar.bars[0].posts]
    assert shares == ["100%", "50%", "67%"]  # 4/4, 4/8, 8/12: one per chunk of 4


def test_rate_counts_only_points_solved_in_this_run(stubbed, tmp_path, monkeypatch, capsys):
    sc = _tiny(variants=VARIANTS)  # 24 points: 6 parts of 4
    sweep.run_sweep(sc, tmp_path, chunk_size=4, part_size=4, progress=False)
    (tmp_path / "parts" / "part-000003.parquet").unlink()
    clock = [0.0]

    def one_second_per_chunk(*a, **k):
        clock[0] += 1.0
        return stub_price_of_anarchy(*a, **k)

    monkeypatch.setattr(sweep, "price_of_anarchy", one_second_per_chunk)
    monkeypatch.setattr(sweep.time, "perf_counter", lambda: clock[0])
    capsys.readouterr()
    sweep.run_sweep(sc, tmp_path, chunk_size=4, part_size=4, progress=True)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    # 4 points solved in 1 s; the 20 reused ones are done, not speed.
    assert "24/24" in last and "4.0 pt/s, 00:00 left" in last and "reused=20" in last, last
    capsys.readouterr()
    sweep.run_sweep(sc, tmp_path, chunk_size=4, part_size=4, progress=True)  # all reused
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "pt/s" not in last and "reused=24" in last, last


def test_rate_and_time_left_leave_out_the_first_chunks_compile(
    stubbed, tmp_path, monkeypatch, capsys
):
    """The first chunk compiles: a rate over it would promise 30× the time left here."""
    sc = _tiny(variants=VARIANTS)  # 24 points: 6 chunks of 4
    clock, calls = [0.0], []

    def first_call_compiles(*a, **k):
        calls.append(1)
        clock[0] += 30.0 if len(calls) == 1 else 1.0
        return stub_price_of_anarchy(*a, **k)

    monkeypatch.setattr(sweep, "price_of_anarchy", first_call_compiles)
    monkeypatch.setattr(sweep.time, "perf_counter", lambda: clock[0])
    sweep.run_sweep(sc, tmp_path, chunk_size=4, part_size=12, progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "24/24" in last and "4.0 pt/s" in last, last  # 20 points in 5 s after the compile
    # the postfix along the way (tqdm prints it at its own intervals): one chunk is all there
    # is to go by; from the second on, 4 points a second
    from tqdm import tqdm

    p = sweep._Progress(24, tqdm.format_interval)
    p.solved(_FakeTable(4), 30.0)
    p.first_chunk(4, 30.0)
    assert p.text().startswith("0.1 pt/s, 02:30 left"), p.text()
    p.solved(_FakeTable(4), 31.0)
    assert p.text().startswith("4.0 pt/s, 00:04 left"), p.text()


class _FakeTable:
    def __init__(self, rows):
        self.num_rows = rows

    def column(self, name):
        import pyarrow as pa

        return pa.chunked_array([[True] * self.num_rows])


def test_a_folder_solved_on_another_device_layout_is_refused(stubbed, tmp_path, monkeypatch):
    """The lanes per device change the float rounding (in float32 the default scenario's optimum
    moved by up to 1.9% in PoA between 1 and 2 CPU devices): a resume on another layout would
    mix the two, so it is refused, naming both layouts and how to resume."""
    sc = _tiny()
    out = tmp_path / "o"
    first = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    manifest = json.loads((out / "parts" / sweep.MANIFEST).read_text())
    assert manifest["layout"] == sweep._layout()
    was = manifest["layout"]
    other = dict(was, devices=was["devices"] + 1)
    monkeypatch.setattr(sweep, "_layout", lambda: other)
    notes = []  # every part there: nothing to solve, nothing to mix
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False, log=notes.append)
    assert res.table.equals(first.table) and res.summary["wall_time_s"]["parts_computed"] == 0
    assert notes == [f"{out}: solved on {sweep._describe(was)}; every part is there, reusing them"]
    assert json.loads((out / "parts" / sweep.MANIFEST).read_text())["layout"] == was
    (out / "parts" / "part-000000.parquet").unlink()
    with pytest.raises(pj.InputError) as err:
        sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    msg = str(err.value)
    assert f"was solved on {was['devices']} cpu device(s) per process" in msg
    assert f"this run has {other['devices']} cpu device(s) per process" in msg
    assert f"POA_JAX_CPU_DEVICES={was['devices']}" in msg and "--overwrite" in msg
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False, overwrite=True)
    assert (
        res.summary["wall_time_s"]["parts_computed"]
        == first.summary["wall_time_s"]["parts_computed"]
    )
    monkeypatch.undo()
    monkeypatch.setattr(sweep, "price_of_anarchy", stub_price_of_anarchy)
    manifest = json.loads((out / "parts" / sweep.MANIFEST).read_text())
    del manifest["layout"]  # a folder from before the layout was recorded: resumed as before
    (out / "parts" / sweep.MANIFEST).write_text(json.dumps(manifest))
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    assert res.summary["wall_time_s"]["parts_computed"] == 0


def test_a_folder_solved_by_another_solver_revision_is_not_mixed(stubbed, tmp_path):
    """Parts solved before a change of the solvers' numbers (SOLVER_REVISION) are not mixed
    with parts solved after: a folder with every part is reused, with a note; one still to
    finish is refused, saying how to start over. A manifest without the key is revision 1."""
    sc = _tiny()
    out = tmp_path / "o"
    first = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    path = out / "parts" / sweep.MANIFEST
    manifest = json.loads(path.read_text())
    assert manifest["solver_revision"] == sweep.SOLVER_REVISION
    del manifest["solver_revision"]  # written before the revision was recorded
    path.write_text(json.dumps(manifest))
    notes = []
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False, log=notes.append)
    assert res.table.equals(first.table) and res.summary["wall_time_s"]["parts_computed"] == 0
    assert notes == [
        f"{out}: solved by solver revision 1 (this poa-jax: {sweep.SOLVER_REVISION}); every "
        "part is there, reusing them"
    ]
    assert json.loads(path.read_text())["solver_revision"] == 1
    (out / "parts" / "part-000000.parquet").unlink()
    with pytest.raises(pj.InputError, match="holds parts solved by solver revision 1") as err:
        sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    assert "--overwrite" in str(err.value)
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False, overwrite=True)
    assert res.table.equals(first.table)
    assert json.loads(path.read_text())["solver_revision"] == sweep.SOLVER_REVISION


def test_a_folder_being_written_is_locked(stubbed, tmp_path):
    """Two single-process runs into one folder: the second is refused while the first holds
    the lock; a lock whose process is gone is taken over; the lock goes when the run ends,
    also when it fails."""
    import socket
    import subprocess
    import sys

    sc = _tiny()
    out = tmp_path / "o"
    lock = out / sweep.LOCK
    out.mkdir()
    host = socket.gethostname()
    lock.write_text(json.dumps({"host": host, "pid": os.getppid()}))  # a live process
    with pytest.raises(pj.InputError) as err:
        sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    assert f"{out} is being written by another poa-jax sweep (PID {os.getppid()})" in str(err.value)
    assert not (out / "parts").exists()  # refused before anything was written
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(pj.InputError, match=f"on host elsewhere.*remove {lock}"):
        sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lock.write_text(json.dumps({"host": host, "pid": int(gone.stdout)}))  # its run is gone
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=8, progress=False)
    assert res.table.num_rows == sc.num_points and not lock.exists()
    with pytest.raises(pj.InputError, match="--chunk 4"):  # refused inside: lock released
        sweep.run_sweep(sc, out, chunk_size=8, part_size=8, progress=False)
    assert not lock.exists()
