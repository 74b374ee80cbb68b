"""The cheaper training step: forward-mode log-det terms, the shared time embedding.

Every fast path is checked against the path it replaces (kept here as a private reference),
in float64: values and parameter gradients agree to rounding (relative 1e-10), and the shared
time embedding is bit-identical for the MLP.
"""

import pytest
import torch

from reflowma.core import solvers
from reflowma.core.autodiff import batch_jacobian, forward_jacobian, velocity_jvp
from reflowma.models import mlp, unet
from reflowma.objectives import marginal

DT = torch.float64


def _mlp(d=3, act="silu", width=32):
    torch.manual_seed(0)
    return mlp.MLPVelocity((d,), width, 3, act).to(DT)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _reverse_surrogate(v, score_fn, x, k, K, logdet, fold_delta, eps, n_probes, generator):
    """The surrogate as it was (reverse mode, d VJPs / one per probe with create_graph)."""
    h = 1.0 / K
    x = x.detach().requires_grad_(True)
    tk = k.to(x.dtype) / K
    vx = v(x, tk)
    y = x + h * vx
    if logdet == "exact":
        ld, _ = marginal.logdet_exact(vx, x, h, fold_delta)
    elif logdet == "trace":
        ld = marginal.logdet_trace(vx, x, h)
    else:
        ld = marginal.logdet_hutchinson(vx, x, h, n_probes, generator)
    last = (k + 1) == K
    t_end = torch.where(last, torch.full_like(tk, 1.0 - eps), (k + 1).to(x.dtype) / K)
    scale = torch.where(last, torch.full_like(tk, 1.0 - eps), torch.ones_like(tk))
    y_end = y * scale[:, None]
    s = score_fn(y_end.detach(), t_end).detach()
    return (-ld - (s * y_end).sum(-1)).mean()


@pytest.mark.parametrize("act", sorted(mlp.ACTIVATIONS))
def test_mlp_jvp_matches_reverse_jacobian(act):
    v = _mlp(act=act)
    x, t = torch.randn(7, 3, dtype=DT), torch.rand(7, dtype=DT)
    out, J = forward_jacobian(v, x, t)
    xr = x.clone().requires_grad_(True)
    ref = batch_jacobian(v(xr, t), xr)
    assert torch.equal(out, v(x, t))
    assert torch.allclose(J, ref, rtol=1e-12, atol=1e-14)


def test_generic_forward_mode_matches_reverse():
    """Networks without ``jvp`` (a closure; a small UNet) go through torch.func."""
    net = _mlp(d=2)

    def v(x, t):  # no .jvp attribute: the torch.func path
        return net(x, t)

    x, t = torch.randn(5, 2, dtype=DT), torch.rand(5, dtype=DT)
    _, J = forward_jacobian(v, x, t)
    xr = x.clone().requires_grad_(True)
    assert torch.allclose(J, batch_jacobian(net(xr, t), xr), rtol=1e-12, atol=1e-14)
    torch.manual_seed(1)
    u = unet.UNetVelocity((1, 8, 8), 8, (1, 2), 1, (4,), 0.0, 1, 4).to(DT)
    for p in u.parameters():
        torch.nn.init.normal_(p, std=0.1)  # the zero-initialised convs would make J = 0
    x, t = torch.randn(3, 1, 8, 8, dtype=DT), torch.rand(3, dtype=DT)
    tang = torch.randn(2, 3, 1, 8, 8, dtype=DT)
    _, Ju = velocity_jvp(u, x, t, tang)
    xr = x.clone().requires_grad_(True)
    J = batch_jacobian(u(xr, t), xr)
    ref = torch.einsum("bij,nbj->nbi", J, tang.reshape(2, 3, -1)).reshape(tang.shape)
    assert torch.allclose(Ju, ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("logdet", ["exact", "trace", "hutchinson"])
def test_surrogate_forward_mode_matches_reverse(logdet):
    """Same loss and same parameter gradient as the reverse-mode surrogate (same probes),
    with both branches of the fold barrier on (delta = the median det(I + h J))."""
    K, d, n = 2, 3, 64
    v = _mlp(d)
    with torch.no_grad():
        v.net[-1].weight.mul_(30.0)
    x = torch.randn(n, d, dtype=DT)
    k = torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(3))
    _, J = forward_jacobian(v, x, k.to(DT) / K)
    det = torch.linalg.det(torch.eye(d, dtype=DT) + J / K).detach()
    delta = float(det.median())
    assert (det < delta).any() and (det > delta).any()
    teacher = _mlp(d)
    score = marginal.teacher_score_fn(teacher)
    opts = {"fold_delta": delta, "eps": 0.05, "n_probes": 3}
    L, stats = marginal.surrogate(v, score, x, k, K, logdet=logdet,
                                  generator=torch.Generator().manual_seed(5), **opts)
    g = torch.autograd.grad(L, list(v.parameters()))
    Lr = _reverse_surrogate(v, score, x, k, K, logdet, generator=torch.Generator().manual_seed(5),
                            **opts)
    gr = torch.autograd.grad(Lr, list(v.parameters()))
    assert abs(float(L - Lr)) <= 1e-10 * abs(float(Lr))
    assert _rel(torch.cat([a.flatten() for a in g]), torch.cat([b.flatten() for b in gr])) < 1e-10
    assert ("folded" in stats) == (logdet == "exact")


