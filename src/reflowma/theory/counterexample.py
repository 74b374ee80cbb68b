"""Closed-form counterexample: trajectory matching does not determine the endpoint marginal.

Conventions (package-wide): t = 0 is noise, t = 1 is data, ``x_t = (1 - t) z + t x``, the ODE
``dx/dt = v(x, t)`` is integrated from 0 to 1, arrays are ``[batch, d]``.

Setting. Data ``N(mu, Sigma)``, ``A = Sigma^{1/2}`` (symmetric PSD root). The exact straight
teacher coupling is ``z -> mu + A z`` with lines ``x_t = t mu + M_t z``, ``M_t = (1 - t) I + t A``
(invertible on [0, 1] since A is positive definite), and field
``v*(x, t) = mu + (A - I) z(x, t)``, ``z(x, t) = M_t^{-1} (x - t mu)``. A student is
``v(x, t) = v*(x, t) + e(z(x, t))`` with ``e(z) = B z + c`` constant along each teacher line, so
its trajectory-matching (TM) loss ``E_{z,t} |v(x_t, t) - (x - z)|^2 = E|e(z)|^2 = |B|_F^2 + |c|^2``
is the same at every t. With ``a = 2 sin(theta / 2)`` the four students

- ``rotation``:    ``e(z) = A (R_theta - I) z``
- ``scaling``:     ``e(z) = a A z``
- ``shrink``:      ``e(z) = -a A z``
- ``translation``: ``e(z) = c``, ``c = a sqrt(tr Sigma) u``, u the leading eigenvector of Sigma
  (eigenvector of the largest eigenvalue, sign chosen so its largest-magnitude entry is > 0)

all have TM loss ``a^2 tr Sigma``; yet the 1-NFE endpoint of the rotation is exactly
``N(mu, Sigma)`` (W2 = 0) while the scaling's and translation's are at W2 = sqrt(TM), the largest
value the loss allows at 1 NFE. Every field is affine in x for fixed t, so n-step Euler maps z
affinely to ``m_n + G_n z`` and W2 / KL against the data are closed-form.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reflowma.infra.storage.atomic import atomic_path
from reflowma.registry import InputError

DEFAULT_MU: tuple[float, float] = (1.0, -0.5)
DEFAULT_SIGMA: tuple[tuple[float, float], tuple[float, float]] = ((2.0, 0.6), (0.6, 0.5))
DEFAULT_ANGLE_DEG: float = 30.0
DEFAULT_NFES: tuple[int, ...] = (1, 2, 4)
DEFAULT_OUT: str = "results/theory/counterexample"
STUDENTS: tuple[str, ...] = ("rotation", "scaling", "shrink", "translation")


# --------------------------------------------------------------------------- linear algebra


def validate_gaussian(mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mu, sigma)`` as float64 arrays; ValueError unless sigma is symmetric PD."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or mu.size == 0 or not np.all(np.isfinite(mu)):
        raise InputError(f"mu must be a non-empty finite vector, got {mu!r}")
    d = mu.size
    if sigma.shape != (d, d):
        raise InputError(f"sigma must have shape ({d}, {d}) to match mu, got {sigma.shape}")
    if not np.all(np.isfinite(sigma)):
        raise InputError("sigma must be finite")
    scale = max(float(np.max(np.abs(sigma))), 1e-300)
    if not np.allclose(sigma, sigma.T, rtol=0.0, atol=1e-12 * scale):
        raise InputError(f"sigma must be symmetric, got {sigma.tolist()}")
    sigma = 0.5 * (sigma + sigma.T)
    if float(np.linalg.eigvalsh(sigma)[0]) <= 0.0:
        raise InputError(f"sigma must be positive definite, got {sigma.tolist()}")
    return mu, sigma


def sqrtm_psd(mat) -> np.ndarray:
    """Symmetric PSD square root via eigendecomposition (negative round-off eigenvalues -> 0)."""
    mat = np.asarray(mat, dtype=np.float64)
    sym = 0.5 * (mat + mat.T)
    w, v = np.linalg.eigh(sym)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    return 0.5 * (root + root.T)


def rotation_matrix(theta: float) -> np.ndarray:
    """2D rotation by ``theta`` radians (counter-clockwise)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def gaussian_w2_factors(m1, g1, m2, g2) -> float:
    """W2 between ``N(m1, g1 g1^T)`` and ``N(m2, g2 g2^T)`` from any covariance factors.

    Uses the Procrustes form of the Bures distance, ``min_U |g1 - g2 U|_F^2`` over orthogonal U
    (U from the SVD of ``g2^T g1``), a sum of squares without the cancellation of
    ``tr S1 + tr S2 - 2 tr (S2^{1/2} S1 S2^{1/2})^{1/2}``: equal marginals give W2 ~ 1e-16.
    """
    m1, m2 = np.asarray(m1, np.float64), np.asarray(m2, np.float64)
    g1, g2 = np.asarray(g1, np.float64), np.asarray(g2, np.float64)
    p, _, qt = np.linalg.svd(g2.T @ g1)
    cov_term = float(np.sum((g1 - g2 @ (p @ qt)) ** 2))
    return math.sqrt(float(np.sum((m1 - m2) ** 2)) + cov_term)


