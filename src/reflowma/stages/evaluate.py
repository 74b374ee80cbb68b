"""Evaluation stage: few-step NFE sweep of a student against the teacher and the data.

Per NFE (Euler, window-aware for piecewise students): the sample metrics declared in
``reflowma.evaluation.spec`` (W2 paired with the teacher on the same z (the teacher endpoint
stored in the couplings), exact empirical W2 against data (POT), MMD against data and against
the teacher; for students the fold fraction of the sampler map (``None`` above
``fold_max_dim``) and straightness). The teacher is evaluated at the same NFEs
(Euler) and at many steps (the ceiling). The held-out trajectory-matching loss is computed here
only (``heldout_tm_loss``, ``heldout_times`` uniform times per test coupling).

Every network stays on ``device`` (loaded there, never moved): samplers and ODE solves run
there in chunks of ``batch_size`` noise rows (``on_device``; the adaptive ``dopri5`` ceiling
calls the network in chunks instead, ``Batched``: its steps depend on the whole batch), and
so do the held-out TM loss, the marginal audit (float64 copies on the device) and the
classifier's features. What stays on the CPU: the test couplings and noise as read from the
HDF5 file, the finished sample sets, and the metrics on them (POT's exact W2 is a CPU
library, scipy's eigendecompositions give the Fréchet distances, the kNN entropies use
scipy's k-d tree; MMD and the paired W2 are small next to them). Image data get PNG sample
grids per NFE next to eval.json.

With ``fd_classifier: true`` (labelled image data; ``classifier_path`` from the classifier
stage) every sample set also gets its Fréchet distance to the dataset's test split in the
classifier's features (``data_floor`` too: the evaluation's own data draw against the test
split), and eval.json's ``classifier`` section records that classifier's test accuracy and
sha256 next to those numbers. ``fid``/``kid``/``precision_recall`` compare every sample set
(and ``data_floor``) with the training split in InceptionV3 features (``stages.inception``:
a worker process loads the local weights file before any other work; the reference is
cached); eval.json's ``inception`` section records the weights' sha256, the worker's
versions, the reference and the KID/precision-recall settings.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reflowma import data
from reflowma.core import losses, solvers
from reflowma.core.seeding import device, generator
from reflowma.evaluation import audit, logdet_gap, metrics, spec
from reflowma.infra.storage.atomic import atomic_path, write_json
from reflowma.infra.storage.couplings import Couplings
from reflowma.registry import InputError
from reflowma.stages.classifier import frechet_reference
from reflowma.stages.common import check_same_data, load_model
from reflowma.stages.inception import open_reference
from reflowma.stages.reflow import load_ends

log = logging.getLogger(__name__)


def sample_metrics(y, z, ref_teacher, ref_data, cfg, fd=None, inc=None) -> dict:
    """The sample metrics of ``reflowma.evaluation.spec`` (registration order) of samples ``y``
    without a sampler (the teacher's; the student's go through ``spec.Samples`` directly, whose
    fold mask the saved sample sets share)."""
    return spec.sample_metrics(spec.Samples(y, z, ref_teacher, ref_data, fd=fd, inception=inc),
                               cfg)


def run(cfg: dict, student_path, teacher_path, couplings_path, out_path,
        classifier_path=None) -> dict:
    if cfg.get("fd_classifier") and not classifier_path:
        raise InputError("evaluate.fd_classifier: true needs the classifier stage's model "
                         "file: pass --classifier classifier.pt (the workflow does), or set "
                         "fd_classifier: false")
    dev, bs = device(cfg["device"]), cfg.get("batch_size")
    student, smeta, ssha = load_model(student_path, "student", dev)
    teacher, tmeta, tsha = load_model(teacher_path, "teacher", dev)
    # the metrics that call a network per step get these: on cfg.device, in batches of
    # evaluate.batch_size (null, on CPU: the model itself); the audit gets the models
    student_b, teacher_b = Batched(student, dev, bs), Batched(teacher, dev, bs)
    check_same_data("evaluate", cfg["data"], tmeta["data"], teacher_path)
    if smeta["teacher_sha256"] != tsha:
        raise InputError(f"student {str(student_path)!r} was distilled from another teacher "
                         f"than {str(teacher_path)!r}")
    C = Couplings(couplings_path, {"teacher_sha256": tsha})
    K = int(smeta["K"])
    n = cfg["n_samples"]
    if n > C.counts["test"]:  # every metric's sample size: never fewer than asked, silently
        raise InputError(f"evaluate.n_samples: {n} is more than the {C.counts['test']} test "
                         f"couplings in {str(couplings_path)!r}; set n_samples <= "
                         f"{C.counts['test']} or regenerate the couplings with n_test >= {n}")
    n_ld = cfg["logdet"]["n_points"]
    if cfg["logdet"]["enabled"] and n_ld > C.counts["test"]:
        raise InputError(f"evaluate.logdet.n_points: {n_ld} is more than the "
                         f"{C.counts['test']} test couplings in {str(couplings_path)!r}; set "
                         f"n_points <= {C.counts['test']}")
    test = torch.from_numpy(C.states("test", n=n))
    z, x_teacher = test[:, 0], test[:, -1]
    x_data = data.load(cfg["data"], n, generator(cfg["seed"], "eval-data"))
    fd = None
    if cfg.get("fd_classifier"):
        fd = frechet_reference(cfg["data"], classifier_path, dev, batch_size=bs)
    inc = open_reference(cfg, dev)  # the weights load in the worker before any sampling
    log.info("evaluate: K=%d student, %d samples, NFE %s, device %s", K, n, cfg["nfe"], dev)

    saved = SampleSaver(out_path, z, x_teacher, x_data, cfg)
    res = {"K": K, "n_samples": n, "student_sha256": ssha, "teacher_sha256": tsha,
           "nfe": {}, "teacher_euler": {}}
    if fd is not None:  # the accuracy of the classifier behind every fd_classifier number
        res["classifier"] = fd.info
    if inc is not None:
        res["inception"] = inc.info
    for nfe in cfg["nfe"]:
        grid = solvers.sample_grid(nfe, K)
        samp = partial(on_device, partial(_map, student, grid), dev=dev, batch_size=bs)
        s = spec.Samples(samp(z), z, x_teacher, x_data, samp, student_b, grid, fd, inc)
        res["nfe"][str(nfe)] = spec.sample_metrics(s, cfg)
        yt = on_device(partial(solvers.euler_sample, teacher, grid=solvers.sample_grid(nfe, 1)),
                       z, dev, bs)
        res["teacher_euler"][str(nfe)] = sample_metrics(yt, z, x_teacher, x_data, cfg, fd=fd,
                                                        inc=inc)
        saved.add(nfe, s, yt)
        log.info("evaluate: NFE %d: paired W2 %.4f, W2(data) %.4f", nfe,
                 res["nfe"][str(nfe)]["w2_paired_teacher"], res["nfe"][str(nfe)]["w2_data"])
    ceiling = teacher_ceiling(teacher, teacher_b, z, cfg, dev)
    res["teacher_ceiling"] = {"solver": cfg["teacher_solver"], "steps": cfg["teacher_steps"],
                              **sample_metrics(ceiling, z, x_teacher, x_data, cfg, fd=fd,
                                               inc=inc)}
    saved.write(ceiling)
    res["data_floor"] = {"w2_data": metrics.w2_unpaired(
        data.load(cfg["data"], n, generator(cfg["seed"], "eval-data-2")), x_data)}
    if fd is not None:  # the same n data samples against the test split: FD's finite-n floor
        res["data_floor"]["fd_classifier"] = fd.distance(x_data)
    if inc is not None:  # the data draw against the training split: the metrics' floor
        res["data_floor"].update(inc.scores(x_data))
        inc.close()
    test_ends = load_ends(C, "test", K)
    if cfg["audit"]["enabled"]:
        res["audit"] = audit_section(cfg, student, teacher, z, x_teacher, test_ends[:n], K)
    if cfg["logdet"]["enabled"]:
        res["logdet"] = logdet_section(cfg, student_b, test_ends, K)
    res["heldout_tm_loss"] = losses.heldout_tm_loss(
        student, test_ends, K, generator(cfg["seed"], "heldout"),
        n_t=cfg["heldout_times"], batch=bs, device=dev)
    write_json(out_path, res)
    log.info("evaluate: wrote %s", out_path)
    return res


def on_device(fn, z: torch.Tensor, dev: torch.device, batch_size: int | None) -> torch.Tensor:
    """``fn`` (a sampler: row-wise in ``z``) applied on ``dev`` to chunks of ``batch_size``
    rows of ``z``, the results back where ``z`` is; ``fn(z)`` itself for ``batch_size=None``
    with ``z`` on ``dev``. Every network call inside sees the rows it would see under
    ``Batched`` (same chunks), and the solver steps are row-wise: the same numbers.
    Differentiable in ``z`` (the fold fraction takes Jacobians through it)."""
    if batch_size is None and z.device == dev:
        return fn(z)
    bs = batch_size or z.shape[0]
    return torch.cat([fn(z[i: i + bs].to(dev)).to(z.device) for i in range(0, z.shape[0], bs)])


def teacher_ceiling(teacher, teacher_b, z, cfg, dev) -> torch.Tensor:
    """The teacher's many-step endpoint: a fixed-step solve on ``dev`` chunk by chunk, or the
    adaptive ``dopri5`` over the whole batch (its steps depend on every row) with the network
    in chunks (``teacher_b``)."""
    steps, method = cfg["teacher_steps"], cfg["teacher_solver"]
    if method == "dopri5":
        return solvers.solve(teacher_b, z, [0.0, 1.0], steps, method)[-1]
    return on_device(lambda x: solvers.solve(teacher, x, [0.0, 1.0], steps, method)[-1], z, dev,
                     cfg.get("batch_size"))


class Batched(torch.nn.Module):
    """``model(x, t)`` evaluated on ``dev`` (where ``model`` is) in chunks of ``batch_size``
    rows; inputs and outputs stay where the caller keeps them (CPU). Differentiable.
    ``batch_size=None`` on the model's own device calls it directly."""

    def __init__(self, model, dev: torch.device, batch_size: int | None):
        super().__init__()
        self.model, self.dev, self.batch_size = model, dev, batch_size

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.batch_size is None and self.dev == x.device:
            return self.model(x, t)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        bs = self.batch_size or x.shape[0]
        return torch.cat([self.model(x[i: i + bs].to(self.dev), t[i: i + bs].to(self.dev))
                          .to(x.device) for i in range(0, x.shape[0], bs)])


