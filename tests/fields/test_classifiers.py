"""The benchmark networks: GEM's MLP and reduced ResNet-18 have the published sizes, take 32×32 and 84×84
images, and differentiate under torch.func as under autograd."""

import torch
from torch.func import functional_call, grad

from mclnf.fields.classifiers import ReducedResNet18, build_model, mlp
from mclnf.signals.classification import Benchmark


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp():
    model = mlp()
    assert n_params(model) == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10 == 89_610
    assert model(torch.rand(5, 784)).shape == (5, 10)
    assert n_params(mlp(20, hidden=8, layers=3, out_features=4)) == 20 * 8 + 8 + 2 * (8 * 8 + 8) + 8 * 4 + 4


def reduced_resnet18_size(num_classes: int, nf: int, in_channels: int = 3) -> int:
    """Parameters of GEM's reduced ResNet-18 from its description: bias-free convs, a BN (weight, bias) after each."""
    conv_bn = lambda cin, cout, k: k * k * cin * cout + 2 * cout  # noqa: E731
    total, width = conv_bn(in_channels, nf, 3), nf
    for out in (nf, 2 * nf, 4 * nf, 8 * nf):
        total += conv_bn(width, out, 3) + conv_bn(out, out, 3) + (conv_bn(width, out, 1) if width != out else 0)
        total += conv_bn(out, out, 3) * 2
        width = out
    return total + 8 * nf * num_classes + num_classes


def test_reduced_resnet18_size_and_shapes():
    model = ReducedResNet18(100)
    assert n_params(model) == reduced_resnet18_size(100, 20) == 1_109_240  # GEM: "about 1.1M"
    assert n_params(ReducedResNet18(10, nf=8, in_channels=1)) == reduced_resnet18_size(10, 8, 1)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 17 + 3  # 17 weighted 3×3 convs + 3 shortcuts
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
        assert model(torch.rand(2, 3, 84, 84)).shape == (2, 100)


def test_functional_grad_matches_autograd():
    torch.manual_seed(0)
    model = ReducedResNet18(7, nf=4).double()
    with torch.no_grad():  # give eval-mode BN non-trivial statistics
        model.train()(torch.rand(8, 3, 32, 32, dtype=torch.float64))
    model.eval()
    x, y = torch.rand(3, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 4, 6])
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss = lambda p: torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)  # noqa: E731
    g = grad(loss)(params)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(g[name], p.grad, rtol=1e-10, atol=1e-12)
    # train mode (batch statistics): BN updates its running statistics in place, so torch.func takes the buffers as inputs
    model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    g = grad(lambda p, b: torch.nn.functional.cross_entropy(functional_call(model, (p, b), (x,)), y))(params, buffers)
    assert all(v.isfinite().all() for v in g.values()) and buffers["stem.1.num_batches_tracked"] == 2


def test_build_model():
    flat = Benchmark("mnist-permutations", [], (784,), 10, False, None)
    model = build_model(flat)
    assert isinstance(model, torch.nn.Sequential) and n_params(model) == 89_610
    images = Benchmark("split-miniimagenet", [], (3, 84, 84), 100, True, None)
    model = build_model(images).eval()
    assert isinstance(model, ReducedResNet18) and n_params(model) == 1_109_240
