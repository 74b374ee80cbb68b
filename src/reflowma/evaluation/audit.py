"""Marginal audit of a few-step student against its teacher.

Pure functions (no I/O). Everything is computed in float64 on copies of the models on their own
device (the points go there; kNN entropies and exact data densities read them back).

* ``marginal_audit``: per NFE, KL(q || p_T) by the kNN entropy (needs no injectivity) and, in
  low dimension, the exact KL and TV from the change-of-variables density of the student's
  Euler map against the teacher's CNF density, with the fraction of folded points (the exact
  numbers are flagged ``valid`` only where no sample folds).
* ``local_window_audit``: per window k, the student's Euler step applied to teacher states
  ``x ~ p_{t_k}`` against the teacher marginal ``p_{t_{k+1}}`` (local KL and TV).

Exact KLs (``kl_exact``, ``kl``) use ``E_q[r - 1 - log r]`` with ``r = p/q`` (unbiased,
non-negative per sample, low variance when q is close to p); the plain ``E_q[log q - log p]`` is
reported next to them as ``*_logratio``.
* ``telescoping``: ``TV(q_1, p_1) <= sum_k TV_k <= sum_k sqrt(KL_k / 2)`` (triangle inequality
  plus the data-processing inequality, then Pinsker). The bound holds in total variation only:
  the sum of the local KLs does NOT bound the final KL (it is usually smaller).
* ``score_error_vs_t``: the teacher's score-from-velocity against an exact mixture score.
"""

from __future__ import annotations

import copy
import math

import torch

from reflowma.core import solvers
from reflowma.core.gmm import IsoGMM
from reflowma.core.interpolant import score_from_velocity
from reflowma.evaluation import density


def _f64(model):
    """A float64 copy of a module on its own device (callables are used as they are)."""
    if isinstance(model, torch.nn.Module):
        return copy.deepcopy(model).double().eval().requires_grad_(False)
    return model


def _device(model) -> torch.device:
    """Where a module's parameters are (the CPU for a plain callable)."""
    p = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    return torch.device("cpu") if p is None else p.device