SAMPLES_MAX_DIM = 16
GRID_SIDE = 8  # image grids show GRID_SIDE x GRID_SIDE samples of the first z's


def image_paths(out_path, nfes) -> list[Path]:
    """The PNG grids an evaluation of image data writes next to its ``eval.json``."""
    d = Path(out_path).parent
    names = ["grid_data", "grid_teacher", *(f"grid_{w}_nfe{n}" for n in nfes
                                             for w in ("student", "teacher_euler"))]
    return [d / f"{n}.png" for n in names]


def image_grid(x: torch.Tensor, side: int = GRID_SIDE) -> np.ndarray:
    """uint8 ``[s * H, s * W, C]`` tiling of the first ``s**2`` images ``[n, C, H, W]``
    (values in [-1, 1], clipped; row-major: image i at row i // s, column i % s), where the
    square's side ``s`` is the smallest that holds the n images, at most ``side`` (16 images:
    4 x 4; the last row's empty places black)."""
    side = min(side, math.ceil(math.sqrt(len(x))))
    x = x[: side * side].detach().float().clamp(-1, 1)
    n, C, H, W = x.shape
    if n < side * side:
        x = torch.cat([x, -torch.ones(side * side - n, C, H, W)])
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).numpy()
    return u8.reshape(side, side, C, H, W).transpose(0, 3, 1, 4, 2).reshape(side * H, side * W, C)


