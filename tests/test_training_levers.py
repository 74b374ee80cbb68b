"""The training loop's accelerator levers, on the CPU: each one validated, each one's CPU
default computing what the loop computed without it, and each forced on doing what it says.

* ``train.data_on_device``: draws take the generator's device; on the CPU a dataset made
  resident (``data.on_device``) draws exactly the numbers of the host path, so a teacher or
  student with ``true`` equals one with ``false`` bit for bit, and a ``true`` run interrupted
  after a checkpoint resumes to the same weights.
* the non-finite guard: read on logged steps and before every save, it names the first bad
  step and never lets a state file hold weights updated from a non-finite loss.
* ``train.fused_optimizer``, ``train.lr_scaling``, ``train.channels_last``.
"""

from __future__ import annotations

import math

import pytest
import torch

from reflowma import data, models
from reflowma.infra import config
from reflowma.registry import InputError
from reflowma.stages import reflow, teacher
from reflowma.training import loop

BASE = {"steps": 12, "batch_size": 16, "lr": 1e-2, "lr_schedule": "constant", "warmup_steps": 0,
        "ema_decay": 0.5, "grad_clip": 1.0, "checkpoint_every": 100, "log_every": 4,
        "amp": "none"}


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- data on device


DATASETS = [{"name": "8gaussians"}, {"name": "moons"}, {"name": "checkerboard"},
            {"name": "spirals"}, {"name": "digits"},
            {"name": "digits", "layout": "image", "hflip": True}]


@pytest.mark.parametrize("cfg", DATASETS, ids=lambda c: "-".join(map(str, c.values())))
def test_resident_dataset_draws_the_host_paths_numbers(cfg):
    ds = data.dataset(cfg)
    res = data.on_device(ds, torch.device("cpu"))
    assert res is not None
    a = ds.sample(500, torch.Generator().manual_seed(3))
    b = res.sample(500, torch.Generator(device="cpu").manual_seed(3))
    assert torch.equal(a, b)


def test_resident_image_flips_are_fair_and_points_uniform():
    ds = data.on_device(data.dataset({"name": "digits", "layout": "image", "hflip": True}),
                        torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    n = 20_000
    idx = torch.randint(0, len(ds), (n,), generator=torch.Generator().manual_seed(0))
    x = ds.sample(n, g)
    same = (x == ds.points[idx].float()).flatten(1).all(1)  # unflipped draws (digits: float)
    flipped = (x == ds.points[idx].float().flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())  # every sample is a stored image, flipped or not
    sym = (ds.points[idx] == ds.points[idx].flip(-1)).flatten(1).all(1)  # symmetric images
    frac = float(flipped[~sym].float().mean())
    # Binomial(n', 1/2) over the asymmetric draws: 5 standard deviations
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / int((~sym).sum()))
    counts = torch.bincount(idx, minlength=len(ds)).float()  # uniform indices: chi-square
    chi2 = float(((counts - n / len(ds)) ** 2 / (n / len(ds))).sum())
    dof = len(ds) - 1
    assert abs(chi2 - dof) < 6 * math.sqrt(2 * dof)


def test_dataset_without_to_is_host_only():
    class HostOnly:
        shape = (2,)

        def sample(self, n, g):
            return torch.randn(n, 2, generator=g)

    assert data.on_device(HostOnly(), torch.device("cpu")) is None


def _teacher(tmp_path, name, *over):
    cfg = config.stage_config("teacher", "smoke", ["train.steps=24", "train.checkpoint_every=8",
                                                   "train.log_every=4", *over])
    out = tmp_path / name
    return cfg, out, teacher.run(cfg, out)


def test_teacher_with_draws_on_the_device_equals_the_host_path_on_cpu(tmp_path):
    _, a, ma = _teacher(tmp_path, "false", "train.data_on_device=false")
    _, b, mb = _teacher(tmp_path, "true", "train.data_on_device=true")
    assert _same(_weights(a / "teacher.pt"), _weights(b / "teacher.pt"))
    assert ma["eval_fm_loss"] == mb["eval_fm_loss"] and ma["final_loss"] == mb["final_loss"]


class Stop(Exception):
    pass


