"""The FIM loss: weights against brute-force per-sample gradients (float64), its gradient, masking.

Its gradient is formed from one backward pass's errors, (c ⊙ δ)ᵀ a with c = w / Σw; every test of it
here compares against the formulation it replaced (weights from one backward, the gradient from a
second, :func:`reference_fim_loss`), against brute-force per-sample gradients Σ_n c_n ∇ℓ_n, or against
finite differences of the loss with its weights held fixed — first and second derivatives, in plain
autograd and under ``torch.func`` (vmap, grad of grad, MAML's second-order meta-gradient)."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.learners import MetaOptions
from mclnf.learners.meta import MCLNFFIM
from mclnf.losses import PER_SAMPLE, fim_loss, fim_weights
from mclnf.signals.datasets import load_dataset


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
    taps = [layer.bias.detach().expand(len(x), -1).requires_grad_() for layer in field.layers]  # per-sample biases
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
    got = torch.autograd.grad(fim_loss(field, x, y, lam=1.5), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert float(fim_loss(field, x, y, lam=0.0)) == pytest.approx(float(PER_SAMPLE["mse"](field(x), y).mean()), rel=1e-12)


def test_masked_samples_change_nothing(tiny):
    field, x, y = tiny
    real = fim_loss(field, x[:30], y[:30], lam=1.0)
    padded_y = torch.cat([y[:30], torch.full((10, 3), 50.0, dtype=y.dtype)])  # garbage in the padding
    mask = torch.cat([torch.ones(30), torch.zeros(10)]).double()
    padded = fim_loss(field, x, padded_y, lam=1.0, mask=mask)
    assert float(padded) == pytest.approx(float(real), rel=1e-12)


def test_fim_loss_works_inside_vmap_and_grad(tiny):
    field, x, y = tiny
    params = {k: v.detach() for k, v in field.named_parameters()}
    f = lambda p, yy: fim_loss(field, x, yy, lam=1.0, params=p)  # noqa: E731
    ys = torch.stack([y, y.flip(0)])
    batched = vmap(grad(f), in_dims=(None, 0))(params, ys)
    for i in range(2):
        single = grad(f)(params, ys[i])
        torch.testing.assert_close(batched["layers.0.weight"][i], single["layers.0.weight"], rtol=1e-9, atol=1e-12)


def test_unknown_fisher_is_named():
    with pytest.raises(MclnfError, match="--fisher kfac: unknown"):
        fim_weights([torch.zeros(2, 2)], [torch.zeros(2, 2)], 1.0, fisher="kfac")


# ---- the one-backward gradient against the formulation it replaced --------------------------------
def fixed_weights(field, x, y, lam, loss="mse", fisher="kfac-diag", mask=None, params=None, observe=None):
    """w of :func:`fim_weights` at the current parameters, detached (the loss holds them constant), masked."""
    p = {k: v.detach() for k, v in (params or dict(field.named_parameters())).items()}
    inputs = []

    def evaluate(points, taps):
        out, layer_inputs = functional_call(field, p, (points,), {"taps": taps})
        inputs.extend(layer_inputs)
        return out

    group = 1 if observe is None else observe.group
    taps = [p[f"layers.{i}.bias"].expand(len(x) * group, -1) for i in range(len(field.layers))]

    def losses(taps):  # a vjp, as the previous formulation took it: works inside torch.func transforms
        pred = evaluate(x, taps) if observe is None else observe(lambda q: evaluate(q, taps), x)
        return PER_SAMPLE[loss](pred, y)

    ell, backprop = torch.func.vjp(losses, taps)
    deltas = backprop(torch.ones_like(ell))[0]
    w = fim_weights(inputs, deltas, lam, fisher, mask=mask, group=group).detach()
    return w if mask is None else w * mask


def weighted_loss(field, x, y, w, loss="mse", params=None, observe=None):
    """Σ_n w_n ℓ_n / Σ_n w_n with ``w`` given: its autograd gradient is the previous formulation's second backward."""
    f = field if params is None else (lambda q: functional_call(field, params, (q,)))
    pred = f(x) if observe is None else observe(f, x)
    return (w * PER_SAMPLE[loss](pred, y)).sum() / w.sum()


