"""The metric specification: every reported metric declared once, in the ``METRICS`` registry.

A ``Metric`` says what it is (key, label, unit, which way is better), where it lives in an
evaluate run's ``eval.json`` (``paths``: one dotted path per row kind) and, for metrics of a
sample set, how it is computed (``compute(samples, cfg)``). The evaluate stage computes the
sample metrics in registration order (``sample_metrics``); the report's tables, figures,
``metrics.json`` and DVC plots select metrics by their flags. Adding a metric is one
``METRICS.register(key, Metric(...))`` (a plugin module may do it, see ``reflowma.registry``).

Path placeholders: ``{nfe}`` (a key of a per-NFE dict), ``{t}`` (a key of a per-t dict),
``{k}`` (an entry of a list of per-window dicts, by its ``k``). Row kinds: ``STUDENT`` (the
method's own samples) and the references ``TEACHER_EULER`` (same NFE), ``TEACHER_CEILING``
(many steps), ``DATA_FLOOR`` (two data draws), ``TEACHER`` (the teacher model itself).
Conventions: t = 0 noise, t = 1 data; a path without ``{nfe}`` gives a per-run value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reflowma.registry import Registry

STUDENT = "student"
TEACHER_EULER, TEACHER_CEILING = "teacher (Euler)", "teacher (ceiling)"
DATA_FLOOR, TEACHER = "data (floor)", "teacher"
REFERENCES = (TEACHER_EULER, TEACHER_CEILING, DATA_FLOOR, TEACHER)


@dataclass(frozen=True)
class Samples:
    """One sample set on the fixed noise ``z``: ``y`` (the sampler's endpoints), ``teacher``
    (the teacher endpoints paired with ``y`` by z), ``data`` (independent data samples),
    for a student, its sampler map ``sampler(z)``, velocity ``v`` and time grid ``grid``, and
    ``fd`` (a ``frechet.FrechetReference``: a classifier's features and the statistics of
    the reference set) where ``fd_classifier`` is on, ``inception`` (an
    ``inception.InceptionReference``) where an Inception metric is on."""

    y: object
    z: object
    teacher: object
    data: object
    sampler: Callable | None = None
    v: Callable | None = None
    grid: object = None
    fd: object = None
    inception: object = None
    _folds: dict = field(default_factory=dict, repr=False, compare=False)

    def fold_mask(self, max_dim: int):
        """``metrics.fold_mask`` of the sampler on ``z``, computed once per sample set: the
        ``fold_fraction`` metric and the evaluate stage's saved mask share it."""
        if max_dim not in self._folds:
            self._folds[max_dim] = metrics.fold_mask(self.sampler, self.z, max_dim)
        return self._folds[max_dim]


@dataclass(frozen=True)
class Metric:
    """One metric. ``per``: ``nfe`` (depends on the sampler's NFE), ``run`` (once per run),
    ``window`` (per window k) or ``t`` (per time t). ``valid``: a dotted path (same
    placeholders) whose value ``False`` drops the value. ``tables``: the report tables that
    show it (``main``, ``local``, ``teacher``); ``figure``: a panel of the NFE figure;
    ``heatmap``, ``plot`` (DVC's nfe plot). ``needs_sampler``: computed for students only.
    ``record``: the run record whose result ``paths`` are read in: ``evaluate`` (eval.json) or
    ``reflow`` (the student's training record of the same grid job, e.g. its cost).
    ``needs``: attributes of ``Samples`` that must not be None for ``compute`` to run (the
    metric is left out otherwise, e.g. ``fd`` when no classifier is configured); ``flag``: an
    evaluate field that must be true for ``compute`` to run (e.g. ``kid``)."""

    key: str
    label: str
    unit: str = ""
    per: str = "nfe"
    better: str = "lower"
    paths: Mapping[str, str] = field(default_factory=dict)
    valid: str | None = None
    compute: Callable | None = None
    needs_sampler: bool = False
    tables: tuple = ("main",)
    figure: bool = False
    heatmap: bool = False
    plot: bool = False
    tex: str | None = None
    note: str | None = None
    record: str = "evaluate"
    needs: tuple = ()
    flag: str | None = None

    def __post_init__(self):
        if self.per not in ("nfe", "run", "window", "t"):
            raise ValueError(f"metric {self.key}: per must be nfe, run, window or t")
        if self.better not in ("lower", "higher"):
            raise ValueError(f"metric {self.key}: better must be lower or higher")
        if self.record not in ("evaluate", "reflow"):
            raise ValueError(f"metric {self.key}: record must be evaluate or reflow")


METRICS = Registry("metric")


class _MetricsOnUse:
    """``reflowma.evaluation.metrics``, imported on first use: the report and the workflow's
    parse read the spec, which needs no torch (the metrics import it)."""

    def __getattr__(self, name):
        from reflowma.evaluation import metrics as module  # torch: on the first computation

        return getattr(module, name)


metrics = _MetricsOnUse()


def register(m: Metric) -> Metric:
    return METRICS.register(m.key, m)


def _sample(key):
    """Paths of a metric that ``sample_metrics`` computes (students, teacher Euler, ceiling)."""
    return {STUDENT: f"nfe.{{nfe}}.{key}", TEACHER_EULER: f"teacher_euler.{{nfe}}.{key}",
            TEACHER_CEILING: f"teacher_ceiling.{key}"}


MARG = "audit.marginal.nfe.{nfe}"
TELE = "audit.telescoping"
# The marginal metrics the report's claims.md tests the regularizer on (at NFE = K); a metric
# without paired values falls back to the one it maps to (KL by change of variables, invalid
# where the map folds -> the kNN estimate).
CLAIM_METRICS = ("kl", "w2_paired_teacher", "mmd_data")
# Tested too where the evaluations computed them (image data: the classifier's and
# InceptionV3's Fréchet distances); absent metrics add no row.
CLAIM_METRICS_WHERE_PRESENT = ("fd_classifier", "fid")
CLAIM_FALLBACK = {"kl": "kl_knn"}

# Registration order = column order of the tables = computation order in ``sample_metrics``.
for _m in (
    Metric("w2_paired_teacher", "W2 to teacher (paired)", "data units", paths=_sample(
        "w2_paired_teacher"), compute=lambda s, c: metrics.w2_paired(s.y, s.teacher),
        figure=True, heatmap=True, plot=True),
    Metric("w2_data", "W2 to data", "data units",
           paths={**_sample("w2_data"), DATA_FLOOR: "data_floor.w2_data"},
           compute=lambda s, c: metrics.w2_unpaired(s.y, s.data), figure=True, heatmap=True,
           plot=True, note="data (floor): W2 between two independent data draws of the "
           "same size (the finite-sample floor of W2 to data)."),
    Metric("mmd_data", "MMD² to data", "RBF sum", paths=_sample("mmd_data"),
           compute=lambda s, c: metrics.mmd(s.y, s.data, c["mmd_bandwidths"]), figure=True,
           heatmap=True, plot=True),
    Metric("mmd_teacher", "MMD² to teacher", "RBF sum", paths=_sample("mmd_teacher"),
           compute=lambda s, c: metrics.mmd(s.y, s.teacher, c["mmd_bandwidths"])),
    Metric("kl", "KL(student‖teacher)", "nats", paths={STUDENT: f"{MARG}.kl_exact"},
           valid=f"{MARG}.valid", figure=True, heatmap=True,
           note="KL/TV: exact change of variables against the teacher CNF density, only for "
           "runs where no sample folded."),
    Metric("kl_knn", "KL kNN (student‖teacher)", "nats",
           paths={STUDENT: f"{MARG}.kl_knn", TEACHER_CEILING: "audit.marginal.teacher_kl_knn"},
           figure=True, note="KL kNN, teacher (ceiling) row: the kNN estimator on the teacher's "
           "own endpoints (from the couplings), its bias floor."),
    Metric("tv", "TV(student, teacher)", paths={STUDENT: f"{MARG}.tv"}, valid=f"{MARG}.valid"),
    Metric("fd_classifier", "FD (classifier features)", "squared features",
           paths={**_sample("fd_classifier"), DATA_FLOOR: "data_floor.fd_classifier"},
           compute=lambda s, c: s.fd.distance(s.y), needs=("fd",), figure=True,
           note="FD (classifier features): Fréchet distance |mu1 − mu2|² + tr(S1 + S2 − "
           "2 (S1 S2)^½) between Gaussians fitted to a LeNet-like classifier's penultimate "
           "features of the samples and of the dataset's test split (the classifier stage; "
           "its test accuracy is the classifier accuracy column); data (floor): the "
           "evaluation's data draw of the same n."),
    Metric("fid", "FID", "squared features", paths={**_sample("fid"), DATA_FLOOR: "data_floor.fid"},
           compute=lambda s, c: s.inception.scores(s.y)["fid"], needs=("inception",),
           flag="fid", figure=True, note="FID: the Fréchet distance in InceptionV3 pool "
           "features (torch-fidelity, 2048-d) to the first inception_ref_samples images of the "
           "training split; data (floor): the evaluation's data draw of the same n."),
    Metric("kid", "KID", "MMD²", paths={**_sample("kid"), DATA_FLOOR: "data_floor.kid"},
           compute=lambda s, c: s.inception.scores(s.y)["kid"], needs=("inception",),
           flag="kid", note="KID: unbiased MMD² with the kernel (a·b/d + 1)³ in Inception "
           "features, mean over kid_subsets random subsets (kid_std: their std)."),
    Metric("kid_std", "KID std (subsets)", "MMD²", paths=_sample("kid_std"), tables=(),
           compute=lambda s, c: s.inception.scores(s.y)["kid_std"], needs=("inception",),
           flag="kid"),
    Metric("precision", "precision (Inception k-NN)", "fraction", better="higher",
           paths={**_sample("precision"), DATA_FLOOR: "data_floor.precision"},
           compute=lambda s, c: s.inception.scores(s.y)["precision"], needs=("inception",),
           flag="precision_recall", note="precision/recall: the fraction of samples inside "
           "the reference's k-NN balls (k = 3) and of reference images inside the samples' "
           "balls, in Inception features (Kynkäänniemi et al. 2019)."),
    Metric("recall", "recall (Inception k-NN)", "fraction", better="higher",
           paths={**_sample("recall"), DATA_FLOOR: "data_floor.recall"},
           compute=lambda s, c: s.inception.scores(s.y)["recall"], needs=("inception",),
           flag="precision_recall"),
    Metric("classifier_accuracy", "classifier accuracy (test)", "fraction", per="run",
           better="higher", paths={STUDENT: "classifier.test_accuracy"},
           note="classifier accuracy: test-split accuracy of the classifier whose features "
           "fd_classifier uses, from the evaluation's eval.json."),
    Metric("local_kl_sum", "Σ_k local KL_k", "nats", per="run",
           paths={STUDENT: f"{TELE}.sum_kl"}, valid=f"{TELE}.available",
           tables=("main", "local"), tex=r"$\sum_k$ local KL$_k$"),
    Metric("fold_fraction", "fold fraction", "fraction of z",
           paths={STUDENT: "nfe.{nfe}.fold_fraction"}, needs_sampler=True, figure=True,
           compute=lambda s, c: metrics.mask_fraction(s.fold_mask(c["fold_max_dim"]))),
    Metric("straightness", "straightness", "squared velocity",
           paths={STUDENT: "nfe.{nfe}.straightness"}, needs_sampler=True, figure=True,
           compute=lambda s, c: metrics.straightness(s.v, s.z, s.grid),
           note="straightness: Σ_i h_i |(x_1 − x_0) − v(x_(t_i), t_i)|², mean over z, on the "
           "sampler's own grid (0: straight paths)."),
    Metric("heldout_tm_loss", "held-out TM loss", "MSE", per="run",
           paths={STUDENT: "heldout_tm_loss"}),
    Metric("seconds_per_step", "s/step (training)", "seconds", per="run",
           paths={STUDENT: "seconds_per_step"}, record="reflow", tex=r"s/step",
           note="s/step: wall-clock seconds per training step of the student, from its reflow "
           "run record (machine- and load-dependent: compare runs made side by side)."),
    Metric("local_kl", "local KL", "nats", per="window",
           paths={STUDENT: "audit.local.windows.{k}.kl"}, tables=("local",)),
    Metric("local_tv", "local TV", per="window", paths={STUDENT: "audit.local.windows.{k}.tv"},
           tables=()),
    Metric("local_kl_knn", "local KL kNN", "nats", per="window",
           paths={STUDENT: "audit.local.windows.{k}.kl_knn"}, tables=()),
    Metric("tele_tv_final", "TV final", per="run", paths={STUDENT: f"{TELE}.tv_final"},
           valid=f"{TELE}.available", tables=("local",)),
    Metric("tele_sum_tv", "Σ_k TV_k", per="run", paths={STUDENT: f"{TELE}.sum_tv"},
           valid=f"{TELE}.available", tables=("local",), tex=r"$\sum_k$ TV$_k$"),
    Metric("tele_pinsker_sum", "Σ_k √(KL_k/2)", per="run",
           paths={STUDENT: f"{TELE}.pinsker_sum"}, valid=f"{TELE}.available",
           tables=("local",), tex=r"$\sum_k \sqrt{\mathrm{KL}_k/2}$"),
    Metric("tele_kl_final", "KL final", "nats", per="run", paths={STUDENT: f"{TELE}.kl_final"},
           valid=f"{TELE}.available", tables=("local",)),
    Metric("score_error", "teacher score error", "relative", per="t",
           paths={TEACHER: "audit.score_error.{t}"}, tables=("teacher",),
           note="score error: sqrt(E|s_teacher − s|² / E|s|²) at samples of p_t, against the "
           "exact mixture score (8gaussians only)."),
):
    register(_m)


# --------------------------------------------------------------------------- computing


def sample_metrics(s: Samples, cfg: dict) -> dict:
    """Every registered metric with a ``compute``, in registration order (those needing the
    sampler only when ``s.sampler`` is given)."""
    return {m.key: m.compute(s, cfg) for _, m in METRICS.items()
            if m.compute is not None and (s.sampler is not None or not m.needs_sampler)
            and all(getattr(s, a) is not None for a in m.needs)
            and (m.flag is None or cfg.get(m.flag))}


# --------------------------------------------------------------------------- reading


def dig(d, dotted: str):
    """``d['a']['b']`` for ``'a.b'``; None where a key is missing."""
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def resolve(obj, path: str) -> list[tuple[dict, object]]:
    """All ``(bindings, value)`` of a path with placeholders in ``obj`` (see module doc)."""
    segs = path.split(".")
    out = []

    def walk(o, i, b):
        if i == len(segs):
            out.append((b, o))
            return
        s = segs[i]
        if s.startswith("{") and s.endswith("}"):
            if isinstance(o, dict):
                items = list(o.items())
            elif isinstance(o, list):
                items = [(str(e["k"]), e) for e in o if isinstance(e, dict) and "k" in e]
            else:
                return
            for key, sub in items:
                walk(sub, i + 1, {**b, s[1:-1]: key})
        elif isinstance(o, dict) and s in o:
            walk(o[s], i + 1, b)

    walk(obj, 0, {})
    return out


def column(m: Metric, b: dict) -> str:
    """The column name of a value: the key, ``<key>_w<k>`` per window, ``<key>_t<t>`` per t."""
    if "k" in b:
        return f"{m.key}_w{int(b['k'])}"
    if "t" in b:
        return f"{m.key}_t{b['t']}"
    return m.key


def values(res: dict, m: Metric, row: str) -> list[tuple[int, str, object]]:
    """``(nfe, column, value)`` of metric ``m`` for row kind ``row`` in an eval.json ``res``;
    ``nfe`` is -1 for values that do not depend on it; values flagged invalid are dropped."""
    path = m.paths.get(row)
    if path is None:
        return []
    out = []
    for b, v in resolve(res, path):
        if m.valid is not None and dig(res, m.valid.format(**b)) is False:
            continue
        out.append((int(b["nfe"]) if "nfe" in b else -1, column(m, b), v))
    return out


_DERIVED = re.compile(r"^(?P<key>.+)_(?:w(?P<k>\d+)|t(?P<t>[-+0-9.e]+))$")


def lookup(column_name: str) -> tuple[Metric | None, str]:
    """The metric of a column and its suffix text (``window 2``, ``t=0.9``, or ``''``)."""
    if column_name in METRICS:
        return METRICS.get(column_name), ""
    g = _DERIVED.match(column_name)
    if g and g["key"] in METRICS:
        return METRICS.get(g["key"]), f"window {g['k']}" if g["k"] else f"t={g['t']}"
    return None, ""


def header(column_name: str) -> tuple[str, str]:
    """``(label, unit)`` of a column (``local KL window 2``, ``nats``)."""
    m, suffix = lookup(column_name)
    if m is None:
        return column_name, ""
    return (f"{m.label} {suffix}" if suffix else m.label), m.unit


def selected(flag: str) -> list[Metric]:
    """Registered metrics with a true ``flag`` (``figure``, ``heatmap``, ``plot``)."""
    return [m for _, m in METRICS.items() if getattr(m, flag)]


def in_table(table: str) -> list[Metric]:
    return [m for _, m in METRICS.items() if table in m.tables]
