"""The regularizer's ``discrepancy`` choice through ``objectives.build``: reverse_kl keeps the
paper's surrogate and its random draws; the sample discrepancies compare each window's one-step
pushforward with independently drawn teacher states at the next window end."""

import pytest
import torch

from reflowma import objectives
from reflowma.core import discrepancies as D
from reflowma.infra import config
from reflowma.models import mlp
from reflowma.objectives import marginal


def _setup(disc, K=2, extra=()):
    cfg = config.stage_config("reflow", None, [
        f"K={K}", "regularizer.weight=1", f"regularizer.discrepancy={disc}",
        "regularizer.warm_start=0", "regularizer.batch_size=16", *extra])
    torch.manual_seed(0)
    v = mlp.MLPVelocity((2,), 16, 2)
    teacher = mlp.MLPVelocity((2,), 16, 2).requires_grad_(False)
    ends = torch.randn(50, K + 1, 2, generator=torch.Generator().manual_seed(1))
    obj = objectives.build(cfg, objectives.Context(ends, K, torch.device("cpu"), teacher, 10))
    reg = [t for t in obj.terms if t.key == "reg"]
    assert len(reg) == 1
    return cfg, v, ends, reg[0]


def test_reverse_kl_is_the_papers_term_with_the_same_draws():
    cfg, v, ends, term = _setup("reverse_kl")
    assert isinstance(term, marginal.MarginalAlignment)
    val, _ = term.loss(v, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the draws of the code before the discrepancy field
    b = torch.randint(0, 50, (16,), generator=g)
    k = torch.tensor([0, 1])[torch.randint(0, 2, (16,), generator=g)]
    ref, _ = marginal.surrogate(v, term.score, ends[b, k], k, 2, generator=g, logdet="exact",
                                fold_delta=1e-3, eps=0.05, rescale_end=True, n_probes=1)
    assert val.item() == ref.item()


@pytest.mark.parametrize("disc", ["mmd", "sliced_w2", "sinkhorn"])
def test_sample_discrepancy_per_window(disc):
    cfg, v, ends, term = _setup(disc, extra=["regularizer.n_projections=8"])
    assert isinstance(term, marginal.SampleDiscrepancy)
    val, stats = term.loss(v, torch.Generator().manual_seed(3))
    assert set(stats) == {"w0", "w1"}
    # the same value from the draws, window by window: 8 sources and 8 independent targets each
    g, vals = torch.Generator().manual_seed(3), []
    for k in (0, 1):
        b = torch.randint(0, 50, (8,), generator=g)
        b2 = torch.randint(0, 50, (8,), generator=g)
        x, tgt = ends[b, k], ends[b2, k + 1]
        y = x + 0.5 * v(x, torch.full((8,), k / 2))
        if disc == "mmd":
            d = D.mmd2(y, tgt, D.median_bandwidths(tgt, (0.5, 1.0, 2.0)))
        elif disc == "sliced_w2":
            d = D.sliced_w2(y, tgt, D.random_directions(8, 2, g))
        else:
            d = D.sinkhorn_divergence(y, tgt, 0.1, 100, 1e-4)
        vals.append(float(d))
        assert stats[f"w{k}"] == pytest.approx(float(d), rel=1e-5)
    assert float(val) == pytest.approx(sum(vals) / 2, rel=1e-5)
    val.backward()
    grads = [p.grad for p in v.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


def test_windows_selection_and_warm_start():
    cfg, v, ends, term = _setup("mmd", K=4, extra=["regularizer.windows=[1,3]",
                                                     "regularizer.warm_start=0.5"])
    assert term.windows == (1, 3) and term.start_step == 5
    _, stats = term.loss(v, torch.Generator().manual_seed(0))
    assert set(stats) == {"w1", "w3"}


@pytest.mark.parametrize("disc,extra", [("reverse_kl", ["regularizer.logdet=hutchinson"]),
                                        ("mmd", []), ("sliced_w2", []), ("sinkhorn", [])])
def test_every_discrepancy_trains_a_unet_on_image_states(disc, extra):
    """Image states ``[N, K + 1, C, H, W]`` (1x8x8, a tiny UNet student and teacher): each
    term is finite and its gradient reaches every trained weight of the student."""
    from reflowma.models import unet

    cfg = config.stage_config("reflow", None, [
        "K=2", "regularizer.weight=1", f"regularizer.discrepancy={disc}",
        "regularizer.warm_start=0", "regularizer.batch_size=8", *extra])
    torch.manual_seed(0)
    v = unet.UNetVelocity((1, 8, 8), 8, (1, 2), 1, (4,), 0.0, 1, 4)
    teacher = unet.UNetVelocity((1, 8, 8), 8, (1, 2), 1, (4,), 0.0, 1, 4).requires_grad_(False)
    ends = torch.randn(20, 3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    obj = objectives.build(cfg, objectives.Context(ends, 2, torch.device("cpu"), teacher, 10))
    term = next(t for t in obj.terms if t.key == "reg")
    val, _ = term.loss(v, torch.Generator().manual_seed(2))
    assert torch.isfinite(val) and val.ndim == 0
    val.backward()
    grads = [p.grad for p in v.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
