"""Eager input checks: every bad field is named, with its index and the rule it breaks.

Runs on the host (NumPy) before anything is traced or compiled, so a bad batch of a million
games fails in microseconds with a message such as
``RoutingGame.latency.kappa[1, 0] = -2.0: must be > 0 (inf allowed)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from poa_jax.errors import InputError

__all__ = ["as_array", "check", "RULES", "integer", "number"]


def as_array(name: str, value, dtype=np.float64, *, booleans: bool = False) -> np.ndarray:
    """``np.asarray(value, dtype)`` with an :class:`InputError` naming ``name`` on failure.

    Strings are refused (NumPy would read ``"1.0"`` as 1.0, so a field read from a text file
    unparsed would pass), and so are booleans unless ``booleans`` (a mask): ``True`` is not a
    rate or a cost."""
    try:
        raw = np.asarray(value)
        kind = raw.dtype.kind
        if kind in "USV" or (kind == "O" and any(isinstance(v, (str, bytes)) for v in raw.flat)):
            raise InputError(f"{name}: must be numbers, got text ({_show(value)})")
        if kind == "b" and not booleans:
            raise InputError(f"{name}: must be numbers, got booleans ({_show(value)})")
        if kind == "c" or (kind == "O" and any(isinstance(v, complex) for v in raw.flat)):
            # NumPy would drop the imaginary part with only a ComplexWarning.
            raise InputError(f"{name}: must be real numbers, got complex ({_show(value)})")
        arr = np.asarray(raw, dtype=dtype)
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: cannot be read as an array of numbers ({e})") from None
    return arr


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite_ge0(a):
    return np.isfinite(a) & (a >= 0)


def _finite_gt0(a):
    return np.isfinite(a) & (a > 0)


def _pos_or_inf(a):
    return ~np.isnan(a) & (a > 0)


def _p(a):
    return np.isfinite(a) & (a >= 1)


def _unit(a):
    return np.isfinite(a) & (a >= 0) & (a <= 1)


def _open_unit(a):
    return np.isfinite(a) & (a > 0) & (a < 1)


def _zero_one(a):
    return (a == 0) | (a == 1)


#: rule name -> (predicate, human text)
RULES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "finite": (np.isfinite, "must be finite"),
    "finite_ge0": (_finite_ge0, "must be finite and >= 0"),
    "finite_gt0": (_finite_gt0, "must be finite and > 0"),
    "pos_or_inf": (_pos_or_inf, "must be > 0 (inf allowed)"),
    "p": (_p, "must be finite and >= 1 (the family is convex only for p >= 1)"),
    "unit": (_unit, "must be in [0, 1]"),
    "open_unit": (_open_unit, "must be in (0, 1)"),
    "zero_one": (_zero_one, "must be a boolean (True/False or 0/1)"),
}


def check(name: str, arr: np.ndarray, rule: str) -> None:
    """Raises :class:`InputError` at the first element of ``arr`` that breaks ``rule``."""
    pred, text = RULES[rule]
    ok = pred(arr)
    if not np.all(ok):
        idx = tuple(int(i) for i in np.argwhere(~ok)[0]) if arr.ndim else ()
        where = f"[{', '.join(map(str, idx))}]" if idx else ""
        value = (arr[idx] if idx else arr).item()
        raise InputError(f"{name}{where} = {value!r}: {text}")


def number(name: str, value) -> float:
    """``float(value)`` with an :class:`InputError` naming ``name`` on failure."""
    # Text is not a number here either (as in :func:`as_array`): float("1e-3") would pass.
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise InputError(f"{name} = {value!r}: must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} = {value!r}: must be a number") from None


#: Largest iteration budget and count: the solvers' loop counters are int32.
INT32_MAX = 2**31 - 1
#: Largest seed (NumPy and JAX take 64-bit seeds).
SEED_MAX = 2**63 - 1
#: Largest number of starts per instance: every start is a lane of its own (memory grows with
#: batch × starts), and 1 024 is far past the point where more starts find anything new.
MAX_STARTS = 1024


def integer(name: str, value, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``: integers and integral floats
    (``3.0``); no bools. ``maximum`` None: no upper bound."""
    text = f"{name} = {value!r}: must be an integer >= {minimum}"
    if maximum is not None:
        text = f"{name} = {value!r}: must be an integer >= {minimum} (and <= {maximum})"
    if isinstance(value, (bool, np.bool_)):
        raise InputError(text)
    if isinstance(value, (int, np.integer)):
        out = int(value)
    else:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise InputError(text) from None
        if not f.is_integer():
            raise InputError(text)
        out = int(f)
    if out < minimum or (maximum is not None and out > maximum):
        raise InputError(text)
    return out