def _num(x):
    """JSON-safe float: None for None / NaN / inf."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _dim(x: torch.Tensor) -> int:
    return int(x[0].numel())


def _cnf_steps(steps: int, t1: float) -> int:
    """RK4 steps over [0, t1] for ``steps`` per unit time."""
    return max(1, round(steps * t1))


def marginal_audit(student, teacher, z: torch.Tensor, K: int, nfes, cfg_audit: dict,
                   data_logp=None, teacher_samples: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> dict:
    """Per NFE: KL/TV of the student's few-step endpoint q against the teacher's p_1.

    ``z``: noise ``[N, *data]``; the student samples with the window-aware Euler grid
    ``solvers.sample_grid(nfe, K)``. ``cfg_audit``: ``logp_steps`` (RK4 steps of the teacher
    CNF), ``knn_k``, ``max_dim`` (change of variables, so ``kl_exact``/``tv``, up to this d;
    above it only ``kl_knn``), ``divergence_max_dim`` (exact divergence in the teacher's CNF up
    to this d, None: ``max_dim``; above it Hutchinson with ``probes`` Rademacher probes fixed
    along each path: unbiased for log p, and with ``probes`` > 1 each row gets ``logp_se``, the
    root mean square of the per-sample standard errors of the teacher's log-density at the
    samples; ``kl_exact`` (``E_q[r - 1 - log r]``) is then biased up by about ``logp_se² / 2``,
    ``kl_exact_logratio`` is not). ``data_logp(y)``, if given, is an exact
    data log-density: KL/TV against the data are added. ``teacher_samples`` (teacher endpoints,
    e.g. from the couplings) adds ``teacher_kl_knn``, the kNN estimator's value for the teacher
    itself (ideally 0: its bias floor). The kNN entropy is strongly biased in high dimension
    (tens of nats in 64D at a few hundred samples): compare ``kl_knn`` only across students
    at the same d and N, next to ``teacher_kl_knn``.
    """
    s64, t64 = _f64(student), _f64(teacher)
    dev = _device(s64)
    z = z.detach().to(dev).double()
    steps, k, max_dim = int(cfg_audit["logp_steps"]), int(cfg_audit["knn_k"]), cfg_audit["max_dim"]
    div_max, probes = divergence_settings(cfg_audit)
    exact = _dim(z) <= max_dim
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    hutch = _dim(z) > div_max
    out = {"nfe": {}, "knn_k": k, "logp_steps": steps,
           "divergence": "hutchinson" if hutch else "exact", "change_of_variables": exact}
    if hutch:
        out["probes"] = probes
    ends = {}  # nfe -> (y, logq, fold)
    for nfe in nfes:
        grid = solvers.sample_grid(int(nfe), K)
        if exact:
            y, logq, folded = density.student_logq(s64, z, grid)
            ends[nfe] = (y, logq, float(folded.double().mean()))
        else:
            ends[nfe] = (solvers.euler_sample(s64, z, grid), None, None)
    xt = None if teacher_samples is None else teacher_samples.detach().to(dev).double()
    # the teacher's density at every NFE's endpoints and at its own samples: one integration
    lps, ses = density.cnf_logp_many(t64, [y for y, _, _ in ends.values()]
                                     + ([] if xt is None else [xt]), 1.0, steps,
                                     exact_max_dim=div_max, probes=probes, generator=g, se=True)
    for i, ((nfe, (y, logq, fold)), lp) in enumerate(zip(ends.items(), lps[:len(ends)],
                                                         strict=True)):
        row = {"kl_knn": _num(density.kl_knn(y, lp, k)), "fold_fraction": fold,
               "valid": bool(exact and fold == 0.0), "kl_exact": None,
               "kl_exact_logratio": None, "tv": None}
        if ses is not None:
            row["logp_se"] = _rms(ses[i])
        if exact:
            row["kl_exact"] = _num(density.kl_from_logratio(logq, lp))
            row["kl_exact_logratio"] = _num(density.kl_logratio(logq, lp))
            row["tv"] = _num(density.tv_from_logratio(logq, lp))
        if data_logp is not None:
            ld = data_logp(y.reshape(y.shape[0], -1).cpu()).to(y.device)
            row["data_kl_knn"] = _num(density.kl_knn(y, ld, k))
            row["data_kl_exact"] = _num(density.kl_from_logratio(logq, ld)) if exact else None
            row["data_kl_exact_logratio"] = (_num(density.kl_logratio(logq, ld)) if exact
                                             else None)
            row["data_tv"] = _num(density.tv_from_logratio(logq, ld)) if exact else None
        out["nfe"][str(nfe)] = row
    if xt is not None:
        out["teacher_kl_knn"] = _num(density.kl_knn(xt, lps[-1], k))
    return out


def divergence_settings(cfg_audit: dict) -> tuple[int, int]:
    """(largest d with the exact CNF divergence, Hutchinson probes above it) of an audit
    config: ``divergence_max_dim`` (None or absent: ``max_dim``) and ``probes`` (absent: 1)."""
    div = cfg_audit.get("divergence_max_dim")
    return int(cfg_audit["max_dim"] if div is None else div), int(cfg_audit.get("probes", 1))


def _rms(se: torch.Tensor) -> float:
    return float(se.double().pow(2).mean().sqrt())


def _windows(x_k_by_window, K: int) -> list[torch.Tensor]:
    if torch.is_tensor(x_k_by_window):  # window ends [N, K + 1, *data]
        if x_k_by_window.shape[1] != K + 1:
            raise ValueError(f"window ends have {x_k_by_window.shape[1]} times, need K + 1 = "
                             f"{K + 1}")
        return [x_k_by_window[:, k] for k in range(K)]
    xs = list(x_k_by_window)
    if len(xs) != K:
        raise ValueError(f"got {len(xs)} window-start batches, need K = {K}")
    return xs


def local_window_audit(student, teacher, x_k_by_window, K: int, steps: int,
                       max_dim: int = 16, knn_k: int = 5,
                       generator: torch.Generator | None = None,
                       divergence_max_dim: int | None = None, probes: int = 1) -> dict:
    """Per window k: the student's Euler step ``y = x + h v(x, t_k)`` on teacher states
    ``x ~ p_{t_k}``, against the teacher marginal ``p_{t_{k+1}}``.

    ``x_k_by_window``: teacher window ends ``[N, K + 1, *data]`` (e.g. the test couplings) or a
    list of K batches ``x_k ~ p_{t_k}``. ``steps``: RK4 steps of the teacher CNF per unit time.
    The density of ``q_k = Phi_k # p_{t_k}`` at y is ``p_{t_k}(x) / |det(I + h J)|`` with the
    teacher CNF log-density at ``t_k`` (exactly ``log N(x)`` at t = 0); the target is the
    teacher CNF log-density at ``t_{k+1}`` (at t = 1 too: the CNF is fine there, only the score
    is singular). ``kl``/``tv`` need d <= max_dim and are exact only where no point folds
    (``valid``); ``kl_knn`` needs neither. ``divergence_max_dim``, ``probes``: the teacher
    CNF's divergence, as in ``marginal_audit``.
    """
    s64, t64 = _f64(student), _f64(teacher)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    xs = [x.detach().to(_device(s64)).double() for x in _windows(x_k_by_window, K)]
    exact = _dim(xs[0]) <= max_dim
    h = 1.0 / K
    maps = []  # per window: (t0, t1, y, log-det, fold)
    for k, x in enumerate(xs):
        t0, t1 = k * h, (k + 1) * h
        if exact:
            y, ld, folded = density.euler_logdet(s64, x, [t0, t1])
            maps.append((t0, t1, y, ld, float(folded.double().mean())))
        else:
            maps.append((t0, t1, solvers.euler_sample(s64, x, [t0, t1]), None, None))
    # teacher CNF densities, batched by time: y_k at t_{k+1} and (exact only) x_k at t_k, so
    # the window end y_{k-1} and the next window's start x_k share one integration
    sets = {}  # t -> list of (key, points), in the order the separate calls would come
    for k, (t0, t1, y, _, _) in enumerate(maps):
        sets.setdefault(t1, []).append((("y", k), y))
        if exact:
            sets.setdefault(t0, []).append((("x", k), xs[k]))
    div_max = max_dim if divergence_max_dim is None else divergence_max_dim
    lp, se = {}, {}
    for t, items in sets.items():
        vals, ses = density.cnf_logp_many(t64, [pts for _, pts in items], t,
                                          _cnf_steps(steps, t), exact_max_dim=div_max,
                                          probes=probes, generator=g, se=True)
        lp.update({key: val for (key, _), val in zip(items, vals, strict=True)})
        if ses is not None:
            se.update({key: val for (key, _), val in zip(items, ses, strict=True)})
    rows = []
    for k, (t0, t1, y, ld, fold) in enumerate(maps):
        lp1 = lp["y", k]
        row = {"k": k, "t_start": t0, "t_end": t1, "fold_fraction": fold,
               "valid": bool(exact and fold == 0.0), "kl": None, "kl_logratio": None,
               "tv": None,
               "kl_knn": _num(density.kl_knn(y, lp1, knn_k))}
        if ("y", k) in se:
            row["logp_se"] = _rms(se["y", k])
        if exact:
            logq = lp["x", k] - ld
            row["kl"] = _num(density.kl_from_logratio(logq, lp1))
            row["kl_logratio"] = _num(density.kl_logratio(logq, lp1))
            row["tv"] = _num(density.tv_from_logratio(logq, lp1))
        rows.append(row)
    return {"windows": rows, "logp_steps": steps}


def telescoping(tv_final, windows, kl_final=None) -> dict:
    """Check ``TV(q_1, p_1) <= sum_k TV_k <= sum_k sqrt(KL_k / 2)``.

    ``windows``: rows of ``local_window_audit`` (``tv``, ``kl``; ``kl`` is the non-negative
    estimate ``E_q[r - 1 - log r]``: the plain ``E_q[log q/p]`` is too noisy at small KL for a
    Pinsker check, its sum is reported as ``pinsker_sum_logratio``, negative values as 0).
    ``kl_final`` is reported next to ``sum_kl`` for information only: the sum of the local KLs
    does NOT bound the final KL (no telescoping holds for KL; measured, the sum is usually the
    smaller one).
    """
    tvs = [w.get("tv") for w in windows]
    kls = [w.get("kl") for w in windows]
    if tv_final is None or any(v is None for v in tvs + kls):
        return {"available": False}
    sum_tv = float(sum(tvs))
    pinsker = float(sum(math.sqrt(max(kl, 0.0) / 2) for kl in kls))
    return {"available": True,
            "valid": bool(all(w.get("valid", True) for w in windows)),
            "tv_final": float(tv_final), "sum_tv": sum_tv, "pinsker_sum": pinsker,
            "final_le_sum_tv": bool(tv_final <= sum_tv),
            "sum_tv_le_pinsker": bool(sum_tv <= pinsker),
            "margin_final": sum_tv - float(tv_final), "margin_pinsker": pinsker - sum_tv,
            "sum_kl": float(sum(kls)), "kl_final": _num(kl_final),
            "pinsker_sum_logratio": _num(sum(math.sqrt(max(w.get("kl_logratio") or 0.0, 0.0) / 2)
                                             for w in windows))}


def score_error_vs_t(teacher, gmm, ts, n: int, generator: torch.Generator | None = None) -> dict:
    """Relative error ``sqrt(E|s_T - s|^2 / E|s|^2)`` of the teacher's score from velocity vs
    the exact mixture score at samples of ``p_t`` (``x_t = (1 - t) z + t x``), per t (< 1)."""
    t64 = _f64(teacher)
    dev = _device(t64)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    means = gmm.means.double()
    ref = IsoGMM(means, gmm.std, gmm.weights.double())
    out = {}
    for t in ts:
        x1 = ref.sample(n, g)
        z = torch.randn(x1.shape, generator=g, dtype=torch.float64)
        tt = torch.full((n,), float(t), dtype=torch.float64)
        xt = (1 - t) * z + t * x1
        with torch.no_grad():
            s_T = score_from_velocity(t64(xt.to(dev), tt.to(dev)).cpu(), xt, tt)
        s = ref.score(xt, float(t))
        out[str(t)] = float(((s_T - s).pow(2).sum(-1).mean() / s.pow(2).sum(-1).mean()).sqrt())
    return out
