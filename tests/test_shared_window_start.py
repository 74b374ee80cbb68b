"""``regularizer.share_window_start``: the window-start term and the marginal regularizer from
one forward on one batch. Before the warm start the objective is the option-off one (same draws,
same values); after it, each part equals its term computed on the shared batch by the functions
of the option off (the window-start distance on ``v(x_k, t_k)``, ``marginal.surrogate``), for
the MLP's forward-mode tangent path and a network without ``jvp`` (reverse mode), in every
log-det mode."""

import pytest
import torch
from torch import nn

from reflowma import objectives
from reflowma.core import interpolant, losses
from reflowma.infra import config
from reflowma.infra.config import ConfigError
from reflowma.models import mlp
from reflowma.objectives import marginal, shared
from reflowma.training import loop

K, N, STEPS = 2, 64, 10


class Plain(nn.Module):
    """A velocity without ``jvp`` (the regularizer takes VJPs): ``tanh`` MLP on ``[x, t]``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)], -1))


def _objective(share: bool, logdet: str, extra=()):
    cfg = config.stage_config("reflow", None, [
        f"K={K}", "window_start_weight=1.0", "regularizer.weight=0.1",
        f"regularizer.logdet={logdet}", "regularizer.warm_start=0.5", "regularizer.batch_size=16",
        "train.batch_size=24", f"regularizer.share_window_start={str(share).lower()}", *extra])
    ends = torch.randn(N, K + 1, 2, generator=torch.Generator().manual_seed(1))
    teacher = mlp.MLPVelocity((2,), 16, 2).requires_grad_(False)
    ctx = objectives.Context(ends, K, torch.device("cpu"), teacher, STEPS)
    return cfg, ends, objectives.build(cfg, ctx)


def _net(kind):
    torch.manual_seed(0)
    return mlp.MLPVelocity((2,), 16, 2) if kind == "mlp" else Plain()


def test_the_shared_term_replaces_both_and_logs_both():
    _, _, obj = _objective(True, "exact")
    assert [type(t) for t in obj.terms][1:] == [shared.SharedWindowStart]
    assert obj.keys() == ["tm", "window_start", "reg"]
    _, logs = obj(_net("mlp"), STEPS, torch.Generator().manual_seed(0))
    assert {"tm", "window_start", "reg", "reg_logdet", "reg_folded"} <= set(logs)
    _, _, off = _objective(False, "exact")
    assert off.keys() == obj.keys()


@pytest.mark.parametrize("kind", ["mlp", "plain"])
def test_before_the_warm_start_it_is_the_objective_of_the_option_off(kind):
    v = _net(kind)
    _, _, on = _objective(True, "exact")
    _, _, off = _objective(False, "exact")
    loss_on, logs_on = on(v, 0, torch.Generator().manual_seed(3))
    loss_off, logs_off = off(v, 0, torch.Generator().manual_seed(3))
    assert "reg" not in logs_on and logs_on == logs_off
    assert loss_on.item() == loss_off.item()


@pytest.mark.parametrize("kind", ["mlp", "plain"])
@pytest.mark.parametrize("logdet", ["exact", "trace", "hutchinson"])
def test_after_the_warm_start_each_part_is_its_term_on_the_shared_batch(kind, logdet):
    v = _net(kind)
    cfg, ends, obj = _objective(True, logdet)
    reg = obj.terms[1].regularizer
    parts = obj.terms[1].parts(v, STEPS // 2, torch.Generator().manual_seed(7))
    (ws_key, ws_w, ws_val, _), (reg_key, reg_w, reg_val, stats) = parts
    assert (ws_key, ws_w, reg_key, reg_w) == ("window_start", 1.0, "reg", 0.1)
    # the same draws by hand: 16 couplings, k uniform over the K windows, then the probes
    g = torch.Generator().manual_seed(7)
    b = torch.randint(0, N, (16,), generator=g)
    k = torch.randint(0, K, (16,), generator=g)
    x, target, tk = interpolant.window_start_pair(ends[b], k, K)
    ws_ref = losses.distance(v(x, tk), target).mean()
    reg_ref, stats_ref = marginal.surrogate(v, reg.score, x, k, K, generator=g, logdet=logdet,
                                            fold_delta=1e-3, eps=cfg["regularizer"]["eps"],
                                            rescale_end=True, n_probes=1)
    # the forward-mode primal and the plain forward: the same products (float32 rounding)
    assert ws_val.item() == pytest.approx(ws_ref.item(), rel=1e-6)
    assert reg_val.item() == reg_ref.item() and stats == stats_ref
    # and the gradient of the weighted sum is that of the two terms' weighted sum
    grads = torch.autograd.grad(ws_w * ws_val + reg_w * reg_val, list(v.parameters()))
    refs = torch.autograd.grad(ws_ref + 0.1 * reg_ref, list(v.parameters()))
    for a, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("over, says", [
    (["regularizer.windows=[0]"], "regularizer.windows all"),
    (["window_start_weight=0"], "window_start_weight > 0"),
    (["regularizer.discrepancy=mmd"], "discrepancy reverse_kl"),
])
def test_bad_combinations_name_the_field(over, says):
    with pytest.raises(ConfigError, match="share_window_start") as e:
        config.stage_config("reflow", None, [f"K={K}", "window_start_weight=1.0",
                                             "regularizer.weight=0.1",
                                             "regularizer.share_window_start=true", *over])
    assert says in str(e.value)
    # the control arm of a grid (weight 0) may carry the option: it has nothing to share
    config.stage_config("reflow", None, [f"K={K}", "regularizer.weight=0",
                                         "regularizer.share_window_start=true", *over])


def test_the_option_off_leaves_the_run_fingerprint_as_without_it():
    """``share_window_start: false`` computes what a config without the field computes, so a
    run's fingerprint (and the student file) is that of a config without it; true is seen."""
    off = config.stage_config("reflow", "smoke", [])
    bare = {**off, "regularizer": {k: v for k, v in off["regularizer"].items()
                                   if k != "share_window_start"}}
    assert loop.identity(off)["regularizer"] == bare["regularizer"]
    assert loop.identity(off) == loop.identity(bare)
    on = config.stage_config("reflow", "smoke", ["regularizer.share_window_start=true"])
    assert loop.identity(on)["regularizer"]["share_window_start"] is True
