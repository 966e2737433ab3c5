"""Reservoir sampling, the diagonal Fisher against direct computations, the consolidated EWC penalty,
and Reptile (MER's update after each optimizer step) against its update rule written out."""

import numpy as np
import pytest
import torch
from torch import nn

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.learners import LearnerOptions
from mclnf.learners.fisher import EWCPenalty, diagonal_fisher
from mclnf.learners.replay import ReservoirBuffer
from mclnf.learners.reptile import Reptile


def test_reservoir_keeps_a_uniform_sample_of_everything_seen():
    """Task A (1000 samples) then task B (3000): a uniform subset holds A with probability 1/4 each slot."""
    fractions, kept = [], np.zeros(4000)
    for seed in range(200):
        buf = ReservoirBuffer(100, seed=seed)
        buf.add(torch.arange(1000.0)[:, None], torch.zeros(1000, 1))
        assert len(buf) == 100 and torch.equal(buf.x[:, 0].sort().values.unique(), buf.x[:, 0].sort().values)  # no duplicates
        buf.add(torch.arange(1000.0, 4000.0)[:, None], torch.ones(3000, 1))
        assert len(buf) == 100 and buf.seen == 4000
        assert torch.equal(buf.y[:, 0], (buf.x[:, 0] >= 1000).float())  # pairs stay together
        fractions.append(float((buf.x[:, 0] < 1000).float().mean()))
        kept[buf.x[:, 0].long().numpy()] += 1
    assert np.mean(fractions) == pytest.approx(0.25, abs=0.01)  # σ of the mean ≈ 0.003
    assert kept[:1000].mean() == pytest.approx(kept[1000:].mean(), rel=0.05)  # early samples not favoured


def test_reservoir_fills_in_order_then_draws_from_what_it_holds():
    buf = ReservoirBuffer(8, seed=0)
    buf.add(torch.arange(5.0)[:, None], torch.arange(5.0)[:, None])
    assert len(buf) == 5 and torch.equal(buf.x[:5, 0], torch.arange(5.0))
    x, y = buf.sample(1000)
    assert torch.equal(x, y) and set(x[:, 0].tolist()) == set(range(5))
    with pytest.raises(MclnfError, match="buffer is empty"):
        ReservoirBuffer(4).sample(1)
    with pytest.raises(MclnfError, match="--buffer-size 0"):
        ReservoirBuffer(0)


def per_sample_grads(model, x, out_fn):
    """Brute force: one autograd.grad per sample and output."""
    params = [p for p in model.parameters()]
    rows = []
    for xi in x:
        out = out_fn(model(xi[None])[0])
        rows.append([torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, params, retain_graph=True)]) for o in out])
    return rows  # [n][c] → (P,)


@pytest.mark.parametrize("loss,out_dim", [("mse", 3), ("bce", 1), ("ce", 4)])
def test_diagonal_fisher_matches_a_direct_computation(loss, out_dim):
    torch.manual_seed(0)
    model = Field(FieldConfig(2, out_dim, width=8, depth=3)).double()
    x = torch.rand(37, 2, dtype=torch.float64) * 2 - 1
    out_fn = (lambda z: torch.log_softmax(z, -1)) if loss == "ce" else (lambda z: z)
    grads = per_sample_grads(model, x, out_fn)
    with torch.no_grad():
        z = model(x)
    weight = {"mse": torch.full_like(z, 2 / out_dim), "bce": torch.sigmoid(z) * (1 - torch.sigmoid(z)), "ce": torch.softmax(z, -1)}[loss]
    direct = sum(weight[n, c] * grads[n][c].square() for n in range(len(x)) for c in range(out_dim)) / len(x)
    fisher = diagonal_fisher(model, x, loss, max_floats=5000)  # several chunks
    flat = torch.cat([fisher[k].reshape(-1) for k, _ in model.named_parameters()])
    torch.testing.assert_close(flat, direct, rtol=1e-10, atol=1e-14)


