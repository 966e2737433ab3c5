"""ModularField: K stacked modules evaluated in one batched computation equal K standalone Fields."""

import pytest
import torch
from torch.func import functional_call, grad

from mclnf.errors import MclnfError
from mclnf.fields import ACTIVATIONS, Field, FieldConfig
from mclnf.fields.modular import ModularField

D = torch.float64


def config(activation="sine", **kw) -> FieldConfig:
    return FieldConfig(2, 3, width=24, depth=4, activation=activation, **kw)


def fields(activation="sine", k=3) -> list[Field]:
    torch.manual_seed(0)
    return [Field(config(activation)).to(D) for _ in range(k)]


def coords(n=90, seed=1) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D) * 2 - 1


def mixed_index(n, k, seed=2) -> torch.Tensor:
    idx = torch.arange(n) % k
    return idx[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_stacked_forward_equals_standalone_fields(activation):
    fs = fields(activation)
    mf = ModularField.from_fields(fs)
    x = coords()
    all_out = mf.forward_all(x)
    for k, f in enumerate(fs):
        ref = f(x)
        torch.testing.assert_close(all_out[k], ref, atol=1e-12, rtol=0)
        # each module alone through the router, on its own coordinates
        torch.testing.assert_close(mf(x, torch.full((len(x),), k)), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("activation", ["sine", "relu-pe"])
@pytest.mark.parametrize("sizes", [(30, 30, 30), (50, 7, 33), (40, 0, 11)])  # equal, unequal, a module without points
def test_routing_mixed_index_equals_scattered_per_module(activation, sizes):
    fs = fields(activation)
    mf = ModularField.from_fields(fs)
    idx = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(3))]
    x = coords(len(idx))
    expected = torch.empty(len(x), 3, dtype=D)
    for k, f in enumerate(fs):
        expected[idx == k] = f(x[idx == k])
    torch.testing.assert_close(mf(x, idx), expected, atol=1e-12, rtol=0)


def test_default_init_equals_successive_fields_under_callers_rng():
    torch.manual_seed(5)
    fs = [Field(config()) for _ in range(3)]
    torch.manual_seed(5)
    mf = ModularField(config(), 3)
    after = torch.rand(1)
    torch.manual_seed(5)
    [Field(config()) for _ in range(3)]
    assert torch.equal(after, torch.rand(1))  # consumed exactly what 3 fields consume
    for k, f in enumerate(fs):
        for (n, p), q in zip(mf.module(k).named_parameters(), f.parameters()):
            assert torch.equal(p, q), n
    shared = ModularField(config(), 2, init=fs[1])  # every module from one shared initialization
    for k in range(2):
        assert all(torch.equal(p, q) for p, q in zip(shared.module(k).parameters(), fs[1].parameters()))


def test_blend_one_hot_equals_routing_and_half_half_is_mean():
    fs = fields("gaussian")
    mf = ModularField.from_fields(fs)
    x, idx = coords(), mixed_index(90, 3)
    one_hot = torch.nn.functional.one_hot(idx, 3).to(D)
    torch.testing.assert_close(mf.forward_blend(x, one_hot), mf(x, idx), atol=1e-12, rtol=0)
    half = torch.zeros(90, 3, dtype=D)
    half[:, 0] = half[:, 2] = 0.5
    torch.testing.assert_close(mf.forward_blend(x, half), 0.5 * (fs[0](x) + fs[2](x)), atol=1e-12, rtol=0)
    # mixed rows: some one-hot, some blended
    w = one_hot.clone()
    w[:10] = torch.tensor([0.25, 0.75, 0.0], dtype=D)
    exp = mf(x, idx)
    exp[:10] = 0.25 * fs[0](x[:10]) + 0.75 * fs[1](x[:10])
    torch.testing.assert_close(mf.forward_blend(x, w), exp, atol=1e-12, rtol=0)


@pytest.mark.parametrize("sizes", [(0, 25, 0, 25), (0, 40, 0, 9)])
def test_gradients_only_into_modules_that_evaluated(sizes):
    torch.manual_seed(0)
    fs = [Field(config()).to(D) for _ in range(4)]
    mf = ModularField.from_fields(fs)
    idx = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    x = coords(len(idx))
    y = torch.rand(len(x), 3, dtype=D)
    (mf(x, idx) - y).square().mean().backward()
    for layer in mf.layers:
        for p in (layer.weight, layer.bias):
            assert torch.all(p.grad[[0, 2]] == 0)
            assert torch.all(p.grad[[1, 3]].flatten(1).abs().amax(1) > 0)
    # and they equal the standalone fields' gradients
    loss = sum((fs[k](x[idx == k]) - y[idx == k]).square().sum() for k in (1, 3)) / y.numel()
    loss.backward()
    for i, layer in enumerate(mf.layers):
        for k in (1, 3):
            torch.testing.assert_close(layer.weight.grad[k], fs[k].layers[i].weight.grad, atol=1e-12, rtol=0)
            torch.testing.assert_close(layer.bias.grad[k], fs[k].layers[i].bias.grad, atol=1e-12, rtol=0)


