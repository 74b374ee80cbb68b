"""No host-device sync on the unlogged steps of training (CUDA only; ``pytest -m cuda``).

The teacher and reflow stages run for real on CUDA (data and draws on the device, fused Adam:
the ``auto`` defaults there) while each unlogged step runs under
``torch.cuda.set_sync_debug_mode("error")``: any operation that makes the host wait for the
device (``.item()``, ``float(tensor)``, a blocking copy, ``bool(tensor)``) raises. The mode is
switched at the start of each step's loss (a wrapper around the stage's ``loss_fn``) and holds
through that step's backward, clipping, optimizer, EMA and the next step's bookkeeping; it is
off on the first ``WARMUP`` steps (lazy set-up: optimizer state, library handles, cached
tensors), on logged steps (they read the loss) and on steps that end at a checkpoint (it
reads the non-finite guard and copies the state out).
"""

from __future__ import annotations

import json

import pytest
import torch

from reflowma.infra import config
from reflowma.stages import couplings, reflow, teacher

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

WARMUP = 3
UNET = {"name": "unet", "channels": 8, "channel_mult": [1, 2], "res_blocks": 1,
        "attention_resolutions": [4], "dropout": 0.1, "heads": 2, "norm_groups": 4}
MLP = {"name": "mlp", "width": 64, "depth": 2, "activation": "silu", "time_embed_dim": 16}
NETS = {"unet-image": ({"name": "digits", "layout": "image", "hflip": True}, UNET),
        "mlp-flat": ({"name": "digits"}, MLP)}
TRAIN = ["train.steps=14", "train.log_every=7", "train.checkpoint_every=10",
         "train.batch_size=32", "train.warmup_steps=2"]


def _preset(kind):
    data, net = NETS[kind]
    return {"device": "cuda", "data": data, "teacher": {"net": net}, "reflow": {"net": net},
            "couplings": {"n_train": 256, "n_test": 64, "chunk_size": 64, "steps": 4,
                          "windows": [1, 2]}}


def sync_checked(monkeypatch, stage, checked: list):
    """Replace ``stage.fit`` by one whose loss function switches the sync debug mode."""
    real = stage.fit

    def fit(model, loss_fn, cfg, *args, **kwargs):
        def wrapped(m, step, gen):
            quiet = (step >= WARMUP and (step + 1) % cfg["log_every"] != 0
                     and step + 1 < cfg["steps"] and (step + 1) % cfg["checkpoint_every"] != 0)
            torch.cuda.set_sync_debug_mode("error" if quiet else "default")
            if quiet:
                checked.append(step)
            return loss_fn(m, step, gen)

        try:
            return real(model, wrapped, cfg, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(stage, "fit", fit)


def test_sync_debug_mode_catches_a_sync():
    x = torch.ones(3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            float(x.sum())
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("kind", list(NETS))
def test_teacher_steps_never_wait_for_the_device(kind, tmp_path, monkeypatch):
    checked = []
    sync_checked(monkeypatch, teacher, checked)
    cfg = config.stage_config("teacher", _preset(kind), TRAIN)
    assert cfg["train"]["data_on_device"] == "auto" and cfg["train"]["fused_optimizer"] == "auto"
    m = teacher.run(cfg, tmp_path)
    assert checked == [3, 4, 5, 7, 8, 10, 11, 12]
    assert m["final_loss"] == m["final_loss"]  # finite: the run completed and logged


@pytest.mark.parametrize("kind", list(NETS))
def test_reflow_steps_with_the_hutchinson_regularizer_never_wait(kind, tmp_path, monkeypatch):
    preset = _preset(kind)
    teacher.run(config.stage_config("teacher", preset, ["train.steps=4"]), tmp_path / "t")
    C = tmp_path / "c.h5"
    couplings.run(config.stage_config("couplings", preset, []), tmp_path / "t" / "teacher.pt", C)
    checked = []
    sync_checked(monkeypatch, reflow, checked)
    cfg = config.stage_config("reflow", preset, [
        *TRAIN, "K=2", "window_start_weight=1.0", "regularizer.weight=0.1",
        "regularizer.warm_start=0.0", "regularizer.logdet=hutchinson",
        "regularizer.batch_size=16"])
    reflow.run(cfg, C, tmp_path / "t" / "teacher.pt", tmp_path / "s")
    assert checked == [3, 4, 5, 7, 8, 10, 11, 12]
    hist = json.loads((tmp_path / "s" / "metrics.json").read_text())["history"]
    assert all(row["reg"] == row["reg"] for row in hist)  # the term ran, finite
