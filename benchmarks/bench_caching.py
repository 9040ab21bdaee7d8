r"""Throughput and convergence of the batched caching-game solvers, against per-instance NumPy.

Two parts, each timed as a first call (compile + run) on one batch and a steady-state call on
a *different* batch of the same shape (no recompile):

* **Discrete selfish caching** (:mod:`poa_jax.caching`), ``n = 12`` nodes at random points of
  the unit square (Euclidean distances), ``α ~ U(0.2, 1)``, unit demand: best-response dynamics
  from ``S`` starts (empty, full, random) plus the exhaustive enumeration of all ``2¹²`` profiles
  (exact optimum, number of pure equilibria, worst and best: exact PoA and price of stability).
  Reference, per instance: the same starts through a pure-Python best-response loop, and the
  exhaustive optimum / equilibria vectorised over profiles in NumPy (the direct
  ``(2ⁿ, n, n)`` masked minimum) — ``--ref-mitm`` also times a NumPy version of poa_jax's
  meet-in-the-middle algorithm, the strongest per-instance reference we have.
* **Fluid tiered game** (:mod:`poa_jax.tiered_cache`), ``W = 8`` workers × ``T = 4`` tiers ×
  ``B = 256`` blocks: the selfish equilibrium by sequential best response (from the empty
  placement) and the optimum by projected gradient (``--fluid-steps`` steps from the
  equilibrium, or 50 where those lower SC by no more than the optimum's tolerance) polished
  by ``--fluid-sweeps`` passes of coordinated best responses (each worker's SC-minimising
  placement given the others). Reference, per instance: the same algorithms in NumPy (same
  fill, same projection, same step rule, same stop), the coordinated best
  responses by scipy's LP solver (HiGHS).

The reference is timed on the first ``M`` instances of the steady-state batch; its rate is
extrapolated (instances/s = M / time). Agreement with poa_jax on those instances is reported.

Run ``python -m benchmarks.bench_caching --help``; ``--smoke`` is a tiny mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

__all__ = ["main", "run"]


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_caching", description=__doc__.split("\n")[0]
    )
    p.add_argument("--n", type=int, default=12, help="nodes of the discrete game")
    p.add_argument("--instances", type=int, default=10_000, help="discrete batch size N")
    p.add_argument("--starts", type=int, default=8, help="best-response starts per instance")
    p.add_argument("--ref-instances", type=int, default=50, help="M, discrete reference; 0 skips")
    p.add_argument("--ref-mitm", action="store_true", help="also time the NumPy MITM reference")
    p.add_argument("--fluid-instances", type=int, default=1000)
    p.add_argument("--fluid-dims", default="8,4,256", help="W,T,B")
    p.add_argument("--fluid-steps", type=int, default=300, help="optimum descent steps")
    p.add_argument("--fluid-sweeps", type=int, default=10,
                   help="optimum polish: passes of coordinated best responses")  # fmt: skip
    p.add_argument("--fluid-ref-instances", type=int, default=5, help="0 skips the reference")
    p.add_argument(
        "--fluid-dtype", choices=("float32", "float64"), default="float32",
        help="dtype of the batched fluid solver (the NumPy reference is always float64)",
    )  # fmt: skip
    p.add_argument(
        "--fluid-tol", type=float, default=None,
        help="equilibrium gap tolerance of the batched solver; default 1e-9 (the reference's) in "
        "float64, 1e-7 in float32 (float32's TOL, 1e-5, stops up to a round earlier than the "
        "reference: SC off by up to 1e-3; 1e-7 takes the reference's rounds)",
    )  # fmt: skip
    p.add_argument("--skip-fluid", action="store_true")
    p.add_argument("--skip-discrete", action="store_true", help="only the fluid part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny run")
    p.add_argument("--json", type=Path, default=None)
    return p


def _progress(msg):
    print(f"[bench_caching {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# --------------------------------------------------------------------------- discrete


def discrete_batch(seed, n_inst, n):
    rng = np.random.default_rng(seed)
    pts = rng.random((n_inst, n, 2))
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    a = rng.uniform(0.2, 1.0, (n_inst, n))
    return d, a


def ref_br(d, a, x0, max_rounds=100):
    """Pure-Python sequential best response (same order and tie rule as poa_jax)."""
    n = len(a)
    x = list(x0)
    dl = d.tolist()
    al = a.tolist()
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (reported after the loop)
        flips = 0
        for i in range(n):
            near = min((dl[i][j] for j in range(n) if x[j] and j != i), default=float("inf"))
            t = 1e-9 * al[i]  # relative, as poa_jax
            stay, switch = (al[i], near + t) if x[i] else (near, al[i] + t)
            if switch < stay:
                x[i] = not x[i]
                flips += 1
        if flips == 0:
            break
    sc = sum(al[i] if x[i] else min((dl[i][j] for j in range(n) if x[j]), default=float("inf"))
             for i in range(n))  # fmt: skip
    return x, sc, rounds


_BITS = {}


def ref_exhaustive(d, a):
    """NumPy, one instance, vectorised over the 2ⁿ profiles: optimum, NE count, worst, best."""
    n = len(a)
    if n not in _BITS:
        _BITS[n] = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    bits = _BITS[n]
    off = d + np.diag(np.full(n, np.inf))
    near = np.where(bits[:, None, :], off[None], np.inf).min(-1)  # (P, n)
    sc = np.where(bits, a, near).sum(-1)
    t = 1e-9 * a  # relative, as poa_jax
    ne = np.where(bits, near >= a - t, near <= a + t).all(-1)
    return sc.min(), int(ne.sum()), sc[ne].max(), sc[ne].min()


def ref_exhaustive_mitm(d, a):
    """NumPy, one instance, the meet-in-the-middle tables poa_jax uses (12 = 6 + 6 bits)."""
    n = len(a)
    lo = n // 2
    off = d + np.diag(np.full(n, np.inf))
    bl = ((np.arange(2**lo)[:, None] >> np.arange(n)) & 1).astype(bool) & (np.arange(n) < lo)
    bh = ((np.arange(2 ** (n - lo))[:, None] << lo >> np.arange(n)) & 1).astype(bool)
    bh &= np.arange(n) >= lo
    gl = np.where(bl[:, None, :], off[None], np.inf).min(-1)  # (L, n)
    gh = np.where(bh[:, None, :], off[None], np.inf).min(-1)  # (H, n)
    near = np.minimum(gh[:, None], gl[None, :])  # (H, L, n)
    mem = bh[:, None] | bl[None, :]
    sc = np.where(mem, a, near).sum(-1)
    t = 1e-9 * a  # relative, as poa_jax
    ne = np.where(mem, near >= a - t, near <= a + t).all(-1)
    return sc.min(), int(ne.sum()), sc[ne].max(), sc[ne].min()


def run_discrete(args, pj, caching):
    n, N, S = args.n, args.instances, args.starts
    x0s = caching.start_profiles(N, n, S, seed=args.seed + 7)

    def solve(d, a):
        g = pj.SelfishCachingGame(d, a)
        br = caching.best_response(g, x0=x0s)
        ex = caching.enumerate_profiles(g, keep=0)
        return br, ex

    d1, a1 = discrete_batch(args.seed * 1009 + 1, N, n)
    _, first = _timed(lambda: solve(d1, a1))
    d2, a2 = discrete_batch(args.seed * 1009 + 2, N, n)
    (br, ex), steady = _timed(lambda: solve(d2, a2))
    # split of the steady state between the two parts
    _, t_br = _timed(lambda: caching.best_response(pj.SelfishCachingGame(d2, a2), x0=x0s))
    _, t_ex = _timed(lambda: caching.enumerate_profiles(pj.SelfishCachingGame(d2, a2), keep=0))
    _progress(
        f"discrete N={N}: first {first:.1f}s, steady {steady:.2f}s (br {t_br:.2f}, ex {t_ex:.2f})"
    )
    poa = ex.worst_cost / ex.optimum_cost
    out = dict(
        n=n, instances=N, starts=S, first_call_s=first, steady_s=steady,
        steady_br_s=t_br, steady_exhaustive_s=t_ex, rate=N / steady,
        br_converged_share=float((br.status == 0).mean()),
        br_stable_share=float(br.stable.mean()),
        br_rounds_median=float(np.median(br.rounds)), br_rounds_max=int(br.rounds.max()),
        distinct_equilibria_found_mean=float(br.equilibrium_count.mean()),
        equilibria_total_mean=float(ex.equilibrium_count.mean()),
        poa_mean=float(poa.mean()), poa_max=float(poa.max()),
    )  # fmt: skip

    m = min(args.ref_instances, N)
    if m <= 0:  # no reference: no rate to compare with
        out["reference"] = out["speedup"] = None
        return out
    t_ref_br = t_ref_ex = t_ref_mitm = 0.0
    agree = dict(opt=0, worst=0, best=0, count=0, br_profiles=0)
    for i in range(m):
        t = time.perf_counter()
        prof = [ref_br(d2[i], a2[i], x0s[i, s]) for s in range(S)]
        t_ref_br += time.perf_counter() - t
        t = time.perf_counter()
        opt, cnt, worst, best = ref_exhaustive(d2[i], a2[i])
        t_ref_ex += time.perf_counter() - t
        if args.ref_mitm:
            t = time.perf_counter()
            r2 = ref_exhaustive_mitm(d2[i], a2[i])
            t_ref_mitm += time.perf_counter() - t
            assert abs(r2[0] - opt) < 1e-9 and r2[1] == cnt
        agree["opt"] += abs(opt - ex.optimum_cost[i]) <= 1e-9 * opt
        agree["worst"] += abs(worst - ex.worst_cost[i]) <= 1e-9 * worst
        agree["best"] += abs(best - ex.best_cost[i]) <= 1e-9 * best
        agree["count"] += cnt == ex.equilibrium_count[i]
        agree["br_profiles"] += all(
            list(p[0]) == br.profiles[i, s].tolist() for s, p in enumerate(prof)
        )
    ref_rate = m / (t_ref_br + t_ref_ex)
    out["reference"] = dict(
        instances=m, br_s_per_instance=t_ref_br / m, exhaustive_s_per_instance=t_ref_ex / m,
        rate=ref_rate, agreement={k: f"{v}/{m}" for k, v in agree.items()},
    )  # fmt: skip
    out["speedup"] = out["rate"] / ref_rate
    if args.ref_mitm:
        rate_mitm = m / (t_ref_br + t_ref_mitm)
        out["reference"]["mitm_exhaustive_s_per_instance"] = t_ref_mitm / m
        out["reference"]["rate_with_mitm"] = rate_mitm
        out["speedup_vs_mitm_reference"] = out["rate"] / rate_mitm
    return out


# --------------------------------------------------------------------------- fluid


def fluid_batch(seed, n_inst, w, t, b):
    rng = np.random.default_rng(seed)
    pts = rng.random((n_inst, w, 2)) * 2.0
    d = np.sqrt(((pts[:, :, None] - pts[:, None]) ** 2).sum(-1))
    pop = rng.zipf(1.3, size=(n_inst, 1, b)).astype(float)  # Zipf-like popularity per block
    rates = pop * rng.uniform(0.2, 1.0, (n_inst, w, b))
    cap = rng.uniform(0.02, 0.12, (n_inst, w, t)) * b
    return d, rates, cap


class FluidRef:
    """The fluid model and both algorithms for one instance, in NumPy."""

    def __init__(self, d, rates, cap, credit, sigma=0.5):
        w = len(d)
        self.reach = sigma * np.exp(-d) * (1 - np.eye(w))
        self.rm, self.cap, self.credit = rates, cap, np.asarray(credit)
        self.size = np.ones(rates.shape[-1])

    def peer(self, y):
        h = np.clip(y.sum(1), 0, 1)
        return 1 - np.prod(1 - self.reach[:, :, None] * h[None], axis=1)

    def costs(self, y):
        own = np.einsum("t,wtb->wb", self.credit, y)
        return (self.rm * (1 - own) * (1 - self.peer(y))).sum(1)

    def fill(self, gain, cap):
        order = np.argsort(-gain, kind="stable")
        hi = np.cumsum(self.size[order])
        lo = hi - self.size[order]
        to = np.argsort(-self.credit, kind="stable")
        chi = np.cumsum(cap[to])
        clo = chi - cap[to]
        frac = np.clip(
            np.minimum(hi[None], chi[:, None]) - np.maximum(lo[None], clo[:, None]), 0, None
        )
        frac = np.where((gain[order] > 0)[None] & (self.credit[to] > 0)[:, None], frac, 0.0)
        out = np.zeros_like(frac)
        out[:, order] = frac
        res = np.zeros_like(out)
        res[to] = out
        return res

    def gap(self, y):
        c = self.costs(y)
        best = 0.0
        for w in range(len(c)):
            gain = self.rm[w] * (1 - self.peer(y)[w])
            br = self.fill(gain, self.cap[w])
            best += np.sum(gain * (1 - self.credit @ br))
        return max(c.sum() - best, 0.0) / c.sum(), c.sum()

    def equilibrium(self, tol=1e-9, max_rounds=200):
        w, t, b = self.rm.shape[0], len(self.credit), self.rm.shape[1]
        y = np.zeros((w, t, b))
        for r in range(1, max_rounds + 1):  # noqa: B007 (reported after the loop)
            for i in range(w):
                gain = self.rm[i] * (1 - self.peer(y)[i])
                y[i] = self.fill(gain, self.cap[i])
            g, sc = self.gap(y)
            if g <= tol:
                break
        return y, sc, r

    def grad(self, y):
        own = np.einsum("t,wtb->wb", self.credit, y)
        q = 1 - self.peer(y)  # Π (1 − a h)
        h = np.clip(y.sum(1), 0, 1)
        a = self.reach  # a[u, w]
        term = self.rm * (1 - own) * q  # (W, B) per u
        dh = -np.einsum("ub,uw,uwb->wb", term, a, 1 / (1 - a[:, :, None] * h[None]))
        return -(self.rm * q)[:, None, :] * self.credit[None, :, None] + dh[:, None, :]

    @staticmethod
    def block_project(z):
        y = np.clip(z, 0, None)
        over = y.sum(1, keepdims=True) > 1
        u = -np.sort(-z, axis=1)
        css = np.cumsum(u, axis=1) - 1
        k = np.arange(1, z.shape[1] + 1)[None, :, None]
        cond = u - css / k > 0
        rho = cond.shape[1] - np.argmax(cond[:, ::-1], axis=1) - 1  # last true
        theta = np.take_along_axis(css, rho[:, None], 1) / (rho[:, None] + 1)
        simp = np.clip(z - theta, 0, None)
        return np.where(over, simp, y)

    def project(self, z, lam, iters=1):
        for _ in range(iters):
            y = self.block_project(z - lam[:, :, None] * self.size)
            used = y @ self.size
            curv = np.maximum((y > 0) @ self.size**2, self.size.min() ** 2)
            lam = np.maximum(lam + (used - self.cap) / curv, 0)
        y = self.block_project(z - lam[:, :, None] * self.size)
        return self.retract(y), lam

    def retract(self, y):
        y = np.clip(y, 0, 1)
        y = y / np.maximum(y.sum(1, keepdims=True), 1)
        used = y @ self.size
        scale = np.where(used > self.cap, self.cap / np.maximum(used, 1e-300), 1.0)
        return y * scale[:, :, None]

    def optimum(self, y0, steps, lr=0.2, rtol=1e-5, round_steps=50):
        """The projected descent; as poa_jax's, a start whose first ``round_steps`` steps
        lower SC by no more than ``rtol`` (relative) stops there."""
        y = self.retract(y0)
        scale = self.costs(y).sum()
        best, best_y = scale, y
        lam = np.zeros(self.cap.shape)
        first = min(round_steps, steps)
        for k in range(steps):
            val = self.costs(y).sum()
            if val < best:
                best, best_y = val, y
            if k == first and scale - best <= rtol * scale:
                return best_y, best
            g = self.grad(y) / scale
            g = g / max(np.abs(g).max(), 1e-300)
            rate = lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * k / steps)))
            y, lam = self.project(y - rate * g, lam)
        return best_y, min(best, self.costs(y).sum())

    def polish(self, y, sweeps):
        """Block-coordinate descent: each worker's SC-minimising placement given the others
        (an LP, by scipy's HiGHS), kept where SC does not rise; ``sweeps`` passes."""
        from scipy.optimize import linprog

        w, t, b = y.shape
        a_ub = np.vstack([np.kron(np.ones(t), np.eye(b)), np.kron(np.eye(t), self.size)])
        y, sc = y.copy(), self.costs(y).sum()
        for _ in range(sweeps):
            improved = False
            for i in range(w):
                lp = linprog(self.grad(y)[i].ravel(), A_ub=a_ub,
                             b_ub=np.r_[np.ones(b), self.cap[i]], bounds=(0, 1))  # fmt: skip
                new = y.copy()
                new[i] = lp.x.reshape(t, b)
                if (val := self.costs(new).sum()) <= sc:
                    improved |= val < sc
                    y, sc = new, val
            if not improved:  # as poa_jax's polish: stop after a pass that lowers nothing
                break
        return y, sc


def run_fluid(args, pj, tc):
    w, t, b = (int(v) for v in args.fluid_dims.split(","))
    N = args.fluid_instances
    credit = tc.DYNAMO_CREDITS[:t] if t <= 4 else np.linspace(1, 0.2, t)

    dt = np.dtype(args.fluid_dtype)
    tol = args.fluid_tol if args.fluid_tol is not None else (1e-9 if dt == np.float64 else 1e-7)

    def solve(d, r, c):
        g = pj.TieredCacheGame(d, r, c, credit=credit)
        eq = tc.solve_equilibrium(g, starts=1, dtype=dt, tol=tol)
        opt = tc.solve_optimum(g, y0=eq.placement, steps=args.fluid_steps, dtype=dt,
                               polish_sweeps=args.fluid_sweeps)  # fmt: skip
        return eq, opt

    _, first = _timed(lambda: solve(*fluid_batch(args.seed * 7 + 1, N, w, t, b)))
    d2, r2, c2 = fluid_batch(args.seed * 7 + 2, N, w, t, b)
    (eq, opt), steady = _timed(lambda: solve(d2, r2, c2))
    # the split of the steady state between the two parts
    g2 = pj.TieredCacheGame(d2, r2, c2, credit=credit)
    _, t_eq_b = _timed(lambda: tc.solve_equilibrium(g2, starts=1, dtype=dt, tol=tol))
    _, t_opt_b = _timed(
        lambda: tc.solve_optimum(
            g2, y0=eq.placement, steps=args.fluid_steps, dtype=dt, polish_sweeps=args.fluid_sweeps
        )
    )
    _progress(
        f"fluid N={N} {dt}: first {first:.1f}s steady {steady:.1f}s "
        f"(eq {t_eq_b:.2f}s, opt {t_opt_b:.2f}s)"
    )
    poa = eq.social_cost / np.minimum(opt.social_cost, eq.social_cost)
    out = dict(
        dims=[w, t, b], instances=N, optimum_steps=args.fluid_steps,
        polish_sweeps=args.fluid_sweeps, dtype=str(dt), eq_tol=tol,
        first_call_s=first, steady_s=steady, steady_eq_s=t_eq_b, steady_opt_s=t_opt_b,
        rate=N / steady, eq_converged_share=float(eq.converged.mean()),
        eq_rounds_median=float(np.median(eq.rounds)), eq_rounds_max=int(eq.rounds.max()),
        eq_gap_max=float(eq.gap.max()), poa_mean=float(poa.mean()), poa_max=float(poa.max()),
        opt_certified_share=float(opt.converged.mean()),
        opt_gap_median=float(np.median(opt.gap)), opt_gap_max=float(opt.gap.max()),
    )  # fmt: skip
    m = min(args.fluid_ref_instances, N)
    if m <= 0:  # no reference: no rate to compare with
        out["reference"] = out["speedup"] = None
        return out
    opt_tol = tc.OPT_TOL[dt]  # the batched run's: the reference stops its descent by it too
    # Warm the reference as the batched side is warmed by its first call (scipy's imports and
    # HiGHS's first solve cost ~0.4 s once), on an instance of the first batch, untimed.
    d1, r1, c1 = fluid_batch(args.seed * 7 + 1, 1, w, t, b)
    warm = FluidRef(d1[0], r1[0], c1[0], credit)
    warm.polish(warm.optimum(warm.equilibrium()[0], 2)[0], 1)
    t_eq = t_opt = 0.0
    d_eq, d_opt = [], []
    for i in range(m):
        ref = FluidRef(d2[i], r2[i], c2[i], credit)
        (y, sc, _), dt = _timed(lambda ref=ref: ref.equilibrium())
        t_eq += dt
        (_, osc), dt = _timed(
            lambda ref=ref, y=y: ref.polish(
                ref.optimum(y, args.fluid_steps, rtol=opt_tol)[0], args.fluid_sweeps
            )
        )
        t_opt += dt
        d_eq.append(abs(sc - eq.social_cost[i]) / sc)
        d_opt.append(abs(osc - opt.social_cost[i]) / osc)
        _progress(
            f"fluid reference {i + 1}/{m}: eq {t_eq / (i + 1):.2f}s opt {t_opt / (i + 1):.2f}s"
        )
    out["reference"] = dict(
        instances=m, eq_s_per_instance=t_eq / m, opt_s_per_instance=t_opt / m,
        rate=m / (t_eq + t_opt), eq_sc_rel_diff_max=float(max(d_eq)),
        opt_sc_rel_diff_max=float(max(d_opt)),
    )  # fmt: skip
    out["speedup"] = out["rate"] / out["reference"]["rate"]
    return out


def run(args) -> dict:
    import poa_jax as pj
    from poa_jax import caching
    from poa_jax import tiered_cache as tc

    if args.smoke:
        args.instances, args.ref_instances, args.n = 32, 2, 8
        args.fluid_instances, args.fluid_ref_instances, args.fluid_dims = 4, 1, "3,2,16"
        args.fluid_steps, args.fluid_sweeps = 20, 2
    dev = jax.devices()[0]
    meta = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=str(dev), device_kind=getattr(dev, "device_kind", dev.platform),
        jax=jax.__version__, numpy=np.__version__, python=platform.python_version(),
        cpu_count=os.cpu_count(), load_average=list(os.getloadavg()),
        dtype="float64", fluid_dtype=args.fluid_dtype, argv=sys.argv[1:],
    )  # fmt: skip
    res = dict(meta=meta)
    if not args.skip_discrete:
        res["discrete"] = run_discrete(args, pj, caching)
    if not args.skip_fluid:
        res["fluid"] = run_fluid(args, pj, tc)
    meta["load_average_end"] = list(os.getloadavg())
    return res


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        res = run(args)
    finally:
        jax.config.update("jax_enable_x64", x64)
    print(json.dumps(res, indent=2, default=float))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