def write_png(path: Path, x: torch.Tensor) -> None:
    g = image_grid(x)
    with atomic_path(path) as tmp:
        Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(tmp, format="PNG")


def samples_path(out_path) -> Path:
    """The sample sets of an evaluation: ``samples.npz`` next to its ``eval.json``."""
    return Path(out_path).with_name("samples.npz")


class SampleSaver:
    """Collects the sample sets the report's figures need into ``samples.npz`` (float32):
    ``z`` (noise, t = 0), ``data``, ``teacher`` (the couplings' teacher endpoints, paired by z),
    ``teacher_ceiling``, per NFE ``student_nfe<n>``, ``teacher_euler_nfe<n>`` and
    ``fold_nfe<n>`` (bool, det dy/dz <= 0), plus ``dim``. Above ``SAMPLES_MAX_DIM`` only
    ``dim`` is written (the file always exists: the workflow declares it). Computing the fold
    mask draws no random numbers, so eval.json is unchanged by it. Image data
    (``[N, C, H, W]``, C in 1, 3) also get PNG grids of the first 64 z's (``image_paths``)."""

    def __init__(self, out_path, z, x_teacher, x_data, cfg):
        self.path, self.cfg, self.z = samples_path(out_path), cfg, z
        self.dim = int(z[0].numel())
        self.keep = self.dim <= SAMPLES_MAX_DIM
        self.arrays = {"dim": np.array(self.dim)}
        # image data ([C, H, W], C in 1, 3): PNG grids of the first z's instead (image_paths)
        self.images = z.dim() == 4 and z.shape[1] in (1, 3)
        self.pngs = dict(zip(["data", "teacher"], image_paths(out_path, []), strict=True))
        self.pngs_dir = Path(out_path).parent
        if self.images:
            write_png(self.pngs["data"], x_data)
        if self.keep:
            self._put("z", z)
            self._put("data", x_data)
            self._put("teacher", x_teacher)

    def _put(self, name, x):
        x = x.detach().reshape(x.shape[0], -1)
        self.arrays[name] = x.numpy() if x.dtype == torch.bool else x.float().numpy()

    def add(self, nfe, s: spec.Samples, yt):
        """The student's samples ``s`` (its fold mask shared with the metric) and the
        teacher's Euler samples ``yt`` at this NFE."""
        y = s.y
        if self.images:
            write_png(self.pngs_dir / f"grid_student_nfe{nfe}.png", y)
            write_png(self.pngs_dir / f"grid_teacher_euler_nfe{nfe}.png", yt)
        if self.keep:
            self._put(f"student_nfe{nfe}", y)
            self._put(f"teacher_euler_nfe{nfe}", yt)
            mask = s.fold_mask(self.cfg["fold_max_dim"])
            if mask is not None:
                self.arrays[f"fold_nfe{nfe}"] = mask.numpy()

    def write(self, ceiling):
        if self.images:
            write_png(self.pngs["teacher"], ceiling)
        if self.keep:
            self._put("teacher_ceiling", ceiling)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **self.arrays)
        log.info("evaluate: wrote %s", self.path)