def reference_fim_loss(field, x, y, lam, loss="mse", fisher="kfac-diag", mask=None, params=None, observe=None):
    """The formulation the FIM loss had before: weights from one backward, the loss's gradient from autograd
    (a second backward through the whole network)."""
    w = fixed_weights(field, x, y, lam, loss, fisher, mask, params, observe)
    return weighted_loss(field, x, y, w, loss, params, observe)


def flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


@pytest.mark.parametrize("fisher", ["kfac-diag", "diagonal"])
@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("masked", [False, True])
def test_one_backward_gradient_is_the_weighted_sum_of_per_sample_gradients(tiny, fisher, loss, masked):
    """∇ FIM = Σ_n c_n ∇ℓ_n, c = w / Σw: brute-force per-sample gradients (vmap of grad), float64."""
    field, x, y = tiny
    y = (y > 0.5).double() if loss == "bce" else y
    mask = torch.cat([torch.ones(30), torch.zeros(10)]).double() if masked else None
    w = fixed_weights(field, x, y, 0.8, loss, fisher, mask)
    c = w / w.sum()
    params = {k: v.detach() for k, v in field.named_parameters()}
    one = lambda p, xi, yi: PER_SAMPLE[loss](functional_call(field, p, (xi[None],)), yi[None])[0]  # noqa: E731
    per = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    want = [torch.einsum("n,n...->...", c, per[k]) for k, _ in field.named_parameters()]
    loss_value = fim_loss(field, x, y, 0.8, loss, fisher, mask=mask)
    got = torch.autograd.grad(loss_value, list(field.parameters()))
    torch.testing.assert_close(flat(got), flat(want), rtol=1e-10, atol=1e-14)
    old = reference_fim_loss(field, x, y, 0.8, loss, fisher, mask)
    torch.testing.assert_close(flat(got), flat(torch.autograd.grad(old, list(field.parameters()))), rtol=1e-10, atol=1e-14)
    assert float(loss_value) == pytest.approx(float(old), rel=1e-12)


@pytest.mark.parametrize("activation", ["sine", "gaussian", "wavelet", "relu", "relu-pe"])
def test_gradient_matches_finite_differences_of_the_loss_with_weights_held_fixed(activation):
    """Every activation (folded constants, positional encoding): the gradient along a random direction
    equals the central difference of Σ w ℓ / Σ w at fixed w (float64, ε = 1e-6)."""
    torch.manual_seed(1)
    field = Field(FieldConfig(2, 3, width=9, depth=4, activation=activation, omega0=3.0 if activation != "gaussian" else None)).double()
    x, y = torch.rand(25, 2, dtype=torch.float64) * 2 - 1, torch.rand(25, 3, dtype=torch.float64)
    params = dict(field.named_parameters())
    w = fixed_weights(field, x, y, 1.3)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    eps = 1e-6
    at = lambda s: float(weighted_loss(field, x, y, w, params={k: p.detach() + s * v[k] for k, p in params.items()}))  # noqa: E731
    fd = (at(eps) - at(-eps)) / (2 * eps)
    g = torch.autograd.grad(fim_loss(field, x, y, 1.3), list(params.values()))
    assert float(sum((gi * v[k]).sum() for gi, k in zip(g, params))) == pytest.approx(fd, rel=1e-7, abs=1e-10)


