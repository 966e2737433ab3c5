"""Field.forward's fast path (constants folded into the weights) equals the straightforward formula
``last(σ(… σ(layer(γ(x)))))`` up to float rounding, and keeps working under torch.func."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from mclnf.fields import ACTIVATIONS, Field, FieldConfig
from mclnf.losses import mse


def reference(field: Field, x: torch.Tensor) -> torch.Tensor:
    h = field.encoding(x)
    *hidden, last = field.layers
    for i, layer in enumerate(hidden):
        h = (field.first_activation if i == 0 else field.activation)(layer(h))
    return last(h)


def make(activation: str, dtype=torch.float64, **kw) -> Field:
    torch.manual_seed(0)
    return Field(FieldConfig(2, 3, width=48, depth=4, activation=activation, **kw)).to(dtype)


def coords(n: int = 200, dtype=torch.float64) -> torch.Tensor:
    return (torch.rand(n, 2, generator=torch.Generator().manual_seed(1), dtype=dtype) * 2 - 1)


def params_and_grads(f, field, x, y):
    field.zero_grad(set_to_none=True)
    out = f(x)
    mse(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in field.named_parameters()}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fast_forward_equals_reference_formula_float64(activation):
    field, x = make(activation), coords()
    y = torch.rand(len(x), 3, dtype=torch.float64)
    out, grads = params_and_grads(field, field, x, y)
    ref, ref_grads = params_and_grads(lambda x: reference(field, x), field, x, y)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fast_forward_float32_is_within_rounding_of_float64_reference(activation):
    """The fast path's float32 error is of the order of the straightforward formula's own float32 error."""
    field, x = make(activation, torch.float32), coords(dtype=torch.float32)
    ref64 = reference(field.double(), x.double())
    field.float()
    err_ref32 = (reference(field, x).double() - ref64).abs().max().item()
    err_fast = (field(x).double() - ref64).abs().max().item()
    assert err_fast <= 4 * err_ref32 + 1e-6 * ref64.abs().max().item()


@pytest.mark.parametrize("shape", [(7, 5, 2), (2,)])
def test_fast_forward_accepts_any_leading_dims(shape):
    field = make("sine")
    x = torch.rand(shape, dtype=torch.float64)
    torch.testing.assert_close(field(x), reference(field, x), rtol=1e-12, atol=1e-12)
    assert field(x).shape == (*shape[:-1], 3)


def test_parameter_names_are_unchanged():
    names = [n for n, _ in make("sine").named_parameters()]
    assert names == [f"layers.{i}.{k}" for i in range(4) for k in ("weight", "bias")]


@pytest.mark.parametrize("activation", ["sine", "wavelet", "gaussian"])
def test_func_grad_and_vmap_over_three_parameter_sets_match_a_loop(activation):
    field, x = make(activation), coords(64)
    y = torch.rand(len(x), 3, dtype=torch.float64)
    stacks = []
    for k in range(3):
        torch.manual_seed(10 + k)
        stacks.append({n: p.detach() + 0.01 * torch.randn_like(p) for n, p in field.named_parameters()})
    stacked = {n: torch.stack([s[n] for s in stacks]) for n in stacks[0]}

    def loss(params, x, y):
        return mse(functional_call(field, params, (x,)), y)

    def ref_loss(params, x, y):
        return mse(_ref_call(field, params, x), y)

    looped = [grad(ref_loss)(s, x, y) for s in stacks]
    batched = vmap(grad(loss), in_dims=(0, None, None))(stacked, x, y)
    outs = vmap(lambda p: functional_call(field, p, (x,)))(stacked)
    for k, s in enumerate(stacks):
        torch.testing.assert_close(outs[k], _ref_call(field, s, x), rtol=1e-12, atol=1e-12)
        for n in s:
            torch.testing.assert_close(batched[n][k], looped[k][n], rtol=1e-10, atol=1e-12, msg=n)


def _ref_call(field, params, x):
    return functional_call(_Reference(field), {f"field.{n}": p for n, p in params.items()}, (x,))


class _Reference(torch.nn.Module):
    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, x):
        return reference(self.field, x)


def test_double_backward_matches_reference():
    """Curvature-aware optimizers backpropagate through the gradient (create_graph=True)."""
    field, x = make("sine"), coords(64)
    y = torch.rand(len(x), 3, dtype=torch.float64)
    params = dict(field.named_parameters())
    v = {n: torch.randn_like(p) for n, p in params.items()}

    def hvp(f):
        g = torch.autograd.grad(mse(f(x), y), list(params.values()), create_graph=True)
        dot = sum((gi * v[n]).sum() for gi, n in zip(g, params))
        return torch.autograd.grad(dot, list(params.values()))

    for a, b in zip(hvp(field), hvp(lambda x: reference(field, x))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