def gaussian_w2(m1, s1, m2, s2) -> float:
    """Closed-form W2 between ``N(m1, s1)`` and ``N(m2, s2)`` (PSD covariances; Bures metric)."""
    return gaussian_w2_factors(m1, sqrtm_psd(s1), m2, sqrtm_psd(s2))


def gaussian_kl(m1, s1, m2, s2, *, rtol: float = 1e-12) -> float:
    """``KL(N(m1, s1) || N(m2, s2))`` in nats; ``inf`` if s1 is numerically singular.

    s2 must be positive definite. s1 counts as singular when its smallest eigenvalue is
    ``<= rtol * (largest eigenvalue of s2)``. Computed from the singular values ``s_i`` of
    ``W = L2^{-1} s1^{1/2}`` (``L2`` Cholesky of s2) as
    ``0.5 * (sum_i (s_i^2 - 1 - 2 log s_i) + |L2^{-1}(m1 - m2)|^2)``, each term >= 0.
    """
    m1, m2 = np.asarray(m1, np.float64), np.asarray(m2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    ev2 = np.linalg.eigvalsh(s2)
    if ev2[0] <= 0.0:
        raise ValueError("gaussian_kl: s2 (reference covariance) must be positive definite")
    if np.linalg.eigvalsh(s1)[0] <= rtol * ev2[-1]:
        return math.inf
    l2 = np.linalg.cholesky(s2)
    w = np.linalg.solve(l2, sqrtm_psd(s1))
    u = np.linalg.svd(w, compute_uv=False) - 1.0
    cov_term = float(np.sum(u * (2.0 + u) - 2.0 * np.log1p(u)))
    mean_term = float(np.sum(np.linalg.solve(l2, m1 - m2) ** 2))
    return max(0.0, 0.5 * (cov_term + mean_term))


# --------------------------------------------------------------------------- teacher / students


def leading_eigenvector(sigma) -> np.ndarray:
    """Unit eigenvector of the largest eigenvalue, sign: largest-magnitude entry positive."""
    _, v = np.linalg.eigh(np.asarray(sigma, np.float64))
    u = v[:, -1]
    return u if u[np.argmax(np.abs(u))] > 0 else -u


def student_error(kind: str, A, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Error ``e(z) = B z + c`` of the named student at angle ``theta`` (radians): ``(B, c)``.

    ``A`` is the symmetric root of the data covariance; ``a = 2 sin(theta / 2)``. All four kinds
    have ``E|e(z)|^2 = a^2 tr(A^2)`` for ``z ~ N(0, I)``.
    """
    A = np.asarray(A, np.float64)
    d = A.shape[0]
    a = 2.0 * math.sin(theta / 2.0)
    zero_c, zero_b = np.zeros(d), np.zeros((d, d))
    if kind == "rotation":
        if d != 2:
            raise ValueError(f"the rotation student is defined in 2D only, got d={d}")
        return A @ (rotation_matrix(theta) - np.eye(2)), zero_c
    if kind == "scaling":
        return a * A, zero_c
    if kind == "shrink":
        return -a * A, zero_c
    if kind == "translation":
        sigma = A @ A
        return zero_b, a * math.sqrt(float(np.trace(sigma))) * leading_eigenvector(sigma)
    raise ValueError(f"unknown student kind {kind!r}; expected one of {STUDENTS}")


def _m_t(A: np.ndarray, t) -> np.ndarray:
    """``M_t = (1 - t) I + t A`` for a scalar t or a ``[batch]`` array (-> ``[batch, d, d]``)."""
    t = np.asarray(t, np.float64)
    eye = np.eye(A.shape[0])
    return (1.0 - t)[..., None, None] * eye + t[..., None, None] * A


def teacher_latent(x, t, mu, A) -> np.ndarray:
    """``z(x, t) = M_t^{-1} (x - t mu)``: the noise whose teacher line passes through x at t."""
    x = np.asarray(x, np.float64)
    t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:-1])
    rhs = x - t[..., None] * np.asarray(mu, np.float64)
    return np.linalg.solve(_m_t(np.asarray(A, np.float64), t), rhs[..., None])[..., 0]


def student_field(x, t, mu, A, B, c) -> np.ndarray:
    """Student velocity ``v*(x, t) + B z(x, t) + c`` at ``x [batch, d]``, ``t`` scalar/``[batch]``.

    ``B = 0, c = 0`` gives the exact teacher field ``mu + (A - I) z(x, t)``.
    """
    A = np.asarray(A, np.float64)
    z = teacher_latent(x, t, mu, A)
    lin = A - np.eye(A.shape[0]) + np.asarray(B, np.float64)
    return np.asarray(mu, np.float64) + z @ lin.T + np.asarray(c, np.float64)


def euler_endpoint(mu, A, B, c, nfe: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact affine map ``z -> m + G z`` of ``nfe`` uniform Euler steps (h = 1/nfe) from t = 0.

    The field is ``mu + c + K_t (x - t mu)`` with ``K_t = (A - I + B) M_t^{-1}``, so each step is
    ``x <- (I + h K_t) x + h (mu + c - t K_t mu)``; composed in float64. The endpoint of
    ``z ~ N(0, I)`` is ``N(m, G G^T)``.
    """
    if isinstance(nfe, bool) or int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    nfe = int(nfe)
    mu, A = np.asarray(mu, np.float64), np.asarray(A, np.float64)
    B, c = np.asarray(B, np.float64), np.asarray(c, np.float64)
    d = mu.size
    eye = np.eye(d)
    h = 1.0 / nfe
    m, g = np.zeros(d), eye.copy()
    for k in range(nfe):
        t = k * h
        # K_t = (A - I + B) M_t^{-1}  <=>  K_t^T = M_t^{-T} (A - I + B)^T
        k_t = np.linalg.solve(_m_t(A, t).T, (A - eye + B).T).T
        step = eye + h * k_t
        m = step @ m + h * (mu + c - t * (k_t @ mu))
        g = step @ g
    return m, g


def tm_loss(B, c) -> float:
    """Trajectory-matching loss ``E_{z,t} |v(x_t, t) - (x - z)|^2 = |B|_F^2 + |c|^2`` (any t)."""
    return float(np.sum(np.asarray(B, np.float64) ** 2) + np.sum(np.asarray(c, np.float64) ** 2))


# --------------------------------------------------------------------------- experiment


def _json_float(x: float) -> float | str:
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _validate_nfes(nfes: Sequence[int]) -> list[int]:
    out = []
    for n in nfes:
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise InputError(f"nfes must be positive integers, got {list(nfes)!r}")
        out.append(int(n))
    if not out:
        raise InputError("nfes must not be empty")
    return out


def _validate_2d(mu, sigma, angle_deg) -> tuple[np.ndarray, np.ndarray, float]:
    mu, sigma = validate_gaussian(mu, sigma)
    if mu.size != 2:
        raise InputError(f"the counterexample is 2D: mu must have 2 entries, got {mu.size}")
    angle_deg = float(angle_deg)
    if not math.isfinite(angle_deg):
        raise InputError(f"angle_deg must be finite, got {angle_deg}")
    return mu, sigma, angle_deg


def counterexample(mu, sigma, angle_deg: float, nfes: Sequence[int]) -> dict:
    """TM loss, W2 and KL(student || data) per student and NFE, as a JSON-safe dict.

    Shape: ``{"mu", "sigma", "angle_deg", "nfe", "students": {kind: {"tm_loss",
    "w2": {str(nfe): x}, "kl": {str(nfe): x}}}}``; infinite values are the string ``"inf"``.
    """
    mu, sigma, angle_deg = _validate_2d(mu, sigma, angle_deg)
    nfes = _validate_nfes(nfes)
    A = sqrtm_psd(sigma)
    theta = math.radians(angle_deg)
    students = {}
    for kind in STUDENTS:
        B, c = student_error(kind, A, theta)
        w2, kl = {}, {}
        for n in nfes:
            m, g = euler_endpoint(mu, A, B, c, n)
            w2[str(n)] = _json_float(gaussian_w2_factors(m, g, mu, A))
            kl[str(n)] = _json_float(gaussian_kl(m, g @ g.T, mu, sigma))
        students[kind] = {"tm_loss": _json_float(tm_loss(B, c)), "w2": w2, "kl": kl}
    return {
        "mu": mu.tolist(),
        "sigma": sigma.tolist(),
        "angle_deg": angle_deg,
        "nfe": nfes,
        "students": students,
    }


def w2_squared_vs_angle(mu, sigma, angles_deg) -> dict[str, np.ndarray]:
    """W2^2 at 1 NFE per student, and the (shared) TM loss under key ``"tm"``, per angle."""
    mu, sigma = validate_gaussian(mu, sigma)
    A = sqrtm_psd(sigma)
    out = {kind: [] for kind in (*STUDENTS, "tm")}
    for deg in np.asarray(angles_deg, np.float64):
        theta = math.radians(float(deg))
        for kind in STUDENTS:
            B, c = student_error(kind, A, theta)
            m, g = euler_endpoint(mu, A, B, c, 1)
            out[kind].append(gaussian_w2_factors(m, g, mu, A) ** 2)
            if kind == "scaling":  # the TM loss is the same for all four students
                out["tm"].append(tm_loss(B, c))
    return {k: np.asarray(v) for k, v in out.items()}


def _figure(mu, sigma, angle_deg, result, n_samples: int, seed: int):
    # seaborn and matplotlib (about 2 s): for the figure only; the report and the CLI read the
    # counterexample's numbers without them
    import seaborn as sns
    from matplotlib.figure import Figure

    A = sqrtm_psd(sigma)
    theta = math.radians(angle_deg)
    z = np.random.default_rng(seed).standard_normal((n_samples, 2))
    teacher = mu + z @ A.T
    palette = dict(zip((*STUDENTS, "tm"), sns.color_palette("colorblind", 5), strict=True))

    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig = Figure(figsize=(11.5, 5.4), layout="constrained")
        grid = fig.add_gridspec(2, 4, width_ratios=(1, 1, 0.08, 1.9))
        small = [fig.add_subplot(grid[i, j]) for i in range(2) for j in range(2)]
        big = fig.add_subplot(grid[:, 3])

        ends = {}
        for kind in STUDENTS:
            B, c = student_error(kind, A, theta)
            m, g = euler_endpoint(mu, A, B, c, 1)
            ends[kind] = m + z @ g.T
        pts = np.concatenate([teacher, *ends.values()])
        lo, hi = np.quantile(pts, 0.002, axis=0), np.quantile(pts, 0.998, axis=0)
        centre, half = 0.5 * (lo + hi), 0.55 * float(np.max(hi - lo))  # same range on both axes
        for ax, kind in zip(small, STUDENTS, strict=True):
            ax.scatter(*teacher.T, s=3, c="0.6", alpha=0.35, lw=0, label="data / teacher")
            ax.scatter(
                *ends[kind].T,
                s=3,
                color=palette[kind],
                alpha=0.45,
                lw=0,
                label=f"{kind} student, 1 NFE",
            )
            ax.set_xlim(centre[0] - half, centre[0] + half)
            ax.set_ylim(centre[1] - half, centre[1] + half)
            ax.set_aspect("equal", adjustable="box")
            st = result["students"][kind]
            ax.set_title(
                f"{kind}: W2 = {float(st['w2']['1']):.3f}, TM = {st['tm_loss']:.3f}", fontsize=9
            )
            ax.legend(
                loc="upper left",
                fontsize=6.5,
                markerscale=3,
                frameon=True,
                handletextpad=0.2,
                borderpad=0.3,
            )
            ax.tick_params(labelsize=7)
        for ax in small[2:]:
            ax.set_xlabel("$x_1$", fontsize=8)
        for ax in small[::2]:
            ax.set_ylabel("$x_2$", fontsize=8)

        angles = np.linspace(0.0, 180.0, 181)
        curves = w2_squared_vs_angle(mu, sigma, angles)
        big.plot(
            angles, curves["tm"], color="0.2", lw=5, alpha=0.25, label="TM loss (all four students)"
        )
        styles = {"rotation": "-", "scaling": "--", "shrink": "-", "translation": ":"}
        for kind in STUDENTS:
            big.plot(
                angles,
                curves[kind],
                color=palette[kind],
                ls=styles[kind],
                lw=1.8,
                label=f"W2² {kind}",
            )
        big.axvline(
            angle_deg, color="0.4", lw=0.8, ls="-.", label=f"θ = {angle_deg:g}° (left panels)"
        )
        big.set_xlim(0.0, 180.0)
        big.set_xticks(np.arange(0, 181, 30))
        big.set_xlabel("angle θ [deg]")
        big.set_ylabel("W2² at 1 NFE  /  TM loss  [squared data units]")
        big.set_title("Equal TM loss, different endpoint marginals (1 NFE)", fontsize=10)
        big.legend(loc="upper left", fontsize=8)
        fig.suptitle(
            "Trajectory matching does not determine the marginal: "
            f"data N(μ, Σ), μ = {np.round(mu, 3).tolist()}, Σ = {np.round(sigma, 3).tolist()}",
            fontsize=10,
        )
    return fig


def write_counterexample(
    out_dir,
    mu=DEFAULT_MU,
    sigma=DEFAULT_SIGMA,
    angle_deg: float = DEFAULT_ANGLE_DEG,
    nfes: Sequence[int] = DEFAULT_NFES,
    n_samples: int = 2000,
    seed: int = 0,
) -> dict:
    """Write ``counterexample.json`` (atomically) and ``counterexample.{png,pdf}``; return the dict.

    The figure shows each student's 1-NFE endpoint samples (paired with the teacher on the same
    z, ``seed``) and W2^2 at 1 NFE vs angle next to the TM loss.
    """
    mu, sigma, angle_deg = _validate_2d(mu, sigma, angle_deg)
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    result = counterexample(mu, sigma, angle_deg, nfes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = _figure(mu, sigma, angle_deg, result, int(n_samples), int(seed))
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150)
        with atomic_path(out / f"counterexample.{ext}") as tmp:
            tmp.write_bytes(buf.getvalue())
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    with atomic_path(out / "counterexample.json") as tmp:
        tmp.write_text(text)
    return result


# --------------------------------------------------------------------------- command and report


def main(out: str = DEFAULT_OUT, mu=DEFAULT_MU, sigma=DEFAULT_SIGMA, angle: float =
         DEFAULT_ANGLE_DEG, nfe: Sequence[int] = DEFAULT_NFES) -> int:
    """``reflowma theory counterexample``: write the files, print each student's TM loss and
    W2. ``sigma`` is the matrix, or its four entries row by row as the command takes them."""
    flat = np.asarray(sigma, dtype=float).ravel().tolist()
    res = write_counterexample(out, mu, [flat[:2], flat[2:]], angle, nfe)
    for name, s in res["students"].items():
        print(f"{name:12s} TM={s['tm_loss']:.6g}  W2={s['w2']}")
    print(f"wrote {Path(out) / 'counterexample.json'} and counterexample.{{png,pdf}} in {out}")
    return 0


def check_counterexample(ce, where: str) -> dict:
    """``ce`` as the report's Theorem 1 claim reads it (the JSON ``write_counterexample``
    writes: ``nfe`` a non-empty list, ``students`` a non-empty mapping whose entries have
    ``tm_loss`` and per-NFE ``w2`` and ``kl``); an ``InputError`` naming ``where`` and what is
    missing."""
    students = ce.get("students") if isinstance(ce, dict) else None
    if not isinstance(students, dict) or not students:
        raise InputError(f"{where}: no 'students' mapping: not the counterexample.json of "
                         "`reflowma theory counterexample`")
    nfes = ce.get("nfe")
    if not isinstance(nfes, list) or not nfes:
        raise InputError(f"{where}: no 'nfe' list")
    for name, s in students.items():
        for key in ("tm_loss", "w2", "kl"):
            if not isinstance(s, dict) or key not in s:
                raise InputError(f"{where}: student {name!r} has no {key!r}")
        for key in ("w2", "kl"):
            if not isinstance(s[key], dict) or any(str(n) not in s[key] for n in nfes):
                raise InputError(f"{where}: student {name!r}: {key!r} lacks an NFE of "
                                 f"{nfes}")
    return ce


def for_report(path=None) -> tuple[dict, str]:
    """The counterexample a report's claims.md cites, and where it comes from: the
    counterexample.json at ``path`` (``report --counterexample``; an ``InputError`` naming the
    flag and the file where it is unreadable or not that JSON), else computed in-process with
    the command's defaults."""
    if path is None:
        return (counterexample(DEFAULT_MU, DEFAULT_SIGMA, DEFAULT_ANGLE_DEG, DEFAULT_NFES),
                "computed in-process with reflowma theory counterexample's defaults: "
                f"mu {list(DEFAULT_MU)}, angle {DEFAULT_ANGLE_DEG}°")
    where = f"report --counterexample {str(path)!r}"
    try:
        ce = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{where}: the file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{where}: not readable JSON ({e})") from None
    return check_counterexample(ce, where), f"read from {path}"
