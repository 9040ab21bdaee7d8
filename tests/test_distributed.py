"""A two-process JAX job (``jax.distributed`` on localhost, CPU) ≡ the single-process sweep.

Two subprocesses make the job: process 0 is ``poa-jax sweep --distributed`` (the CLI) and
process 1 ``tests/distributed_worker.py`` (the README's Python form). Each solves its own parts
of the tiny scenario (process ``i`` of ``n`` takes parts ``i, i + n, …``), then process 0
merges them. A third runs the same sweep with the plain CLI. The merged tables must be
identical.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pyarrow.parquet as pq

from tests import background
from tests.scenarios import TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@background.job
def runs(d):
    """The two-process and the single-process sweeps (beside the suite: tests/background.py)."""
    toml = d / "tiny.toml"
    toml.write_text(TINY)
    # One device per process on both sides (the plain CLI would split the CPU into one device
    # per core, which changes float32 last bits, not the sweep).
    env = dict(os.environ, JAX_PLATFORMS="cpu", POA_JAX_CPU_DEVICES="1")
    env.pop("XLA_FLAGS", None)
    address = f"localhost:{_free_port()}"
    cli = [sys.executable, "-m", "poa_jax.cli", "sweep", str(toml), "--out", str(d / "two"),
           "--chunk", "4", "--part", "4", "--no-progress", "--distributed",
           "--coordinator", address, "--num-processes", "2", "--process-id", "0"]  # fmt: skip
    worker = [sys.executable, "-m", "tests.distributed_worker", address, "2", "1", str(toml),
              str(d / "two")]  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd in (cli, worker)
    ]
    single = subprocess.run(
        [sys.executable, "-m", "poa_jax.cli", "sweep", str(toml), "--out", str(d / "one"),
         "--chunk", "4", "--part", "4", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-2000:] for x in logs)
    assert single.returncode == 0, single.stderr[-2000:]
    return d, logs


def test_each_process_solved_its_own_parts(runs):
    d, logs = runs
    assert f"results: {d / 'two' / 'results.parquet'}" in logs[0]  # the CLI, process 0
    assert "process 1/2 done; rows None" in logs[1]
    s = json.loads((d / "two" / "summary.json").read_text())
    per = s["wall_time_s"]["per_process"]
    assert [p["parts_computed"] for p in per] == [2, 1]  # parts 0, 2 and part 1 of 3
    assert s["wall_time_s"]["parts_computed"] == 3 and s["device"]["processes"] == 2


def test_two_processes_equal_one(runs):
    d, _ = runs
    two = pq.read_table(d / "two" / "results.parquet")
    one = pq.read_table(d / "one" / "results.parquet")
    assert two.num_rows == 12 and two.equals(one)
    s2 = json.loads((d / "two" / "summary.json").read_text())
    s1 = json.loads((d / "one" / "summary.json").read_text())
    assert s2["per_topology_policy"] == s1["per_topology_policy"]


def test_parts_folder_of_two_processes_reads_as_a_dataset(runs):
    import pyarrow.dataset

    d, _ = runs
    parts = d / "two" / "parts"
    names = sorted(p.name for p in parts.iterdir() if not p.name.startswith("part-"))
    assert names == ["_manifest.json", "_process-0000.json", "_process-0001.json"]
    table = pyarrow.dataset.dataset(str(d / "two") + "/parts").to_table()  # as README says
    assert table.sort_by("point").equals(pq.read_table(d / "two" / "results.parquet"))


def test_distributed_options_are_checked_before_joining(capsys):
    from poa_jax import cli

    cases = {
        ("--num-processes", "2"): "--num-processes: needs --distributed",
        ("--distributed", "--preset", "llama70b-1p2d"): "--distributed: not with --preset",
        ("--distributed", "--num-processes", "0"): "--num-processes = 0: must be an integer >= 1",
        ("--distributed", "--num-processes", "2", "--process-id", "2"): (
            "--process-id = 2: must be an integer in 0 .. --num-processes - 1"
        ),
    }
    for args, message in cases.items():
        assert cli.main(["sweep", *args]) == 2
        assert message in capsys.readouterr().err