SCORE_ERROR_TS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)


def audit_section(cfg, student, teacher, z, x_teacher, ends, K) -> dict:
    """Marginal audit (docs/math.md): per-NFE KL/TV against the teacher's CNF density (at
    ``audit.nfe`` and K; null: every ``nfe``), with ``audit.local`` the local per-window KL/TV
    on the test couplings' window ends and the telescoping TV bound, and for
    datasets with an exact density (8gaussians) KL/TV against it and, for a Gaussian mixture,
    the teacher's score error vs t. Both come from the dataset object that samples the data."""
    a = cfg["audit"]
    d = int(z[0].numel())
    if d > a.get("skip_above_dim", d):
        reason = (f"skipped: d = {d} > evaluate.audit.skip_above_dim = {a['skip_above_dim']} "
                  "(CNF log-densities and kNN entropies are not meaningful/affordable here)")
        log.info("evaluate: audit %s", reason)
        return {"skipped": reason}
    g = generator(cfg["seed"], "audit")
    ds = data.dataset(cfg["data"])
    mix = getattr(ds, "mixture", None)
    nfes = sorted(set(cfg["nfe"] if a.get("nfe") is None else a["nfe"]) | {K})
    marg = audit.marginal_audit(student, teacher, z, K, nfes, a,
                                data_logp=data.exact_log_prob(ds),
                                teacher_samples=x_teacher, generator=g)
    final = marg["nfe"][str(K)]
    out = {"marginal": marg}
    if a.get("local", True):
        div_max, probes = audit.divergence_settings(a)
        local = audit.local_window_audit(student, teacher, ends, K, a["logp_steps"],
                                         a["max_dim"], a["knn_k"], generator=g,
                                         divergence_max_dim=div_max, probes=probes)
        out["local"] = local
        out["telescoping"] = audit.telescoping(final["tv"], local["windows"],
                                               final["kl_exact"])
    if mix is not None:
        out["score_error"] = audit.score_error_vs_t(teacher, mix, SCORE_ERROR_TS, z.shape[0],
                                                    generator(cfg["seed"], "audit-score"))
    log.info("evaluate: audit: KL(student || teacher), kNN estimate, per NFE: %s",
             ", ".join(f"NFE {k}: {v.get('kl_knn'):.4g}" if v.get("kl_knn") is not None
                       else f"NFE {k}: n/a" for k, v in marg["nfe"].items()))
    return out


def logdet_section(cfg, student_b, ends, K) -> dict:
    """The log-det gap of the regularizer's approximations (``evaluation.logdet_gap``) at the
    first ``logdet.n_points`` test couplings' window starts, on the student's device."""
    c = cfg["logdet"]
    out = logdet_gap.logdet_gaps(student_b.model, ends[: c["n_points"]], K, c["n_probes"],
                                 c["series_orders"], generator(cfg["seed"], "logdet"),
                                 rows=cfg.get("batch_size"), dev=student_b.dev)
    for w in out["windows"]:
        e = w["estimators"]
        rel = e["first_order"]["gap_rel"]
        log.info("evaluate: log-det window %d: exact %.4g, first order %.4g (relative gap "
                 "%.3g), spectral radius median %.3g", w["k"], w["exact"],
                 e["first_order"]["mean"], float("nan") if rel is None else rel,
                 w["spectral_radius_median"])
    return out


def _map(v, grid, z):
    """The few-step sampler as a function of z (differentiable, for the fold fraction)."""
    return solvers.euler_sample(v, z, grid, grad=torch.is_grad_enabled())
