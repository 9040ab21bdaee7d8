"""Subprocess checks that run beside the suite, one at a time, while the other tests run.

Some checks need a JAX process of their own: eight host devices (``XLA_FLAGS`` must be set
before JAX starts), a two-process ``jax.distributed`` job, loop modes read from the environment
at import. Each costs 15–70 s, nearly all of it XLA compiling on one thread, while the main
pytest process also compiles on one thread: on CI's two cores one core idled through them.

A check is written as a *job*, a function of a scratch directory that runs its subprocesses and
returns what the tests need; :func:`job` registers it and makes a session fixture of the same
name that returns that value. When collection finishes, ``tests/conftest.py`` starts the jobs
whose fixtures the selected tests use (so ``pytest -k`` starts only what it needs), in the order
of their first test, on **one** worker thread: at most one job's processes compete with the
main process. A fixture whose job was not started (it was requested some other way) runs it in
place. An exception in a job (a failed ``assert``, a timeout) is raised again by its fixture,
so the tests that use it error with the job's message.

Under pytest-xdist nothing is started ahead: a worker collects every test but runs only those it
is sent, so each job runs in place in the worker whose test needs it, while the other workers
keep the other cores busy.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_JOBS: dict[str, Callable[[Path], Any]] = {}
_started: dict[str, concurrent.futures.Future] = {}
_dirs: list[Path] = []
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def job(fn: Callable[[Path], Any]):
    """Register ``fn(scratch_dir) → value`` as a background job; returns a session fixture
    named like ``fn`` whose value is ``fn``'s result (assign it to that name in the module)."""
    name = fn.__name__
    if name in _JOBS and _JOBS[name] is not fn:
        raise ValueError(f"background job {name!r} is defined twice")
    _JOBS[name] = fn

    @pytest.fixture(scope="session", name=name)
    def _fixture():
        return result(name)

    _fixture.__doc__ = fn.__doc__
    return _fixture


def _run(name: str) -> Any:
    d = Path(tempfile.mkdtemp(prefix=f"poa_jax_{name}_"))
    _dirs.append(d)
    return _JOBS[name](d)


def start(names) -> None:
    """Queue the jobs ``names`` (in this order) on the worker thread; unknown names are ignored."""
    global _pool
    for name in names:
        if name in _JOBS and name not in _started:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="poa_jax_job")
            _started[name] = _pool.submit(_run, name)


def jobs_used_by(items) -> list[str]:
    """The registered jobs among the fixtures of ``items``, in order of first use."""
    seen: dict[str, None] = {}
    for item in items:
        for f in getattr(item, "fixturenames", ()):
            if f in _JOBS:
                seen.setdefault(f, None)
    return list(seen)


def result(name: str) -> Any:
    """The value of job ``name``: waits for it if queued, else runs it here."""
    fut = _started.get(name)
    return _run(name) if fut is None else fut.result()


def finish() -> None:
    """Drop the jobs not yet begun, wait for the running one, remove the scratch directories."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None
    for d in _dirs:
        shutil.rmtree(d, ignore_errors=True)
    _dirs.clear()
    _started.clear()
