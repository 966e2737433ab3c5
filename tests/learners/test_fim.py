"""The FIM loss: weights against brute-force per-sample gradients (float64), its gradient, masking."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.losses import PER_SAMPLE, fim_loss, fim_weights


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    field = Field(FieldConfig(2, 3, width=7, depth=3)).double()
    x = torch.rand(40, 2, dtype=torch.float64) * 2 - 1
    y = torch.rand(40, 3, dtype=torch.float64)
    return field, x, y


def per_sample_grads(field, x, y, loss="mse"):
    """Brute force: every sample's gradient of its own loss, (N, out, in + 1) per layer."""
    params = {k: v.detach() for k, v in field.named_parameters()}
    one = lambda p, xi, yi: PER_SAMPLE[loss](functional_call(field, p, (xi[None],)), yi[None])[0]  # noqa: E731
    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    return [torch.cat([g[f"layers.{i}.weight"], g[f"layers.{i}.bias"][..., None]], -1) for i in range(len(field.layers))]


def errors_and_inputs(field, x, y, loss="mse"):
    taps = [torch.zeros(len(x), d, dtype=x.dtype, requires_grad=True) for d in field.out_dims]
    pred, inputs = field(x, taps)
    deltas = torch.autograd.grad(PER_SAMPLE[loss](pred, y).sum(), taps)
    return inputs, deltas


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_diagonal_fisher_weights_match_brute_force(tiny, loss):
    field, x, y = tiny
    y = (y > 0.5).double() if loss == "bce" else y
    G = per_sample_grads(field, x, y, loss)
    q, P = torch.zeros(len(x), dtype=torch.float64), 0
    for g in G:
        F = g.square().mean(0)
        F = F + 1e-3 * F.mean()
        q += (g.square() / F).sum((1, 2))
        P += F.numel()
    w = fim_weights(*errors_and_inputs(field, x, y, loss), lam=0.7, fisher="diagonal")
    torch.testing.assert_close(w, 1 + 0.7 * q / P, rtol=1e-10, atol=1e-12)


def test_kfac_diag_weights_match_brute_force_with_that_fisher(tiny):
    field, x, y = tiny
    inputs, deltas = errors_and_inputs(field, x, y)
    G = per_sample_grads(field, x, y)
    q, P = torch.zeros(len(x), dtype=torch.float64), 0
    for g, a, d in zip(G, inputs, deltas):
        a2 = torch.cat([a.square(), torch.ones(len(a), 1, dtype=a.dtype)], 1).mean(0)
        d2 = d.square().mean(0)
        F = torch.outer(d2 + 1e-3 * d2.mean(), a2 + 1e-3 * a2.mean())  # diag(E[δ²]) ⊗ diag(E[a²])
        q += (g.square() / F).sum((1, 2))
        P += F.numel()
    torch.testing.assert_close(fim_weights(inputs, deltas, lam=2.0), 1 + 2.0 * q / P, rtol=1e-10, atol=1e-12)


def test_undamped_diagonal_weights_average_one_plus_lambda(tiny):
    field, x, y = tiny
    w = fim_weights(*errors_and_inputs(field, x, y), lam=3.0, fisher="diagonal", damping=0.0)
    assert abs(float(w.mean()) - 4.0) < 1e-9  # mean gᵀF⁻¹g = P exactly for the batch's own diagonal Fisher
    assert float(w.std()) > 0.1  # and the samples are weighted differently


def test_fim_loss_gradient_is_the_weighted_gradient_with_weights_held_fixed(tiny):
    field, x, y = tiny
    inputs, deltas = errors_and_inputs(field, x, y)
    w = fim_weights(inputs, deltas, lam=1.5).detach()
    params = list(field.parameters())
    want = torch.autograd.grad((w * PER_SAMPLE["mse"](field(x), y)).sum() / w.sum(), params)
    got = torch.autograd.grad(fim_loss(field, field.out_dims, x, y, lam=1.5), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert float(fim_loss(field, field.out_dims, x, y, lam=0.0)) == pytest.approx(float(PER_SAMPLE["mse"](field(x), y).mean()), rel=1e-12)


def test_masked_samples_change_nothing(tiny):
    field, x, y = tiny
    real = fim_loss(field, field.out_dims, x[:30], y[:30], lam=1.0)
    padded_y = torch.cat([y[:30], torch.full((10, 3), 50.0, dtype=y.dtype)])  # garbage in the padding
    mask = torch.cat([torch.ones(30), torch.zeros(10)]).double()
    padded = fim_loss(field, field.out_dims, x, padded_y, lam=1.0, mask=mask)
    assert float(padded) == pytest.approx(float(real), rel=1e-12)


def test_fim_loss_works_inside_vmap_and_grad(tiny):
    field, x, y = tiny
    params = {k: v.detach() for k, v in field.named_parameters()}
    f = lambda p, yy: fim_loss(lambda xx, taps: functional_call(field, p, (xx,), {"taps": taps}), field.out_dims, x, yy, lam=1.0)  # noqa: E731
    ys = torch.stack([y, y.flip(0)])
    batched = vmap(grad(f), in_dims=(None, 0))(params, ys)
    for i in range(2):
        single = grad(f)(params, ys[i])
        torch.testing.assert_close(batched["layers.0.weight"][i], single["layers.0.weight"], rtol=1e-9, atol=1e-12)


def test_unknown_fisher_is_named():
    with pytest.raises(MclnfError, match="--fisher kfac: unknown"):
        fim_weights([torch.zeros(2, 2)], [torch.zeros(2, 2)], 1.0, fisher="kfac")