def test_mse_fisher_is_the_diagonal_of_the_loss_hessian_at_a_perfect_fit():
    """With zero residuals the Hessian of the mean squared error is its Gauss–Newton matrix."""
    torch.manual_seed(1)
    model = Field(FieldConfig(1, 2, width=6, depth=3)).double()
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)[:, None]
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with torch.no_grad():
        y = model(x)

    def loss(flat):
        ps, i = {}, 0
        for k, s in zip(names, shapes):
            ps[k] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        return (torch.func.functional_call(model, ps, (x,)) - y).square().mean()

    hessian = torch.autograd.functional.hessian(loss, theta)
    fisher = diagonal_fisher(model, x, "mse")
    torch.testing.assert_close(torch.cat([fisher[k].reshape(-1) for k in names]), hessian.diagonal(), rtol=1e-10, atol=1e-14)


def test_ewc_penalty_consolidated_equals_one_term_per_task():
    torch.manual_seed(2)
    shape = (5, 3)
    tasks = [(torch.rand(shape, dtype=torch.float64) * (t != 1), torch.randn(shape, dtype=torch.float64)) for t in range(3)]
    tasks[0][0][0, 0] = 0.0  # a parameter no task has made important
    tasks[2][0][0, 0] = 0.0
    ewc = EWCPenalty(3.0)
    for f, theta in tasks:
        ewc.consolidate({"w": f}, {"w": theta})
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ours = ewc({"w": w})
    direct = 1.5 * sum((f * (w - theta).square()).sum() for f, theta in tasks)
    g_ours, g_direct = (torch.autograd.grad(v, w)[0] for v in (ours, direct))
    torch.testing.assert_close(g_ours, g_direct, rtol=1e-12, atol=1e-12)
    w2 = w.detach() + torch.randn(shape, dtype=torch.float64)  # the difference is a constant
    torch.testing.assert_close(ours - direct, ewc({"w": w2}) - 1.5 * sum((f * (w2 - t).square()).sum() for f, t in tasks))
    assert ewc({"w": w}).item() >= 0
    with pytest.raises(MclnfError, match="--ewc-lambda -1"):
        EWCPenalty(-1)


def sgd_path(theta0, grads_fn, lr, n):
    theta = theta0.clone()
    for _ in range(n):
        theta = theta - lr * grads_fn(theta)
    return theta


def test_reptile_interpolates_within_and_across_batches():
    target = torch.tensor([3.0, -2.0], dtype=torch.float64)
    grad = lambda t: 2 * (t - target)  # noqa: E731
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1)
    reptile = Reptile([p], k=3, beta=0.5, batches=2, gamma=0.25)
    expected = torch.zeros(2, dtype=torch.float64)
    start_across = expected.clone()
    for batch in range(4):
        start = expected.clone()
        expected = start + 0.5 * (sgd_path(start, grad, 0.1, 3) - start)  # within-batch Reptile
        if batch % 2 == 1:
            expected = start_across + 0.25 * (expected - start_across)  # across-batch Reptile
            start_across = expected.clone()
        for _ in range(3):
            opt.zero_grad()
            ((p - target).square().sum()).backward()
            opt.step()
            reptile.after_step()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=1e-14)
    plain = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # β = γ = 1: the inner optimizer itself
    inner = torch.optim.SGD([plain], lr=0.1)
    identity = Reptile([plain], k=3, beta=1.0, batches=2, gamma=1.0)
    for _ in range(7):
        inner.zero_grad()
        ((plain - target).square().sum()).backward()
        inner.step()
        identity.after_step()
    torch.testing.assert_close(plain.detach(), sgd_path(torch.zeros(2, dtype=torch.float64), grad, 0.1, 7))
    with pytest.raises(MclnfError, match="--mer-beta 1.5"):  # MER's options are checked where they are given
        LearnerOptions(mer_beta=1.5)