def test_teacher_with_draws_on_the_device_resumes_bit_identical(tmp_path):
    cfg, ref, _ = _teacher(tmp_path, "ref", "train.data_on_device=true")
    out = tmp_path / "resumed"

    def stop(row):  # after the checkpoint of step 16, before the end
        if row["step"] == 20:
            raise Stop

    with pytest.raises(Stop):
        teacher.run(cfg, out, on_log=stop)
    assert (out / "state.pt").is_file() and not (out / "teacher.pt").exists()
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 16
    teacher.run(cfg, out)
    assert (ref / "teacher.pt").read_bytes() == (out / "teacher.pt").read_bytes()


def test_reflow_with_draws_on_the_device_equals_the_host_path_on_cpu(tmp_path):
    from reflowma.stages import couplings

    tcfg = config.stage_config("teacher", "smoke", ["train.steps=10"])
    teacher.run(tcfg, tmp_path / "t")
    C = tmp_path / "c.h5"
    couplings.run(config.stage_config("couplings", "smoke", []), tmp_path / "t" / "teacher.pt", C)
    outs = []
    for flag in ("false", "true"):
        cfg = config.stage_config("reflow", "smoke", [
            "train.steps=12", "regularizer.weight=0.1", "regularizer.warm_start=0.0",
            "window_start_weight=1.0", f"train.data_on_device={flag}"])
        reflow.run(cfg, C, tmp_path / "t" / "teacher.pt", tmp_path / flag)
        outs.append(_weights(tmp_path / flag / "student.pt"))
    assert _same(*outs)


def test_data_on_device_true_refuses_a_host_only_dataset(monkeypatch, tmp_path):
    cfg = config.stage_config("teacher", "smoke", ["train.data_on_device=true"])
    monkeypatch.setattr(data, "on_device", lambda ds, dev: None)
    with pytest.raises(InputError, match=r"teacher\.train\.data_on_device: true needs a "
                                         r"dataset that samples on the device"):
        teacher.run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- non-finite guard


def _diverging(bad_from: int):
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))

    def loss_fn(m, step, g):
        loss = (m(x) - x.flip(1)).pow(2).mean()
        return (loss * float("nan") if step >= bad_from else loss), {"seen": loss.detach()}

    return loss_fn


def test_first_non_finite_step_is_named_at_the_next_logged_step(tmp_path):
    cfg = {**BASE, "log_every": 4, "checkpoint_every": 100}
    with pytest.raises(loop.NonFiniteLoss, match=r"^t: non-finite loss nan at step 5 "
                                                 r"\(lr=0\.01\); nothing was promoted$"):
        loop.fit(_net(), _diverging(5), cfg, torch.Generator(), tmp_path / "s.pt", "fp", "t")
    assert not (tmp_path / "s.pt").exists()


def test_no_state_holds_weights_from_a_non_finite_loss(tmp_path):
    # checkpoints at steps 3 and 6, logged steps 10, 12: the loss is bad from step 4 on
    cfg = {**BASE, "log_every": 10, "checkpoint_every": 3}
    state = tmp_path / "s.pt"
    with pytest.raises(loop.NonFiniteLoss, match="at step 4 "):
        loop.fit(_net(), _diverging(4), cfg, torch.Generator(), state, "fp", "t")
    st = torch.load(state, weights_only=True)
    assert st["step"] == 3  # the save at step 6 was refused
    assert all(bool(torch.isfinite(v).all()) for v in st["model"].values())


def test_logged_rows_are_floats_from_tensor_logs(tmp_path):
    _, hist = loop.fit(_net(), _diverging(10**9), BASE, torch.Generator(), tmp_path / "s.pt",
                       "fp")
    assert [r["step"] for r in hist] == [4, 8, 12]
    for r in hist:
        assert type(r["loss"]) is float and type(r["seen"]) is float
        assert r["loss"] == r["seen"]


# --------------------------------------------------------------------------- optimizer, lr


def test_fused_optimizer_auto_is_the_default_adam_on_cpu_and_true_is_fused():
    m = _net()
    assert not loop.make_optimizer(m, {**BASE, "fused_optimizer": "auto"}).defaults["fused"]
    assert loop.make_optimizer(m, {**BASE, "fused_optimizer": True}).defaults["fused"]