def test_fresh_adam_leaves_unrouted_modules_bit_exact():
    mf = ModularField.from_fields(fields())
    before = [p.detach().clone() for p in mf.parameters()]
    opt = torch.optim.Adam(mf.parameters(), lr=1e-3)
    x = coords(40)
    for _ in range(3):
        opt.zero_grad()
        mf(x, torch.full((40,), 2)).square().mean().backward()
        opt.step()
    for p, q in zip(mf.parameters(), before):
        assert torch.equal(p[:2], q[:2])
        assert not torch.equal(p[2], q[2])


def test_add_module_appends_init_and_keeps_old():
    fs = fields(k=2)
    mf = ModularField.from_fields(fs)
    old = [p.detach().clone() for p in mf.parameters()]
    torch.manual_seed(9)
    init = Field(config()).to(D)
    assert mf.add_module(init) == 2 and mf.num_modules == 3
    assert mf.add_module(init.state_dict()) == 3 and mf.num_modules == 4
    for p, q in zip(mf.parameters(), old):
        assert torch.equal(p[:2], q)
    x = coords()
    for k in (2, 3):
        torch.testing.assert_close(mf(x, torch.full((90,), k)), init(x), atol=1e-12, rtol=0)
    torch.manual_seed(4)
    fresh_ref = Field(config())
    torch.manual_seed(4)
    mf.add_module()  # None: a fresh Field(config) under the caller's RNG
    assert all(torch.equal(p, q.to(D)) for p, q in zip(mf.module(4).parameters(), fresh_ref.parameters()))
    with pytest.raises(MclnfError):
        mf.add_module(Field(FieldConfig(2, 3, width=8, depth=4)))
    mf.add_module("extra", torch.nn.Identity())  # nn.Module's add_module still works
    assert isinstance(mf.extra, torch.nn.Identity)


def test_module_export_and_from_fields_round_trip():
    fs = fields("wavelet")
    mf = ModularField.from_fields(fs)
    out = [mf.module(k) for k in range(3)]
    for f, g in zip(fs, out):
        assert g.config == f.config
        for (n, p), q in zip(f.named_parameters(), g.parameters()):
            assert torch.equal(p, q) and p.dtype == q.dtype, n
    mf2 = ModularField.from_fields(out)
    for p, q in zip(mf.parameters(), mf2.parameters()):
        assert torch.equal(p, q)
    assert mf.module(-1).layers[0].weight.data_ptr() != mf.layers[0].weight.data_ptr()
    with pytest.raises(MclnfError):
        mf.module(3)


def test_k_independent_of_tasks_and_bad_index():
    mf = ModularField(config(), 5).to(D)
    x = coords(12)
    assert mf(x, torch.zeros(12, dtype=torch.long)).shape == (12, 3)
    assert mf(x[:0], torch.zeros(0, dtype=torch.long)).shape == (0, 3)
    with pytest.raises(MclnfError):
        mf(x, torch.full((12,), 5))


def test_torch_func_functional_call_and_grad():
    fs = fields()
    mf = ModularField.from_fields(fs)
    params = {n: p.detach() for n, p in mf.named_parameters()}
    assert set(params) == {f"layers.{i}.{n}" for i in range(4) for n in ("weight", "bias")}
    assert params["layers.1.weight"].shape == (3, 24, 24)
    x, idx = coords(), mixed_index(90, 3)
    y = torch.rand(90, 3, dtype=D)

    def loss(p):
        return (functional_call(mf, p, (x, idx)) - y).square().mean()

    g = grad(loss)(params)
    mf.zero_grad()
    loss(dict(mf.named_parameters())).backward()
    for n, p in mf.named_parameters():
        torch.testing.assert_close(g[n], p.grad, atol=1e-14, rtol=0)


def test_parameter_count_formula():
    # The paper: 4 modules × width 128 ≈ one width-256 network (5 layers, 2 → 3):
    #   4 × 50,307 = 201,228 parameters vs 198,915 for one 5 × 256 field (+1.2 %).
    def formula(w, depth=5, i=2, o=3):
        return i * w + w + (depth - 2) * (w * w + w) + w * o + o

    torch.manual_seed(0)
    mf = ModularField(FieldConfig(2, 3, width=128, depth=5), 4)
    single = Field(FieldConfig(2, 3, width=256, depth=5))
    assert mf.num_params == 4 * formula(128) == 4 * Field(FieldConfig(2, 3, width=128)).num_params == 201_228
    assert single.num_params == formula(256) == 198_915
    assert abs(mf.num_params / single.num_params - 1) < 0.02
