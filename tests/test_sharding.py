"""The lane axis sharded over every local device ≡ one device (issue 6).

A subprocess starts JAX with 8 host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``;
the flag must be set before JAX starts, so it cannot run in this process) and runs
``tests/sharded_worker.py``: the same 200 cache-on games solved sharded and on one device, with
compaction on in both (small ``COMPACT_ABOVE``), and the tiny scenario swept both ways.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.scenarios import TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    toml = tmp_path_factory.mktemp("sharding") / "tiny.toml"
    toml.write_text(TINY.replace('dtype = "float32"', 'dtype = "float64"'))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sharded_worker", "200", str(toml)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_host_devices_and_a_mesh(sharded):
    assert sharded["devices"] == 8 and sharded["mesh"] == 8


def test_sharded_solve_equals_one_device(sharded):
    d = sharded["diff"]
    # Same lanes, same iterations and statuses; the floats agree to rounding (XLA vectorises a
    # block of 25 lanes differently from one of 200, so the last bits may differ).
    assert d["eq_iterations"] == 0 and d["status"] == 0
    assert d["poa"] <= 1e-7
    assert d["eq_flows"] <= 1e-7 and d["opt_flows"] <= 1e-6
    assert sharded["converged"] > 0.9


def test_sharded_sweep_equals_one_device(sharded):
    assert sharded["sweep_rows"] == 12
    assert sharded["sweep_other_columns_equal"]
    assert sharded["sweep_max_diff"] <= 1e-9