def test_fused_adam_trains_to_the_same_weights(tmp_path):
    runs = {}
    for flag in (False, True):
        net = _net()
        ema, hist = loop.fit(net, _diverging(10**9), {**BASE, "fused_optimizer": flag},
                             torch.Generator(), tmp_path / f"{flag}.pt", "fp")
        runs[flag] = (net, hist)
    # the same update, another kernel: agreement to float32 rounding over 12 steps
    for a, b in zip(runs[False][0].parameters(), runs[True][0].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule,factor", [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_lr_scaling_rule(tmp_path, rule, factor):
    cfg = {**BASE, "batch_size": 64, "lr_scaling": rule, "lr_reference_batch": 16}
    assert loop.base_lr(cfg) == pytest.approx(1e-2 * factor, rel=1e-15)
    _, hist = loop.fit(_net(), _diverging(10**9), cfg, torch.Generator(), tmp_path / "s.pt", "fp")
    assert {r["lr"] for r in hist} == {loop.base_lr(cfg)}


def test_lr_scaling_needs_its_reference_batch():
    with pytest.raises(config.ConfigError, match=r"^teacher\.train\.lr_reference_batch: is "
                                                 r"required when train\.lr_scaling is 'sqrt'"):
        config.stage_config("teacher", "smoke", ["train.lr_scaling=sqrt"])
    cfg = config.stage_config("teacher", "smoke", ["train.lr_scaling=sqrt",
                                                   "train.lr_reference_batch=32"])
    assert loop.base_lr(cfg["train"]) == pytest.approx(cfg["train"]["lr"] * math.sqrt(64 / 32))


@pytest.mark.parametrize("field,value", [("data_on_device", "maybe"),
                                         ("fused_optimizer", "sometimes"),
                                         ("lr_scaling", "cubic"), ("channels_last", "1")])
def test_unknown_values_name_the_field(field, value):
    with pytest.raises(config.ConfigError, match=rf"train\.{field}"):
        config.stage_config("reflow", "smoke", [f"train.{field}={value}"])


def test_neutral_values_leave_the_fingerprint_as_a_config_without_them():
    cfg = config.stage_config("teacher", "smoke", [])
    bare = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in loop.NEUTRAL}}
    bare.pop("eval")
    assert loop.identity(cfg) == bare
    on = config.stage_config("teacher", "smoke", ["train.data_on_device=true"])
    assert loop.identity(on)["train"]["data_on_device"] is True


# --------------------------------------------------------------------------- channels_last


UNET = {"name": "unet", "channels": 8, "channel_mult": [1, 2], "res_blocks": 1,
        "attention_resolutions": [4], "dropout": 0.0, "heads": 2, "norm_groups": 4}


def test_channels_last_trains_like_the_default_layout(tmp_path):
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.rand(16, generator=torch.Generator().manual_seed(1))
    seen = []

    def loss_fn(m, step, g):
        if step == 0:
            w = next(p for p in m.parameters() if p.dim() == 4 and min(p.shape[1:]) > 1)
            seen.append(w.is_contiguous(memory_format=torch.channels_last)
                        and not w.is_contiguous())
        return (m(x, t) - x).pow(2).mean(), {}

    out = {}
    for flag in (False, True):
        torch.manual_seed(0)
        net = models.build((1, 8, 8), UNET)
        ema, hist = loop.fit(net, loss_fn, {**BASE, "steps": 4, "channels_last": flag},
                             torch.Generator(), tmp_path / f"{flag}.pt", "fp")
        out[flag] = (ema, [r["loss"] for r in hist])
    assert seen == [False, True]
    assert out[True][1] == pytest.approx(out[False][1], rel=1e-4)
    for a, b in zip(out[True][0].parameters(), out[False][0].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_channels_last_is_refused_for_data_that_are_not_images(tmp_path):
    cfg = config.stage_config("teacher", "smoke", ["train.channels_last=true"])
    with pytest.raises(InputError, match=r"^teacher\.train\.channels_last: true needs image "
                                         r"data \[C, H, W\]; the data's samples have shape "
                                         r"\(2,\); allowed here: false$"):
        teacher.run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
