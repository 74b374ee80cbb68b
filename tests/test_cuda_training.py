"""The training path on CUDA (``pytest -m cuda``; skipped without a CUDA device).

* the stages keep every model on the GPU: ``nn.Module.cpu`` and ``nn.Module.to`` to the CPU
  raise while teacher, couplings, a student with the regularizer and the evaluation (audit on)
  run on CUDA;
* draws on the device: a CUDA generator's state is saved with the resume state, so a run
  stopped after a checkpoint resumes to the same model file as an uninterrupted one (MLP:
  its kernels are deterministic; a UNet's cuDNN backward need not be);
* the ``auto`` levers resolve to fused Adam and device data there;
* ``train.compile: reduce-overhead`` (CUDA graphs) trains a student with the window-start term
  and the Hutchinson regularizer (its double backward on the plain module) to the losses of
  the eager run.
"""

from __future__ import annotations

import json

import pytest
import torch

from reflowma.infra import config
from reflowma.stages import couplings, evaluate, reflow, teacher
from reflowma.training import loop

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMOKE = {"device": "cuda"}
UNET = {"name": "unet", "channels": 8, "channel_mult": [1, 2], "res_blocks": 1,
        "attention_resolutions": [4], "dropout": 0.0, "heads": 2, "norm_groups": 4}


class Stop(Exception):
    pass


@pytest.fixture
def no_cpu_moves(monkeypatch):
    real_to = torch.nn.Module.to

    def cpu(self):
        raise AssertionError(f"{type(self).__name__}.cpu() in a stage")

    def to(self, *args, **kwargs):
        a = kwargs.get("device", args[0] if args else None)
        dev = a.device if isinstance(a, torch.Tensor) else (
            torch.device(a) if isinstance(a, str | torch.device) else None)
        if dev is not None and dev.type == "cpu":
            raise AssertionError(f"{type(self).__name__}.to({a!r}) in a stage")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "cpu", cpu)
    monkeypatch.setattr(torch.nn.Module, "to", to)


def _chain(tmp_path, preset, reflow_over=()):
    t, c, s = tmp_path / "t", tmp_path / "c.h5", tmp_path / "s"
    teacher.run(config.stage_config("teacher", preset, ["train.steps=10"]), t)
    couplings.run(config.stage_config("couplings", preset, []), t / "teacher.pt", c)
    reflow.run(config.stage_config("reflow", preset, ["train.steps=6", *reflow_over]),
               c, t / "teacher.pt", s)
    return t, c, s


def test_stages_keep_the_models_on_the_gpu(no_cpu_moves, tmp_path):
    t, c, s = _chain(tmp_path, {**SMOKE, "data": {"name": "8gaussians"}},
                     ["regularizer.weight=0.1", "regularizer.warm_start=0.0"])
    ev = tmp_path / "eval.json"
    evaluate.run(config.stage_config("evaluate", {**SMOKE, "data": {"name": "8gaussians"}}, [
        "n_samples=64", "nfe=[1,2]", "audit.enabled=true", "audit.logp_steps=4",
        "teacher_steps=8", "batch_size=24"]), s / "student.pt", t / "teacher.pt", c, ev)
    res = json.loads(ev.read_text())
    assert res["heldout_tm_loss"] > 0 and "marginal" in res["audit"]


def test_auto_levers_resolve_to_the_gpu_ones(tmp_path):
    m = torch.nn.Linear(2, 2).cuda()
    cfg = config.stage_config("teacher", SMOKE, [])["train"]
    assert loop.make_optimizer(m, cfg).defaults["fused"]
    assert loop.on_accelerator(cfg["data_on_device"], torch.device("cuda"))


def test_device_generator_resume_is_bit_identical(tmp_path):
    preset = {**SMOKE, "data": {"name": "digits"}}
    cfg = config.stage_config("teacher", preset, ["train.steps=24", "train.checkpoint_every=8",
                                                  "train.log_every=4"])
    teacher.run(cfg, tmp_path / "a")
    teacher.run(cfg, tmp_path / "b")
    out = tmp_path / "resumed"

    def stop(row):
        if row["step"] == 20:
            raise Stop

    with pytest.raises(Stop):
        teacher.run(cfg, out, on_log=stop)
    st = torch.load(out / "state.pt", weights_only=True)
    assert st["step"] == 16 and "-gen-cuda" in st["fingerprint"]
    teacher.run(cfg, out)
    a = (tmp_path / "a" / "teacher.pt").read_bytes()
    assert (tmp_path / "b" / "teacher.pt").read_bytes() == a  # same seed twice
    assert (out / "teacher.pt").read_bytes() == a             # resumed


def test_reduce_overhead_trains_the_regularized_student_like_eager(tmp_path):
    preset = {**SMOKE, "data": {"name": "digits", "layout": "image"},
              "teacher": {"net": UNET}, "reflow": {"net": UNET},
              "couplings": {"n_train": 256, "n_test": 64, "chunk_size": 64, "steps": 4,
                            "windows": [1, 2]}}
    teacher.run(config.stage_config("teacher", preset, ["train.steps=4"]), tmp_path / "t")
    C = tmp_path / "c.h5"
    couplings.run(config.stage_config("couplings", preset, []), tmp_path / "t" / "teacher.pt", C)
    losses = {}
    for mode in ("none", "reduce-overhead"):
        cfg = config.stage_config("reflow", preset, [
            "train.steps=8", "train.log_every=1", f"train.compile={mode}", "K=2",
            "window_start_weight=1.0", "regularizer.weight=0.1", "regularizer.warm_start=0.0",
            "regularizer.logdet=hutchinson", "regularizer.batch_size=16"])
        reflow.run(cfg, C, tmp_path / "t" / "teacher.pt", tmp_path / mode)
        hist = json.loads((tmp_path / mode / "metrics.json").read_text())["history"]
        losses[mode] = [r["loss"] for r in hist]
    # the same draws; compiled kernels round differently: agreement to ~1e-3 over 8 steps
    assert losses["reduce-overhead"] == pytest.approx(losses["none"], rel=1e-2, abs=1e-4)
