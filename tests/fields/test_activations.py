"""Each activation's initialization has the statistics its paper states."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig, PositionalEncoding


def test_default_field_has_the_papers_parameter_count():
    assert Field(FieldConfig(2, 3)).num_params == 198_915  # MCL-NF's table: 5 × 256, 2 → 3


@pytest.mark.parametrize("activation", ["sine", "gaussian", "wavelet", "relu"])
def test_parameter_count_formula(activation):
    f = Field(FieldConfig(3, 1, width=64, depth=4, activation=activation))
    assert f.num_params == (3 * 64 + 64) + 2 * (64 * 64 + 64) + (64 + 1)


def test_siren_weight_distributions():
    torch.manual_seed(0)
    f = Field(FieldConfig(2, 3, width=1024, depth=4, activation="sine"))
    first, *rest = [layer.weight for layer in f.layers]
    assert first.abs().max() <= 1 / 2 and first.abs().max() > 0.49  # U(-1/n, 1/n), n = 2
    for w in rest:
        bound = math.sqrt(6 / w.shape[1]) / 30
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.02)  # uniform variance


@torch.no_grad()
def test_siren_preactivations_are_standard_normal():
    """SIREN Sec. 3.2: with this init ω₀·Wx of every hidden layer is ≈ N(0, 1) whatever the depth.

    With nn.Linear's bias U(±1/√n) the full pre-activation ω₀(Wx + b) is N(0, s²), s² ≈ 1 + ω₀²/(3n),
    so each sine output is distributed as sin(N(0, s²)) (the paper's "≈ arcsine"), variance (1 − e^{−2s²})/2.
    """
    torch.manual_seed(0)
    n = 2048
    f = Field(FieldConfig(2, 1, width=n, depth=5, activation="sine"))
    h = f.first_activation(f.layers[0](torch.rand(2000, 2) * 2 - 1))
    rng = np.random.default_rng(0)
    for layer in f.layers[1:-1]:
        wx = 30.0 * (h @ layer.weight.T)
        # Var(ω₀Wh) = n·Var(W)·ω₀²·E[h²] = 2·E[h²]: ≈ 1 for arcsine inputs (E[h²] = 1/2)
        assert wx.var().item() == pytest.approx(2 * h.square().mean().item(), rel=0.03)
        assert wx.std().item() == pytest.approx(1.0, abs=0.07)
        assert abs(stats.kurtosis(wx[:, :200].flatten().numpy())) < 0.15  # Gaussian: excess kurtosis 0
        h = f.activation(layer(h))
        s2 = wx.var().item() + 30.0**2 / (3 * n)  # plus the bias term ω₀²·Var(b)
        reference = np.sin(rng.normal(0, math.sqrt(s2), 200_000))
        assert h.var().item() == pytest.approx((1 - math.exp(-2 * s2)) / 2, rel=0.03)
        assert stats.ks_2samp(h.flatten().numpy(), reference).statistic < 0.01


@pytest.mark.parametrize("activation", ["gaussian", "wavelet", "relu", "relu-pe"])
def test_default_linear_initialization(activation):
    """Gaussian (Ramasinghe & Lucey), WIRE and ReLU(+PE) keep nn.Linear's U(±1/√n) for weights and biases."""
    torch.manual_seed(0)
    f = Field(FieldConfig(2, 3, width=512, depth=4, activation=activation))
    for layer in f.layers[1:]:
        bound = 1 / math.sqrt(layer.in_features)
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.99 * bound
        assert layer.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.02)
        assert layer.bias.abs().max() <= bound


def test_activation_formulas():
    z = torch.linspace(-0.3, 0.3, 7, dtype=torch.float64)
    g = Field(FieldConfig(1, 1, activation="gaussian", sigma=0.05)).activation
    torch.testing.assert_close(g(z), torch.exp(-(z**2) / (2 * 0.05**2)))
    w = Field(FieldConfig(1, 1, activation="wavelet")).activation
    torch.testing.assert_close(w(z), torch.cos(10 * z) * torch.exp(-((10 * z) ** 2)))
    s = Field(FieldConfig(1, 1, activation="sine", omega0=20)).activation
    torch.testing.assert_close(s(z), torch.sin(20 * z))


def test_positional_encoding_values():
    pe = PositionalEncoding(2, 3)
    x = torch.tensor([[0.5, -0.25]])
    y = pe(x)
    assert y.shape == (1, pe.out_dim) == (1, 2 * (1 + 2 * 3))
    torch.testing.assert_close(y[0, :2], x[0])
    # channel 0: sin(2^k π 0.5) for k = 0, 1, 2, then the cosines
    torch.testing.assert_close(y[0, 2:5], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[0, 5:8], torch.tensor([0.0, -1.0, 1.0]), atol=1e-6, rtol=0)


def test_config_defaults_and_unused_options():
    c = FieldConfig(2, 3, activation="wavelet", sigma=0.3)
    assert (c.omega0, c.s0, c.sigma) == (10.0, 10.0, None)  # sigma does not apply to wavelets
    c = FieldConfig(1, 1, activation="sine", omega0=20)
    assert c.first_omega0 == 20
    assert FieldConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"activation": "tanh"}, "--activation tanh"),
        ({"depth": 1}, "--depth 1"),
        ({"width": 0}, "--width 0"),
        ({"activation": "gaussian", "sigma": -1.0}, "--sigma -1.0"),
        ({"activation": "relu-pe", "pe_frequencies": 0}, "--pe-frequencies 0"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(MclnfError, match=match):
        FieldConfig(2, 3, **kwargs)