def test_shared_time_detection():
    t = torch.rand(4)
    assert mlp.shared_time(torch.tensor(0.3)) and mlp.shared_time(torch.tensor(0.3).expand(4))
    assert not mlp.shared_time(t) and not mlp.shared_time(torch.full((4,), 0.3))
    assert solvers.time_vector(0.25, torch.zeros(6, 2)).stride() == (0,)


def test_shared_time_embedding_identical():
    """MLP with autograd on: bit-identical to the per-sample embedding; UNet: equal to rounding
    (its time MLP runs on one row instead of B); a whole RK4 solve (no autograd: the MLP's
    folded first layer) equal to rounding."""
    v = mlp.MLPVelocity((2,), 64, 3)
    x = torch.randn(9, 2)
    full = torch.full((9,), 0.37)
    assert torch.equal(v(x, torch.tensor(0.37).expand(9)), v(x, full))
    assert torch.equal(v(x, torch.tensor(0.37)), v(x, full))
    torch.manual_seed(2)
    u = unet.UNetVelocity((1, 8, 8), 8, (1, 2), 1, (4,), 0.0, 1, 4)
    for p in u.parameters():
        torch.nn.init.normal_(p, std=0.1)
    xi = torch.randn(3, 1, 8, 8)
    a, b = u(xi, torch.tensor(0.6).expand(3)), u(xi, torch.full((3,), 0.6))
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(b.detach().abs().max()))

    def per_sample(v_, x_, t_):  # the old time_vector: a materialised [B] tensor
        return v_(x_, t_.contiguous())

    z = torch.randn(33, 2)
    new = solvers.solve(v, z, [0.0, 0.5, 1.0], 8, "rk4")
    old = solvers.solve(lambda x_, t_: per_sample(v, x_, t_), z, [0.0, 0.5, 1.0], 8, "rk4")
    # 24 network calls, each within float32 rounding of the other path (next test)
    assert torch.allclose(new, old, rtol=0, atol=1e-5 * float(old.abs().max()))


@pytest.mark.parametrize("activation", sorted(mlp.ACTIVATIONS))
def test_mlp_shared_time_inference_path(activation):
    """No autograd and one time: the first layer's time part is folded into its bias and the
    activations run in place. Equal to the general path to float32 rounding: the first layer
    sums dim + time_embed_dim = 36 products in another order (relative error <= 36 eps ~ 4e-6
    of the pre-activation scale, then carried through three Lipschitz-1 activations and
    unit-scale layers); the inputs are not modified; with autograd on it is not taken."""
    torch.manual_seed(3)
    v = mlp.MLPVelocity((2, 2), 48, 3, activation)
    x = torch.randn(40, 2, 2)
    x0 = x.clone()
    t = torch.tensor(0.61).expand(40)
    with torch.no_grad():
        fast, general = v(x, t), v(x, t.contiguous())
    assert fast.shape == x.shape and torch.equal(x, x0)
    assert not torch.equal(fast, general)  # the folded path ran (its rounding differs)
    assert torch.allclose(fast, general, rtol=0, atol=4e-6 * float(general.abs().max()))
    assert torch.equal(v(x, t), v(x, t.contiguous()))  # autograd on: the general path


@pytest.mark.parametrize("activation", sorted(mlp.ACTIVATIONS))
def test_mlp_jvp_without_autograd_is_bit_identical(activation):
    """The tangent pass runs its products in place without autograd (the audit's exact
    divergence): the same operations in the same order, so the same bits as with autograd."""
    torch.manual_seed(4)
    v = mlp.MLPVelocity((3,), 40, 3, activation)
    x, t = torch.randn(25, 3), torch.rand(25)
    u = torch.randn(3, 25, 3)
    with_grad = v.jvp(x, t, u)
    with torch.no_grad():
        without = v.jvp(x, t, u)
    assert not without[1].requires_grad and with_grad[1].requires_grad
    assert torch.equal(with_grad[0], without[0]) and torch.equal(with_grad[1], without[1])


def test_mlp_walks_its_layers_by_type():
    """forward and jvp read each layer of ``net`` by its type, not its position: a net of
    another layout (one hidden layer after another activation, mixed activations) gives the
    inference values of the autograd forward (to rounding) and the autograd Jacobian; a layer
    with no tangent rule is refused by name."""
    torch.manual_seed(5)
    v = mlp.MLPVelocity((3,), 24, 1).to(DT)
    v.net = torch.nn.Sequential(v.net[0], torch.nn.Tanh(), torch.nn.Linear(24, 16),
                                torch.nn.SiLU(), torch.nn.ReLU(), torch.nn.Linear(16, 3)).to(DT)
    x, t = torch.randn(11, 3, dtype=DT), torch.tensor(0.3, dtype=DT).expand(11)
    with torch.no_grad():
        fast = v(x, t)
    assert torch.allclose(fast, v(x, t.contiguous()), rtol=1e-12, atol=1e-14)
    out, J = forward_jacobian(v, x, t)
    xr = x.clone().requires_grad_(True)
    assert torch.allclose(J, batch_jacobian(v(xr, t), xr), rtol=1e-12, atol=1e-14)
    v.net.insert(2, torch.nn.LayerNorm(24).to(DT))
    with pytest.raises(TypeError, match="LayerNorm"):
        v.jvp(x, t, torch.randn(2, 11, 3, dtype=DT))
