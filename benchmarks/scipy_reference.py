r"""An independent per-instance reference for the routing game, in NumPy and SciPy only.

Nothing here imports poa_jax's cost code: the model of DESIGN §2.1–2.2 is written out again,
with hand-derived derivatives, so that agreement with poa_jax is evidence, not a tautology.
:func:`instance` only *reads* fields out of a batched :class:`poa_jax.RoutingGame`.

The model, for one instance with classes ``j`` and (existing) workers ``k``::

    ℓ_k(w)  = a + b·w + c·w^p + d·w/(κ − w)               (w ≤ w̄ = ρ_max·κ; linear above,
                                                          value and slope matched at w̄)
    E_k     = r_k·(1 + X_k/M_k),   X_k = Σ_j x_jk          (eviction pressure)
    h_jk    = η_j·x_jk / (x_jk + E_k)                      (cache hit fraction)
    n_jk    = L_j·(1 − h_jk),      W_k = Σ_j x_jk·n_jk     (uncached tokens, prefill work)
    c_jk    = ℓ_k(W_k) + s_k(n_jk),  s_k(n) = a_p + b_p·n + c_p·n²
    SC(x)   = Σ_jk x_jk·c_jk

Everything is separable by worker (column ``k`` of ``c`` depends only on column ``k`` of ``x``).
Writing ``A_j = η_j/(x_j + E)²`` and ``e' = r/M`` for one column (worker index dropped),

    ∂h_j/∂x_i = A_j·(δ_ij·E − x_j·e')
    ∂W/∂x_i   = n_i − x_i·L_i·A_i·E + e'·Σ_j x_j²·L_j·A_j
    ∂c_j/∂x_i = ℓ'(W)·∂W/∂x_i − s'(n_j)·L_j·∂h_j/∂x_i
    ∂SC/∂x_i  = ℓ(W) + X·ℓ'(W)·∂W/∂x_i + s(n_i)
                − x_i·s'(n_i)·L_i·A_i·E + e'·Σ_j x_j²·s'(n_j)·L_j·A_j

(all analytic; checked against central differences in ``tests/test_bench_smoke.py``).

Solvers, each on one instance:

* :func:`optimum` — ``min SC`` by SLSQP (analytic gradient, linear equality constraints
  ``Σ_k x_jk = d_j``, bounds ``x ≥ 0``, ``ftol`` 1e-15 on ``SC/SC(x0)``), restarted from its
  own result while that lowers the marginal-cost gap ``(Σ x·∇SC − Σ_j d_j·min_k ∇SC_jk)/SC``,
  then polished by ``trust-constr`` if the gap is still above ``tol``. SC need not be convex
  with the cache term, so this is a KKT point (a local optimum) reached from the start.
* :func:`equilibrium` — the Wardrop equilibrium of the *true* cost ``c`` (not a potential game
  once the cache term is on), i.e. the complementarity system ``0 ≤ x_jk ⊥ c_jk − μ_j ≥ 0``,
  ``Σ_k x_jk = d_j``, to relative gap ``(Σ x·c − Σ_j d_j·min_k c_jk)/Σ x·c ≤ tol``. Written in
  Fischer–Burmeister form ``φ(a, b) = a + b − √(a² + b²) = 0`` and solved by
  ``scipy.optimize.least_squares`` (Levenberg–Marquardt, analytic Jacobian of ``c``, an element
  of the generalized Jacobian of ``φ``). From a uniform start LM alone stalls at a non-zero
  local minimum of ``‖φ‖²`` on about a third of these instances (many equilibria, some
  unstable), so it runs as a Newton polish after stages of scaled projection dynamics (NumPy)
  that bring the gap to 1e-3, then 1e-5, then ``tol``. Equilibria need not be unique; this
  finds the stable one the best-response dynamics reach from ``x0``.

Returned flows are clipped at 0 and each class rescaled to its demand exactly before the gap is
measured, so the reported gap is that of a feasible point.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
from scipy import optimize

__all__ = [
    "Instance",
    "Result",
    "instance",
    "uniform_start",
    "greedy_start",
    "true_cost",
    "social_cost",
    "social_cost_grad",
    "cost_jacobian",
    "equilibrium_gap",
    "optimum_gap",
    "equilibrium",
    "optimum",
]


@dataclasses.dataclass(frozen=True)
class Instance:
    """One routing game as NumPy float64 arrays; only existing workers are kept.

    Class fields ``(J,)``: ``demand, tokens, shareable``. Worker fields ``(K,)``: latency
    ``a, b, c, p, d, kappa, rho_max``, prefill ``pa, pb, pc``, ``residency, cache_size``, and
    ``workers``, the indices of these workers in the original (padded) worker axis.
    """

    demand: np.ndarray
    tokens: np.ndarray
    shareable: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    p: np.ndarray
    d: np.ndarray
    kappa: np.ndarray
    rho_max: np.ndarray
    pa: np.ndarray
    pb: np.ndarray
    pc: np.ndarray
    residency: np.ndarray
    cache_size: np.ndarray
    workers: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.demand.shape[0], self.a.shape[0]


def instance(games, i: int | None = None) -> Instance:
    """Instance ``i`` of a ``RoutingGame`` batched along one leading axis (``None``: unbatched).

    A field with two or more axes is indexed at ``i``; a field with fewer is shared by the batch
    and broadcast (``RoutingGame``'s rule: the last axis is the class/worker axis). Only
    attribute access is used, so any object with the ``RoutingGame`` field names works.
    """

    def field(v, dtype=np.float64):
        a = np.asarray(v, dtype=dtype)
        return a[i] if (i is not None and a.ndim >= 2) else a

    demand = field(games.demand)
    J = demand.shape[-1]
    lat, pre = games.latency, games.prefill
    per_worker = {
        "a": lat.a, "b": lat.b, "c": lat.c, "p": lat.p, "d": lat.d, "kappa": lat.kappa,
        "rho_max": lat.rho_max, "pa": pre.a, "pb": pre.b, "pc": pre.c,
        "residency": games.residency, "cache_size": games.cache_size,
    }  # fmt: skip
    arrays = {n: field(v) for n, v in per_worker.items()}
    mask = field(games.worker_mask, bool)
    K = np.broadcast_shapes(*(np.shape(a) for a in arrays.values()), np.shape(mask))[-1]
    keep = np.flatnonzero(np.broadcast_to(mask, (K,)))
    workers = {n: np.broadcast_to(a, (K,))[keep].copy() for n, a in arrays.items()}
    return Instance(
        demand=demand.copy(),
        tokens=np.broadcast_to(field(games.tokens), (J,)).copy(),
        shareable=np.broadcast_to(field(games.shareable), (J,)).copy(),
        workers=keep,
        **workers,
    )


def uniform_start(inst: Instance) -> np.ndarray:
    """Every class spread evenly over the workers, ``(J, K)``."""
    J, K = inst.shape
    return np.repeat(inst.demand[:, None] / K, K, axis=1)


def greedy_start(inst: Instance) -> np.ndarray:
    """Classes in decreasing order of demand, each wholly on its cheapest worker, ``(J, K)``.

    "Cheapest" is the true cost of the class on that worker given the classes already placed
    (ties to the lower index), as a system filling up from empty would route them. This is the
    start poa_jax's equilibrium solver uses by default; re-implemented here from that
    description so that both sides can start from the same point.
    """
    J, K = inst.shape
    x = np.zeros((J, K))
    for j in np.argsort(-inst.demand, kind="stable"):
        cost = np.empty(K)
        for k in range(K):
            trial = x.copy()
            trial[j, k] = inst.demand[j]
            cost[k] = true_cost(inst, trial)[j, k]
        x[j, int(np.argmin(cost))] = inst.demand[j]
    return x


# --------------------------------------------------------------------------- the model


def _latency(inst: Instance, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ℓ(w)`` and ``ℓ'(w)`` per worker, ``w ≥ 0``, with the linear continuation past ``w̄``."""
    finite = np.isfinite(inst.kappa)
    k = np.where(finite, inst.kappa, 1.0)
    dd = np.where(finite, inst.d, 0.0)
    wbar = np.where(finite, inst.rho_max * k, np.inf)
    wc = np.minimum(w, wbar)
    over = np.where(finite, w - wc, 0.0)
    ws = np.where(finite, wc, 0.0)
    gap = k - ws
    wp1 = np.power(wc, inst.p - 1.0)  # p ≥ 1: 0^0 = 1 is the right slope at 0 for p = 1
    val = inst.a + inst.b * wc + inst.c * wc * wp1 + dd * ws / gap
    der = inst.b + inst.c * inst.p * wp1 + dd * k / gap**2
    return val + der * over, der


def _terms(inst: Instance, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate of the model at ``x (J, K)`` (clipped at 0)."""
    x = np.maximum(x, 0.0)
    L = inst.tokens[:, None]
    eta = inst.shareable[:, None]
    load = x.sum(0)  # X_k
    inv_m = np.where(np.isfinite(inst.cache_size), 1.0 / inst.cache_size, 0.0)
    e = inst.residency * (1.0 + load * inv_m)  # E_k
    de = inst.residency * inv_m  # e'_k = ∂E_k/∂x_ik
    h = eta * x / (x + e)
    A = eta / (x + e) ** 2
    n = L * (1.0 - h)
    w = np.sum(x * n, axis=0)
    ell, dell = _latency(inst, w)
    s = inst.pa + inst.pb * n + inst.pc * n**2
    ds = inst.pb + 2.0 * inst.pc * n
    # ∂W_k/∂x_ik, (J, K)
    dw = n - x * L * A * e + de * np.sum(x**2 * L * A, axis=0)
    return dict(x=x, L=L, load=load, e=e, de=de, h=h, A=A, n=n, w=w, ell=ell, dell=dell, s=s,
                ds=ds, dw=dw)  # fmt: skip


def true_cost(inst: Instance, x: np.ndarray) -> np.ndarray:
    """``c_jk = ℓ_k(W_k) + s_k(n_jk)``, ``(J, K)``."""
    t = _terms(inst, x)
    return t["ell"][None, :] + t["s"]


def social_cost(inst: Instance, x: np.ndarray) -> float:
    """``SC(x) = Σ x·c``."""
    x = np.maximum(x, 0.0)
    return float(np.sum(x * true_cost(inst, x)))


def social_cost_grad(inst: Instance, x: np.ndarray) -> np.ndarray:
    """Analytic ``∇SC``, ``(J, K)`` (derivation in the module docstring)."""
    t = _terms(inst, x)
    x, L, A, e, de, ds = t["x"], t["L"], t["A"], t["e"], t["de"], t["ds"]
    cache = -x * ds * L * A * e + de * np.sum(x**2 * ds * L * A, axis=0)
    return t["ell"][None, :] + (t["load"] * t["dell"])[None, :] * t["dw"] + t["s"] + cache


def cost_jacobian(inst: Instance, x: np.ndarray) -> np.ndarray:
    """Analytic ``∂c_jk/∂x_il``, ``(J, K, J, K)``; zero unless ``l = k`` (separable)."""
    t = _terms(inst, x)
    x, L, A, e, de, ds = t["x"], t["L"], t["A"], t["e"], t["de"], t["ds"]
    J, K = x.shape
    eye = np.eye(J)
    # blocks[k, j, i] = ℓ'_k·∂W_k/∂x_ik − s'_jk·L_j·A_jk·(δ_ij·E_k − x_jk·e'_k)
    dh = A.T[:, :, None] * (eye[None] * e[:, None, None] - (x.T * de[:, None])[:, :, None])
    blocks = t["dell"][:, None, None] * t["dw"].T[:, None, :] - (ds * L).T[:, :, None] * dh
    jac = np.zeros((J, K, J, K))
    ks = np.arange(K)
    jac[:, ks, :, ks] = blocks
    return jac


def equilibrium_gap(inst: Instance, x: np.ndarray) -> float:
    """``(Σ x·c − Σ_j d_j·min_k c_jk) / Σ x·c``, clipped at 0."""
    c = true_cost(inst, x)
    total = float(np.sum(np.maximum(x, 0.0) * c))
    best = float(np.sum(inst.demand * c.min(1)))
    return max(total - best, 0.0) / max(abs(total), np.finfo(float).tiny)


def optimum_gap(inst: Instance, x: np.ndarray) -> float:
    """``(Σ x·∇SC − Σ_j d_j·min_k ∇SC_jk) / SC``, clipped at 0."""
    g = social_cost_grad(inst, x)
    lin = float(np.sum(np.maximum(x, 0.0) * g))
    best = float(np.sum(inst.demand * g.min(1)))
    return max(lin - best, 0.0) / max(social_cost(inst, x), np.finfo(float).tiny)


def _feasible(inst: Instance, x: np.ndarray) -> np.ndarray:
    """Clip at 0 and rescale each class to its demand (uniform where a row vanished)."""
    x = np.maximum(np.asarray(x, np.float64), 0.0)
    tot = x.sum(1, keepdims=True)
    uni = uniform_start(inst)
    safe = np.where(tot > 0, tot, 1.0)
    return np.where(tot > 0, x * inst.demand[:, None] / safe, uni)


# --------------------------------------------------------------------------- solvers


@dataclasses.dataclass(frozen=True)
class Result:
    """One solve.

    Attributes:
      flows: ``(J, K)`` feasible flow (existing workers only).
      social_cost: ``SC(flows)``.
      gap: the relative gap of the problem solved (equilibrium or marginal-cost gap).
      success: ``gap ≤ tol`` and everything finite.
      seconds: wall-clock time of the solve (perf_counter).
      evaluations: cost evaluations: SciPy's ``nfev`` over all calls, plus the iterations of
        the projection dynamics (equilibrium).
      rounds: SciPy solver calls made (restarts and polishes included).
      message: the last solver message.
    """

    flows: np.ndarray
    social_cost: float
    gap: float
    success: bool
    seconds: float
    evaluations: int
    rounds: int
    message: str


def optimum(
    inst: Instance, x0: np.ndarray | None = None, tol: float = 1e-6, *, max_rounds: int = 3
) -> Result:
    """A (local) social optimum near ``x0`` by SLSQP with the analytic gradient, to gap ``tol``.

    The objective is divided by ``SC(x0)`` so that SLSQP's absolute ``ftol`` (1e-15) is a
    relative one. SLSQP restarts from its own result while that still lowers the marginal-cost
    gap (up to ``max_rounds`` calls); if the gap is still above ``tol``, ``trust-constr`` (interior
    point, BFGS Hessian) polishes the best point.
    """
    t0 = time.perf_counter()
    J, K = inst.shape
    x = _feasible(inst, uniform_start(inst) if x0 is None else x0)
    scale = max(social_cost(inst, x), 1e-300)
    fun = lambda z: social_cost(inst, z.reshape(J, K)) / scale
    jac = lambda z: social_cost_grad(inst, z.reshape(J, K)).ravel() / scale
    rows = np.kron(np.eye(J), np.ones((1, K)))
    cons = [{"type": "eq", "fun": lambda z: rows @ z - inst.demand, "jac": lambda z: rows}]
    bounds = [(0.0, None)] * (J * K)
    nfev, msg, rounds = 0, "", 0
    gap = optimum_gap(inst, x)
    while gap > tol and rounds < max_rounds:
        rounds += 1
        res = optimize.minimize(
            fun, x.ravel(), jac=jac, method="SLSQP", bounds=bounds, constraints=cons,
            options=dict(ftol=1e-15, maxiter=2000),
        )  # fmt: skip
        nfev += int(res.nfev)
        msg = f"SLSQP: {res.message}"
        cand = _feasible(inst, res.x.reshape(J, K))
        g = optimum_gap(inst, cand)
        if not (np.isfinite(g) and g < gap):
            break  # no progress: a restart from the same point would repeat itself
        x, gap = cand, g
    if gap > tol:
        rounds += 1
        with warnings.catch_warnings():  # BFGS's "delta_grad == 0" notice near convergence
            warnings.simplefilter("ignore", UserWarning)
            res = optimize.minimize(
                fun, x.ravel(), jac=jac, method="trust-constr",
                bounds=optimize.Bounds(0.0, np.inf),
                constraints=[optimize.LinearConstraint(rows, inst.demand, inst.demand)],
                options=dict(gtol=1e-12, xtol=1e-14, maxiter=3000),
            )  # fmt: skip
        nfev += int(res.nfev)
        msg = f"trust-constr: {res.message}"
        cand = _feasible(inst, res.x.reshape(J, K))
        g = optimum_gap(inst, cand)
        if np.isfinite(g) and g < gap:
            x, gap = cand, g
    sc = social_cost(inst, x)
    ok = bool(np.isfinite(sc) and gap <= tol)
    return Result(x, sc, float(gap), ok, time.perf_counter() - t0, nfev, rounds, msg)


def _fb(a: np.ndarray, b: np.ndarray):
    """Fischer–Burmeister ``φ(a, b)`` and an element of its generalized Jacobian."""
    r = np.hypot(a, b)
    safe = np.where(r > 0, r, 1.0)
    da = np.where(r > 0, 1.0 - a / safe, 1.0 - 2**-0.5)
    db = np.where(r > 0, 1.0 - b / safe, 1.0 - 2**-0.5)
    return a + b - r, da, db


def _fb_system(inst: Instance):
    """Residual and Jacobian of the Fischer–Burmeister system in ``z = (x (J·K), μ (J))``."""
    J, K = inst.shape
    rows = np.kron(np.eye(J), np.ones((1, K)))
    cols = rows.T  # ∂(c_jk − μ_j)/∂μ_j' = −δ_jj'

    def split(z):
        return z[: J * K].reshape(J, K), z[J * K :]

    def res(z):
        x, mu = split(z)
        phi, _, _ = _fb(x, true_cost(inst, x) - mu[:, None])
        return np.concatenate([phi.ravel(), x.sum(1) - inst.demand])

    def jac(z):
        x, mu = split(z)
        _, da, db = _fb(x, true_cost(inst, x) - mu[:, None])
        dc = cost_jacobian(inst, x).reshape(J * K, J * K)
        # Costs are evaluated at max(x, 0): no dependence on negative entries (LM is unbounded
        # and may step there; φ pulls them back to 0).
        dc = dc * (x.ravel() > 0)[None, :]
        top = np.diag(da.ravel()) + db.ravel()[:, None] * dc
        return np.block([[top, -db.ravel()[:, None] * cols], [rows, np.zeros((J, J))]])

    return res, jac, split


def _polish(inst: Instance, x: np.ndarray) -> tuple[np.ndarray, int, str]:
    """Levenberg–Marquardt on the Fischer–Burmeister system from ``x``; (flow, nfev, message)."""
    J, K = inst.shape
    res_fn, jac_fn, split = _fb_system(inst)
    c = true_cost(inst, x)
    # μ_j: the flow-weighted mean cost of the class (its equilibrium cost, up to the gap).
    z0 = np.concatenate([x.ravel(), (x * c).sum(1) / np.maximum(inst.demand, 1e-300)])
    try:
        sol = optimize.least_squares(
            res_fn, z0, jac=jac_fn, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
            max_nfev=20 * (J * K + J),
        )  # fmt: skip
    except (ValueError, np.linalg.LinAlgError) as err:  # non-finite model values
        return x, 0, f"least_squares: {err}"
    return _feasible(inst, split(sol.x)[0]), int(sol.nfev), f"least_squares: {sol.message}"


def _project(v: np.ndarray, demand: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Rows of ``v (J, K)`` onto ``{y ≥ 0, Σ_k y_k = d_j}`` in the metric ``Σ s·(y − v)²``.

    ``y = max(0, v − λ_j/s)``; ``λ_j`` by bisection, then exactly on the active set found.
    """
    sv = s * v
    hi = sv.max(1)
    lo = sv.min(1) - demand * s.max(1)
    for _ in range(64):
        lam = 0.5 * (lo + hi)
        big = np.maximum(v - lam[:, None] / s, 0.0).sum(1) > demand
        lo, hi = np.where(big, lam, lo), np.where(big, hi, lam)
    act = v - (0.5 * (lo + hi))[:, None] / s > 0
    lam = (np.where(act, v, 0.0).sum(1) - demand) / np.where(act, 1.0 / s, 0.0).sum(1)
    return np.maximum(v - lam[:, None] / s, 0.0)


def _dynamics(inst: Instance, x: np.ndarray, target: float, max_iters: int):
    """Scaled projection dynamics ``x ← P_s(x − α·c/s)`` until the gap is ≤ ``target``.

    ``s = ℓ'_k(W_k)·n_jk`` (the congestion part of ``∂c_jk/∂x_jk``, floored), so ``α = 1`` is
    a diagonal Newton step; ``α`` is halved when successive steps reverse and grown when they
    agree. It follows the best-response dynamics, hence settles in a *stable* equilibrium.
    Returns the point of smallest gap seen, its gap and the iterations taken.
    """
    demand = np.maximum(inst.demand, 1e-300)
    best, best_gap = x, equilibrium_gap(inst, x)
    prev = np.zeros_like(x)
    alpha, it = 1.0, 0
    while best_gap > target and it < max_iters:
        it += 1
        t = _terms(inst, x)
        c = t["ell"][None, :] + t["s"]
        s = t["dell"][None, :] * t["n"]
        s = np.maximum(s, max(s.max(), 1.0) * 1e-8)
        # Subtracting each row's mean cost changes nothing but keeps c/s well scaled.
        step = c - ((x * c).sum(1) / demand)[:, None]
        y = _project(x - alpha * step / s, inst.demand, s)
        dx = y - x
        norm = np.sqrt(np.sum(s * dx**2) * np.sum(s * prev**2))
        cos = np.sum(s * dx * prev) / max(norm, 1e-300)
        alpha = float(np.clip(alpha * (0.5 if cos < 0 else 1.2 if cos > 0.5 else 1.0), 1e-3, 1.0))
        x, prev = y, dx
        g = equilibrium_gap(inst, x)
        if np.isfinite(g) and g < best_gap:
            best, best_gap = x, g
    return best, best_gap, it


def equilibrium(
    inst: Instance, x0: np.ndarray | None = None, tol: float = 1e-6, *, max_iters: int = 20000
) -> Result:
    """The Wardrop equilibrium of the true cost reached from ``x0``, to relative gap ``tol``.

    Levenberg–Marquardt on the Fischer–Burmeister system alone stalls at non-zero local minima of
    its merit function on most of these instances (positive externality: many equilibria, some
    unstable), so it is used as a Newton polish: stages of projection dynamics (NumPy) to a gap
    of 1e-3, then 1e-5, then ``tol``, each followed by ``scipy.optimize.least_squares`` from the
    best point so far; the first point with gap ≤ ``tol`` is returned. ``max_iters`` bounds the
    dynamics' iterations over all stages.
    """
    t0 = time.perf_counter()
    x = _feasible(inst, uniform_start(inst) if x0 is None else x0)
    gap = equilibrium_gap(inst, x)
    nfev, rounds, msg, used = 0, 0, "", 0
    for target in sorted({max(t, tol) for t in (1e-3, 1e-5)} | {tol}, reverse=True):
        if gap <= tol:
            break
        x, gap, its = _dynamics(inst, x, target, max_iters - used)
        used += its
        nfev += its
        msg = f"dynamics: {its} iterations to gap {gap:.1e}"
        if gap <= tol:
            break
        rounds += 1
        cand, n, msg = _polish(inst, x)
        nfev += n
        g = equilibrium_gap(inst, cand)
        if np.isfinite(g) and g < gap:
            x, gap = cand, g
    sc = social_cost(inst, x)
    ok = bool(np.isfinite(sc) and gap <= tol)
    return Result(x, sc, float(gap), ok, time.perf_counter() - t0, nfev, rounds, msg)
