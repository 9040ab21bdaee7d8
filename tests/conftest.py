"""Test configuration: strict numerics, the ``gpu`` marker, seeded random games.

Strict numerics at import (STYLE 11, as in optimistix's ``tests/conftest.py``): float64 on, and
implicit rank promotion is an error, so a shape bug fails here on the CPU instead of broadcasting
silently on a GPU.

Compile time dominates this suite (one jitted solver costs seconds to compile on CPU, then
milliseconds to run), so the fixtures below fix a few batch shapes that the test files share:

* ``(8, 3, 4)`` — eight games of 3 classes × 4 workers: the scipy reference (no cache term), the
  batched/looped, dtype, policy and overload checks (cache term on);
* ``(64, 5, 6)`` — the cache-on random family for the invariants of ``price_of_anarchy``.

The checks that need JAX processes of their own (8 host devices, a 2-process job, loop modes
read at import) run beside the suite as background jobs (:mod:`tests.background`), started when
collection finishes. Under pytest-xdist (the README's command: ``-n auto --dist loadfile``) the
workers are the parallelism: each runs a job in place when its first test needs it, and the
longest files are sent first (:data:`_LONG_FILES`).

Every compiled XLA CPU executable keeps a few dozen memory mappings alive for as long as JAX's
caches hold it. The suite compiles a few thousand, and a Linux process may hold at most
``vm.max_map_count`` (65 530 by default) mappings: past that, LLVM's next ``mmap`` fails and
the compiler segfaults (CI did, at 92%). ``_release_executables`` clears JAX's caches after a
test module once the process holds more than half its allowance.

On a CPU-only install this process compiles at ``--xla_backend_optimization_level=0`` (unless
the caller's ``XLA_FLAGS`` sets a level): LLVM's optimisation passes are a fifth of the suite's
time. The subprocesses that tests start run at the default level.
"""

from __future__ import annotations

import importlib.util
import os

# Compile time is most of this suite's time, and LLVM's optimisation passes a large share of it:
# this process compiles at -O0. What the tests check (values to tolerances, shapes, statuses,
# compile counts) holds at any level; the subprocesses the tests start (8 host devices, the
# 2-process job, the loop modes: bit-for-bit comparisons of the default build) and the
# benchmarks run at XLA's default level. XLA reads XLA_FLAGS once, at its first compile: the
# flag is set for that compile, below, and taken out of the environment again.
# Only where JAX can have no accelerator (no PJRT plugin installed, or JAX_PLATFORMS=cpu): the
# GPU tests of a lent machine compile as users do.
_CPU_ONLY = os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu" or not any(
    importlib.util.find_spec(m)
    for m in ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")
)
_XLA_FLAGS = os.environ.get("XLA_FLAGS")
if _CPU_ONLY and "xla_backend_optimization_level" not in (_XLA_FLAGS or ""):
    os.environ["XLA_FLAGS"] = f"{_XLA_FLAGS or ''} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

jax.jit(lambda v: v + 1)(1).block_until_ready()  # XLA parses its flags here
if _XLA_FLAGS is None:
    os.environ.pop("XLA_FLAGS", None)
else:
    os.environ["XLA_FLAGS"] = _XLA_FLAGS

import gc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from poa_jax.synthetic import random_games  # noqa: E402
from tests import background  # noqa: E402

#: Batch shape (instances, classes, workers) shared by the small-batch tests.
SMALL = (8, 3, 4)
#: Batch shape of the cache-on invariant family.
LARGE = (64, 5, 6)


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU; skipped on CPU")
    if hasattr(config.option, "loadscopereorder"):
        # pytest-xdist would hand out the files by their number of tests, most first; hand them
        # out in the collection order below instead, the longest to run first.
        config.option.loadscopereorder = False


def pytest_collection_finish(session):
    """Start the subprocess jobs the selected tests use (:mod:`tests.background`).

    Not in a pytest-xdist worker: it collects every test but runs only those it is sent, and the
    other worker is the second core's work; a job runs there in place when a test needs it."""
    if not session.config.option.collectonly and "PYTEST_XDIST_WORKER" not in os.environ:
        background.start(background.jobs_used_by(session.items))


def pytest_sessionfinish(session, exitstatus):
    background.finish()


#: The test files that take longest (their background jobs included), longest first. They run
#: first, so that pytest-xdist's ``--dist loadfile`` (one file to a worker at a time, in this
#: order) ends with short files on both workers: longest-processing-time-first scheduling.
_LONG_FILES = (
    "test_graph.py",
    "test_sharding.py",
    "test_tiered_cache.py",
    "test_cli.py",
    "test_pallas.py",
    "test_bench_smoke.py",
    "test_invariants.py",
    "test_closed_loop.py",
)


def _file_rank(item) -> int:
    name = item.path.name
    return _LONG_FILES.index(name) if name in _LONG_FILES else len(_LONG_FILES)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_rank)  # stable: the order inside a file, and of the others, is kept
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU (jax.devices() has none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _mappings() -> tuple[int, int] | None:
    """(memory mappings this process holds, the kernel's limit), or None off Linux."""
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f), limit
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module", autouse=True)
def _release_executables():
    """After a module, drop JAX's compiled executables if mappings pass half the limit."""
    yield
    held = _mappings()
    if held is not None and held[0] > held[1] // 2:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def make_games():
    """``make_games(seed, batch, classes, workers, cache=...)``: seeded random game batches."""
    return random_games


@pytest.fixture(scope="session")
def plain_games():
    """``SMALL`` batch without the cache term (classic routing games), seed 11."""
    return random_games(11, *SMALL, cache=False)


@pytest.fixture(scope="session")
def cache_games():
    """``SMALL`` batch with the cache term, seed 12."""
    return random_games(12, *SMALL, cache=True)


@pytest.fixture(scope="session")
def cache_games_other():
    """A second ``SMALL`` cache-on batch with different numbers (seed 13), same shapes."""
    return random_games(13, *SMALL, cache=True)


@pytest.fixture(scope="session")
def large_cache_games():
    """``LARGE`` batch with the cache term, seed 0."""
    return random_games(0, *LARGE, cache=True)


class CompileCounter:
    """Counts XLA compilations (``jax.monitoring`` backend-compile events) while registered.

    Independent of how the library arranges its jitted functions: any new executable, for any
    function, counts.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"
    #: JAX's own one-op helpers (host-to-device staging, dtype conversion), not solver code.
    HELPERS = frozenset({"jit(stage)", "jit(convert_element_type)", "jit(broadcast_in_dim)"})

    def __init__(self):
        self.names: list[str] = []

    @property
    def count(self) -> int:
        """Executables compiled so far."""
        return len(self.names)

    @property
    def solver_count(self) -> int:
        """Executables compiled so far, JAX's one-op transfer helpers left out."""
        return sum(n not in self.HELPERS for n in self.names)

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == self.EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))


@pytest.fixture
def compile_counter():
    """A :class:`CompileCounter` registered for the duration of the test."""
    counter = CompileCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(counter)


def take(tree, idx):
    """Instances ``idx`` of a batched pytree (scalar leaves, which broadcast, are kept)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[idx] if np.ndim(a) else a, tree)


@pytest.fixture(scope="session")
def take_instances():
    """``take_instances(game, idx)``: a sub-batch of a batched game (see :func:`take`)."""
    return take