def test_hessian_vector_products_are_those_of_the_loss_with_weights_held_fixed(tiny):
    """Plain autograd with create_graph (an HVP optimizer's step): the errors, taken without a graph for
    speed, are recomputed with it; H v equals the previous formulation's and central differences of its
    gradient at fixed w."""
    field, x, y = tiny
    params = list(field.parameters())
    torch.manual_seed(2)
    v = [torch.randn_like(p) for p in params]
    g = torch.autograd.grad(fim_loss(field, x, y, 1.1), params, create_graph=True)
    hv = flat(torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params))
    w = fixed_weights(field, x, y, 1.1)
    g_old = torch.autograd.grad(weighted_loss(field, x, y, w), params, create_graph=True)
    hv_old = flat(torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g_old, v)), params))
    torch.testing.assert_close(hv, hv_old, rtol=1e-9, atol=1e-12)
    eps = 1e-6

    def at(s):  # the previous formulation's gradient at θ + s v, weights fixed at θ's
        q = {k: (p + s * vi).detach() for (k, p), vi in zip(field.named_parameters(), v)}
        return flat(grad(lambda r: weighted_loss(field, x, y, w, params=r))(q).values())

    torch.testing.assert_close(hv, (at(eps) - at(-eps)) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_second_derivatives_under_torch_func_match_the_previous_formulation(tiny):
    """grad of ⟨grad(FIM), v⟩ inside vmap (how MAML differentiates through inner steps) equals the same of the
    previous formulation, per target of the batch."""
    field, x, y = tiny
    params = {k: v.detach() for k, v in field.named_parameters()}
    torch.manual_seed(3)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    ys = torch.stack([y, y.flip(0)])

    def hvp(loss):
        return lambda p, yy: grad(lambda q: sum((gi * v[k]).sum() for k, gi in grad(lambda r: loss(r, yy))(q).items()))(p)

    new = vmap(hvp(lambda p, yy: fim_loss(field, x, yy, 0.9, params=p)), in_dims=(None, 0))(params, ys)
    for i in range(2):
        w = fixed_weights(field, x, ys[i], 0.9)
        old = hvp(lambda p, yy: weighted_loss(field, x, yy, w, params=p))(params, ys[i])
        torch.testing.assert_close(flat([new[k][i] for k in params]), flat(old.values()), rtol=1e-9, atol=1e-12)


def test_maml_second_order_meta_gradient_matches_the_previous_formulation():
    """mcl-nf-fim's outer gradient through its inner FIM steps (vmapped torch.func, second order) against the
    same meta-objective with the previous formulation of the loss (float64, real 6 × 6 faces)."""
    ds = load_dataset("lfw_subset", {"resize": 6})
    values = ds.values("train")[:2].double()

    class Previous(MCLNFFIM):
        def loss(self, params, x, y, m):
            w = fixed_weights(self.template, x, y, self.opts.fim_lambda, self.loss_name, self.opts.fisher, mask=m, params=params)
            return weighted_loss(self.template, x, y, w, self.loss_name, params)

    grads = []
    for cls in (MCLNFFIM, Previous):
        m = cls(ds.layout, FieldConfig(2, 1, width=8, depth=3, omega0=3.0), MetaOptions(method="mcl-nf-fim", inner_steps=2, inner_lr=0.05, tasks=2))
        m.template.double()
        theta = {k: v.double().requires_grad_() for k, v in m.init_params(0).items()}
        obj = m.objective(theta, values, 4)[0]
        grads.append(flat(torch.autograd.grad(obj, list(theta.values()))))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_gradient_reaches_a_hash_grid_table_and_the_coordinates(tiny):
    """Parameters before the first layer (a hash grid's table) and coordinates that need a gradient get
    theirs through the first layer's input, (c ⊙ δ_1) W_1, from which autograd continues."""
    torch.manual_seed(4)
    field = Field(FieldConfig(2, 2, width=8, depth=3, activation="relu", encoding="hashgrid", hash_levels=2, hash_table_size=6,
                              hash_features=2, hash_base_resolution=2)).double()  # fmt: skip
    x = (torch.rand(30, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    y = torch.rand(30, 2, dtype=torch.float64)
    wrt = [*field.parameters(), x]
    got = torch.autograd.grad(fim_loss(field, x, y, 1.0), wrt)
    want = torch.autograd.grad(reference_fim_loss(field, x, y, 1.0), wrt)
    assert float(got[0].abs().sum()) > 0  # the table
    torch.testing.assert_close(flat(got), flat(want), rtol=1e-10, atol=1e-14)


def test_layers_with_hooks_give_the_same_gradient_and_the_hooks_see_the_weighted_backward(tiny):
    """A layer with module hooks (K-FAC records inputs and output gradients that way) is called as a module,
    and the loss is then Σ c_n ℓ_n itself: same value and gradient, and a full backward hook on the first
    layer sees the weighted loss's output gradient c ⊙ δ_1 last (what K-FAC's factor G is made of)."""
    field, x, y = tiny
    params = list(field.parameters())
    want = torch.autograd.grad(fim_loss(field, x, y, 1.0), params)
    seen, outgrads = [], []
    handles = [field.layers[1].register_forward_hook(lambda mod, inp, out: seen.append(out.shape)),
               field.layers[0].register_full_backward_hook(lambda mod, gin, gout: outgrads.append(gout[0]))]  # fmt: skip
    value = fim_loss(field, x, y, 1.0)
    got = torch.autograd.grad(value, params)
    for h in handles:
        h.remove()
    assert seen and outgrads  # the hooks saw the calls
    torch.testing.assert_close(flat(got), flat(want), rtol=1e-12, atol=1e-15)
    w = fixed_weights(field, x, y, 1.0)
    torch.testing.assert_close(outgrads[-1], (w / w.sum())[:, None] * errors_and_inputs(field, x, y)[1][0], rtol=1e-12, atol=1e-15)


def test_samples_of_several_field_evaluations(tiny):
    """``observe`` making each prediction from a group of field evaluations (a ray's points): the gradient
    equals the previous formulation's (per-sample weights from the summed per-point gradients)."""
    field, x, y = tiny
    S = 4
    offsets = torch.linspace(-0.1, 0.1, S, dtype=torch.float64)

    def observe(f, rays):  # S points per sample, their outputs averaged with fixed weights
        out = f((rays[:, None, :] + offsets[:, None]).reshape(-1, 2)).reshape(len(rays), S, -1)
        return (out * torch.linspace(0.5, 1.5, S, dtype=torch.float64)[:, None]).mean(1)

    observe.group = S
    params = list(field.parameters())
    for fisher in ("kfac-diag", "diagonal"):
        got = torch.autograd.grad(fim_loss(field, x, y, 1.0, fisher=fisher, observe=observe), params)
        want = torch.autograd.grad(reference_fim_loss(field, x, y, 1.0, fisher=fisher, observe=observe), params)
        torch.testing.assert_close(flat(got), flat(want), rtol=1e-10, atol=1e-14)


def test_no_gradient_is_needed_for_the_value(tiny):
    field, x, y = tiny
    with torch.no_grad():
        value = fim_loss(field, x, y, 1.0)
    assert not value.requires_grad and float(value) == pytest.approx(float(reference_fim_loss(field, x, y, 1.0)), rel=1e-12)


# ---- the paper's form: (1/m) Σ w ℓ, the task's Fisher accumulated over its steps --------------------
@pytest.mark.parametrize("fisher", ["kfac-diag", "diagonal"])
def test_an_accumulated_fisher_is_the_fisher_of_every_sample_so_far(tiny, fisher):
    """Sums of batch A as the prior of batch B: B's weights are those of A ∪ B's Fisher (same parameters)."""
    field, x, y = tiny
    (ia, da), (ib, db), (ic, dc) = (errors_and_inputs(field, xx, yy) for xx, yy in ((x[:15], y[:15]), (x[15:], y[15:]), (x, y)))
    _, sums = fim_weights(ia, da, 0.9, fisher, with_sums=True)
    w, both = fim_weights(ib, db, 0.9, fisher, prior=sums, with_sums=True)
    torch.testing.assert_close(w, fim_weights(ic, dc, 0.9, fisher)[15:], rtol=1e-10, atol=1e-12)
    assert float(both[-1]) == 40


def test_paper_form_over_two_steps_matches_brute_force(tiny):
    """Two steps of a task (the parameters move between them): step 2's weights use the diagonal Fisher of both
    batches' per-sample gradients (each at its own step's parameters), its loss is (1/m) Σ w ℓ and its gradient
    (1/m) Σ w ∇ℓ — brute-force per-sample gradients, float64."""
    field, x, y = tiny
    lam, damping, P = 0.8, 1e-3, sum(p.numel() for p in field.parameters())
    (x1, y1), (x2, y2) = (x[:25], y[:25]), (x[25:], y[25:])
    loss1, sums = fim_loss(field, x1, y1, lam, fisher="diagonal", form="paper", with_sums=True)
    G1 = per_sample_grads(field, x1, y1)
    w1 = 1 + lam * sum((g.square() / (g.square().mean(0) + damping * g.square().mean())).sum((1, 2)) for g in G1) / P
    assert float(loss1) == pytest.approx(float((w1 * PER_SAMPLE["mse"](field(x1), y1)).mean()), rel=1e-10)  # step 1: its batch's own Fisher
    with torch.no_grad():
        for p in field.parameters():
            p.sub_(0.05 * torch.randn_like(p))  # the parameters move between the steps
    loss2, _ = fim_loss(field, x2, y2, lam, fisher="diagonal", form="paper", prior=sums, with_sums=True)
    G2 = per_sample_grads(field, x2, y2)
    q = torch.zeros(len(x2), dtype=torch.float64)
    for g1, g2 in zip(G1, G2):
        F = torch.cat([g1, g2]).square().mean(0)
        q += (g2.square() / (F + damping * F.mean())).sum((1, 2))
    w = 1 + lam * q / P
    ell = PER_SAMPLE["mse"](field(x2), y2)
    assert float(loss2) == pytest.approx(float((w * ell).mean()), rel=1e-10)
    params = list(field.parameters())
    want = torch.autograd.grad((w * ell).mean(), params)
    for a, b in zip(torch.autograd.grad(loss2, params), want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_paper_form_is_unnormalized_and_the_normalized_form_is_a_weighted_mean(tiny):
    field, x, y = tiny
    ell = PER_SAMPLE["mse"](field(x), y)
    w = fim_weights(*errors_and_inputs(field, x, y), lam=2.0)
    assert float(fim_loss(field, x, y, 2.0, form="paper")) == pytest.approx(float((w * ell).mean()), rel=1e-10)
    assert float(fim_loss(field, x, y, 2.0)) == pytest.approx(float((w * ell).sum() / w.sum()), rel=1e-10)
    with pytest.raises(MclnfError, match="--fim-form eq2: unknown"):
        fim_loss(field, x, y, 2.0, form="eq2")


def test_meta_inner_loop_carries_the_tasks_fisher_in_the_paper_form():
    """mcl-nf-fim --fim-form paper: k inner SGD steps of one task, each weighted with the Fisher of every step so far,
    equal a hand-written loop over :func:`fim_loss` threading its sums (float64); the normalized form differs."""
    ds = load_dataset("lfw_subset", {"resize": 6})
    y = ds.values("train")[0].double()
    adapted = {}
    for form in ("paper", "normalized"):
        m = MCLNFFIM(ds.layout, FieldConfig(2, 1, width=8, depth=3, omega0=3.0), MetaOptions(method="mcl-nf-fim", inner_steps=3, inner_lr=0.05, fim_form=form))
        m.template.double()
        theta = {k: v.double() for k, v in m.init_params(0).items()}
        xx = m.coords.double()
        mask = torch.ones(len(y), dtype=torch.float64)
        adapted[form] = m.adapt(theta, dict(theta), [(xx, y, mask)], None)[0]
    p, sums = dict(theta), None
    for _ in range(3):
        (g, sums) = grad(lambda q: fim_loss(m.template, xx, y, 1.0, mask=mask, params=q, form="paper", prior=sums, with_sums=True), has_aux=True)(p)
        p = {k: v - 0.05 * g[k] for k, v in p.items()}
    assert float(sums[-1]) == 3 * len(y)  # three steps' samples
    torch.testing.assert_close(flat(adapted["paper"].values()), flat(p.values()), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(flat(adapted["paper"].values()), flat(adapted["normalized"].values()))


@pytest.mark.parametrize("use_vmap", [True, False])
def test_meta_outer_loss_weighs_with_the_fisher_the_inner_steps_carried(use_vmap):
    """mcl-nf-fim --fim-form paper: the meta-objective is, task by task, the FIM loss at the adapted parameters weighted with
    the Fisher of the task's k inner steps plus its own batch (Alg. 1 l. 23 "as in steps 10–12"), summed over the tasks
    and divided by their count — a hand-written loop over :func:`fim_loss` in float64, vmapped or not."""
    ds = load_dataset("lfw_subset", {"resize": 6})
    y = ds.values("train")[:1].double()
    k, lr = 2, 0.05
    m = MCLNFFIM(ds.layout, FieldConfig(2, 1, width=8, depth=3, omega0=3.0),
                 MetaOptions(method="mcl-nf-fim", inner_steps=k, inner_lr=lr, fim_form="paper", fim_lambda=0.7, vmap=use_vmap))  # fmt: skip
    m.template.double()
    m.coords = m.coords.double()
    theta = {k_: v.double() for k_, v in m.init_params(0).items()}
    obj, _, _ = m.objective(theta, y, count=m.opts.tasks)
    want, own = 0.0, 0.0
    for idx, mask in zip(m.idx, m.mask.double()):  # each task's samples, padded (6 rows in 4 strips)
        x, yy = m.coords[idx], y[0, idx]
        p, sums = dict(theta), None
        for _ in range(k):
            g, sums = grad(lambda q: fim_loss(m.template, x, yy, 0.7, mask=mask, params=q, form="paper", prior=sums, with_sums=True), has_aux=True)(p)
            p = {n: v - lr * g[n] for n, v in p.items()}
        want += float(fim_loss(m.template, x, yy, 0.7, mask=mask, params=p, form="paper", prior=sums))
        own += float(fim_loss(m.template, x, yy, 0.7, mask=mask, params=p, form="paper"))  # its batch's own Fisher only
    assert float(obj) == pytest.approx(want / m.opts.tasks, rel=1e-10)
    assert abs(own - want) > 1e-6 * abs(want)  # the carried Fisher changes the loss


def test_weight_stats_are_those_of_the_weights_and_meta_train_logs_them(tiny, tmp_path):
    import json

    import numpy as np
    from conftest import cli

    from mclnf.losses import fim_weight_stats

    field, x, y = tiny
    w = fim_weights(*errors_and_inputs(field, x, y), lam=1.3)
    ell = PER_SAMPLE["mse"](field(x), y).detach()
    stats = fim_weight_stats(field, x, y, 1.3)
    assert stats["fim_w_mean"] == pytest.approx(float(w.mean()), rel=1e-12) and stats["fim_w_max"] == pytest.approx(float(w.max()), rel=1e-12)
    assert stats["fim_w_corr_loss"] == pytest.approx(float(np.corrcoef(w.numpy(), ell.numpy())[0, 1]), rel=1e-9)
    out = tmp_path / "run"
    assert cli("meta-train", "lfw_subset", "--method", "mcl-nf-fim", "--width", 16, "--depth", 3, "--outer-steps", 2, "--resize", 12, "--log-every", 1,
               "--quiet", "--out", out) == 0  # fmt: skip
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(1 <= e["fim_w_mean"] <= e["fim_w_max"] and -1 <= e["fim_w_corr_loss"] <= 1 for e in lines if e["event"] == "train")
