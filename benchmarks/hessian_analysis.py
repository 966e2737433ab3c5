"""Why curvature helps some fields: Hessian-vector-product sparsity and condition numbers
(Chng, Saratchandran & Lucey, arXiv:2402.08784, Thm 3.1/3.2 with Fig. 3/7, and Fig. 1).

Run::

    python benchmarks/hessian_analysis.py sparsity  [--steps 1 10 100 1000] [--probes 8] [--out DIR]
    python benchmarks/hessian_analysis.py condition [--iters 3000] [--points 256] [--out DIR]

sparsity
    Fits a 5 × 256 field of each activation (gaussian σ 0.05, sine ω₀ 30, wavelet ω₀ 10 s₀ 10, relu,
    relu-pe L 8) to a DIV2K photo at 64 × 64 with ``mclnf.fit`` and Adam (1e-4; sine 5e-5; relu and
    relu-pe 1e-3, the paper's Adam rates), as one chain of resumed runs stopping at each of ``--steps``.
    At each stop it loads the run's ``field.safetensors``, takes the MSE gradient on a fixed batch of 512
    pixels with ``create_graph=True``, and ``--probes`` Hessian-vector products ``Hv`` with Rademacher ``v``
    (:func:`mclnf.optim.curvature.hvp`). Per layer (weight and bias together) it reports the fraction of
    entries of ``Hv`` that are *exactly* 0 in float32, and the fraction with ``|Hv_i| ≤ 1e-8 · max_j |Hv_j|``
    (max over the whole vector), averaged over the probes. Writes ``sparsity.md``, ``sparsity.png``,
    ``sparsity.json``.

condition
    The paper's Fig. 1: a 1-D field with 2 hidden layers of 16 units (``Field``, depth 3) fitted to
    f(x) = sin 2πx + sin 6πx at ``--points`` (1024) equispaced x in [-1, 1] by full-batch gradient descent in
    float64 (lr = ``--lr-scale`` (0.5) / λ_max(H₀)). At log-spaced iterations the full Hessian of the MSE over the
    flattened parameters (``torch.autograd.functional.hessian``) gives κ(H), κ(D_E^{-1/2} H D_E^{-1/2}) with
    D_E = sqrt(diag(H²)) (exact equilibration) and κ(D_J^{-1/2} H D_J^{-1/2}) with D_J = |diag H| (Jacobi).
    κ(A) = max|λ| / min|λ| over *all* eigenvalues (H is indefinite; "min in magnitude"); the table also
    gives κ over the eigenvalues above 1e-12 · max|λ| ("nonzero"). Parameters whose row of H is zero
    (dead units) are dropped from all three before taking eigenvalues. Activations: gaussian (σ 0.05 and
    the wider σ 0.3, since 1-D inputs under nn.Linear's init make σ 0.05 very narrow), sine (ω₀ 30), relu.
    Writes ``condition.md``, ``condition.png``, ``condition.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.func import functional_call  # noqa: E402

from mclnf.checkpoint import load_field  # noqa: E402
from mclnf.commands.fit import fit  # noqa: E402
from mclnf.config import FitConfig  # noqa: E402
from mclnf.fields import Field, FieldConfig  # noqa: E402
from mclnf.optim.curvature import hvp, rademacher_like  # noqa: E402
from mclnf.signals import load_signal  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MCLNF_DATA", REPO.parent / "shared" / "data"))
SPARSITY_RUNS = {  # activation: (field options, Adam lr)
    "gaussian": ({"sigma": 0.05}, 1e-4),
    "sine": ({"omega0": 30.0}, 5e-5),
    "wavelet": ({"omega0": 10.0, "s0": 10.0}, 1e-4),
    "relu": ({}, 1e-3),
    "relu-pe": ({"pe_frequencies": 8}, 1e-3),
}
REL = 1e-8
NONZERO = 1e-12  # condition: eigenvalues below this fraction of the largest count as zero


def layer_sparsity(field: Field, coords: torch.Tensor, values: torch.Tensor, probes: int, gen: torch.Generator) -> list[dict]:
    params = list(field.parameters())
    names = [n for n, _ in field.named_parameters()]
    loss = (field(coords) - values).square().mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    layers = sorted({n.rsplit(".", 1)[0] for n in names}, key=lambda s: int(s.split(".")[1]))
    acc = {lay: {"exact": 0.0, "relative": 0.0, "n": 0} for lay in layers}
    for _ in range(probes):
        vs = [rademacher_like(p, gen) for p in params]
        hv = [h.detach() for h in hvp(grads, params, vs)]
        top = max(float(h.abs().max()) for h in hv)
        per = {lay: [0, 0, 0] for lay in layers}
        for n, h in zip(names, hv):
            c = per[n.rsplit(".", 1)[0]]
            c[0] += int((h == 0).sum())
            c[1] += int((h.abs() <= REL * top).sum())
            c[2] += h.numel()
        for lay, (z, r, n) in per.items():
            acc[lay]["exact"] += z / n / probes
            acc[lay]["relative"] += r / n / probes
            acc[lay]["n"] = n
    return [{"layer": lay, "params": a["n"], "zero_exact": a["exact"], "zero_relative": a["relative"]} for lay, a in acc.items()]


def sparsity(args) -> None:
    out = Path(args.out or "/tmp/study/sparsity")
    out.mkdir(parents=True, exist_ok=True)
    image = Path(args.image) if args.image else Path(args.data) / "div2k" / "00.png"
    signal = load_signal(image, resize=64)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(signal.coords), generator=gen)[:512]
    coords, values = signal.coords[idx], signal.values[idx]
    results = []
    for act in args.activations or list(SPARSITY_RUNS):
        opts, lr = SPARSITY_RUNS[act]
        run = out / "runs" / act
        for i, steps in enumerate(args.steps):
            t = time.perf_counter()
            # fp32: the measured runs predate fit's bf16 default for sine + adam
            record = fit(FitConfig(
                signal=str(image), out=run, activation=act, optimizer="adam", lr=lr, steps=steps, batch_size=512,
                seed=0, resize=64, resume=i > 0, overwrite=i == 0, progress=False, precision="fp32", **opts,
            ))  # fmt: skip
            field, _ = load_field(run)
            rows = layer_sparsity(field, coords, values, args.probes, torch.Generator().manual_seed(steps))
            for r in rows:
                results.append({"activation": act, "step": steps, "psnr": record["final"]["psnr"], **r})
            print(f"{act} step {steps}: PSNR {record['final']['psnr']:.2f} dB; zero fraction of Hv per layer (exact): "
                  + " ".join(f"{r['zero_exact']:.3f}" for r in rows) + f"  ({time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
    (out / "sparsity.json").write_text(json.dumps(results, indent=1))
    acts = list(dict.fromkeys(r["activation"] for r in results))
    layers = list(dict.fromkeys(r["layer"] for r in results))
    lines = [
        f"Hessian-vector-product sparsity: fraction of entries of Hv that are exactly 0 (float32) / "
        f"≤ {REL:g}·max|Hv| — per layer (weight+bias), mean over {args.probes} Rademacher probes, batch 512 of "
        f"{image.name} at 64², 5×256 field trained with Adam through mclnf fit.",
        "",
        "| activation | step | PSNR (dB) | " + " | ".join(layers) + " | all |",
        "|" + "---|" * (len(layers) + 4),
    ]
    for act in acts:
        for steps in args.steps:
            rs = [r for r in results if r["activation"] == act and r["step"] == steps]
            tot = sum(r["params"] for r in rs)
            ex = sum(r["zero_exact"] * r["params"] for r in rs) / tot
            rel = sum(r["zero_relative"] * r["params"] for r in rs) / tot
            cells = " | ".join(f"{r['zero_exact']:.3f} / {r['zero_relative']:.3f}" for r in rs)
            lines.append(f"| {act} | {steps} | {rs[0]['psnr']:.2f} | {cells} | {ex:.3f} / {rel:.3f} |")
    text = "\n".join(lines) + "\n"
    (out / "sparsity.md").write_text(text)
    print("\n" + text)
    fig, axes = plt.subplots(1, len(args.steps), figsize=(4.2 * len(args.steps), 3.6), constrained_layout=True, squeeze=False)
    for ax, steps in zip(axes[0], args.steps):
        for act in acts:
            rs = [r for r in results if r["activation"] == act and r["step"] == steps]
            ax.plot(range(len(rs)), [r["zero_exact"] for r in rs], "o-", label=act)
        ax.set_xticks(range(len(layers)), [lay.replace("layers.", "L") for lay in layers])
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"step {steps}")
        ax.set_xlabel("layer")
        ax.set_ylabel("fraction of Hv entries exactly 0")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.savefig(out / "sparsity.png", dpi=110)
    print(f"wrote {out / 'sparsity.md'}, {out / 'sparsity.png'}")


# -- condition numbers ----------------------------------------------------------------------------------
def kappas(h: torch.Tensor) -> dict:
    keep = h.abs().sum(1) > 0  # drop the zero rows/columns of dead units
    h = h[keep][:, keep]
    d_e = h.square().sum(1).sqrt()  # sqrt(diag(H²)): the row norms
    d_j = h.diagonal().abs()
    out = {"dropped": int((~keep).sum())}
    for name, d in (("H", None), ("equilibrated", d_e), ("jacobi", d_j)):
        a = h if d is None else h / torch.outer(d.sqrt(), d.sqrt())
        lam = torch.linalg.eigvalsh(a).abs()
        top = float(lam.max())
        nz = lam[lam > NONZERO * top]
        out[name] = top / float(lam.min()) if float(lam.min()) > 0 else math.inf
        out[name + "_nonzero"] = top / float(nz.min())
        out[name + "_rank"] = int(nz.numel())
    return out


def condition(args) -> None:
    out = Path(args.out or "/tmp/study/condition")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    x = torch.linspace(-1, 1, args.points)[:, None]
    y = torch.sin(2 * math.pi * x) + torch.sin(6 * math.pi * x)
    checks = sorted({0, *[int(round(v)) for v in torch.logspace(0, math.log10(args.iters), args.checkpoints).tolist()]})
    configs = [("gaussian σ0.05", "gaussian", {"sigma": 0.05}), ("gaussian σ0.3", "gaussian", {"sigma": 0.3}),
               ("sine ω0 30", "sine", {"omega0": 30.0}), ("relu", "relu", {})]  # fmt: skip
    results = []
    for label, act, opts in configs:
        torch.manual_seed(args.seed)
        field = Field(FieldConfig(1, 1, width=16, depth=3, activation=act, **opts)).double()
        names = [n for n, _ in field.named_parameters()]
        shapes = [p.shape for p in field.parameters()]
        theta = torch.cat([p.detach().reshape(-1) for p in field.parameters()])

        def loss_of(flat):
            ps, i = {}, 0
            for n, s in zip(names, shapes):
                k = math.prod(s)
                ps[n] = flat[i : i + k].reshape(s)
                i += k
            return (functional_call(field, ps, (x,)) - y).square().mean()

        lr = None
        t0 = time.perf_counter()
        for it in range(args.iters + 1):
            if it in checks:
                h = torch.autograd.functional.hessian(loss_of, theta)
                h = (h + h.T) / 2
                k = kappas(h)
                if lr is None:
                    lr = args.lr_scale / float(torch.linalg.eigvalsh(h).abs().max())
                results.append({"config": label, "iter": it, "loss": float(loss_of(theta)), "lr": lr, "params": theta.numel(), **k})
                print(f"{label} iter {it}: loss {results[-1]['loss']:.4g}, κ(H) {k['H']:.3g}, κ(E) {k['equilibrated']:.3g}, κ(J) {k['jacobi']:.3g}", flush=True)
            if it == args.iters:
                break
            theta = theta.detach().requires_grad_(True)
            g, = torch.autograd.grad(loss_of(theta), theta)
            theta = (theta - lr * g).detach()
            if not torch.isfinite(theta).all():
                print(f"{label}: gradient descent diverged at iteration {it} (lr {lr:.3g})")
                break
        print(f"{label}: {time.perf_counter() - t0:.0f} s")
    (out / "condition.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"Condition numbers along full-batch gradient descent (float64), 1-D field 1→16→16→1 ({results[0]['params'] if results else 0} params), "
        f"f(x) = sin 2πx + sin 6πx at {args.points} points in [-1, 1], lr = {args.lr_scale:g}/λ_max(H₀). "
        f"κ = max|λ|/min|λ| over all eigenvalues; in brackets over |λ| > {NONZERO:g}·max|λ| (numerical rank r).",
        "",
        "| field | iter | loss | κ(H) [nonzero, r] | κ(D_E^-½ H D_E^-½) [nonzero, r] | κ(D_J^-½ H D_J^-½) [nonzero, r] | κ(H)/κ(E) | dropped rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cell = lambda n: f"{r[n]:.3g} [{r[n + '_nonzero']:.3g}, {r[n + '_rank']}]"  # noqa: E731
        lines.append(f"| {r['config']} | {r['iter']} | {r['loss']:.3g} | {cell('H')} | {cell('equilibrated')} | {cell('jacobi')} | "
                     f"{r['H'] / r['equilibrated']:.3g} | {r['dropped']} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / "condition.md").write_text(text)
    print("\n" + text)
    labels = list(dict.fromkeys(r["config"] for r in results))
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.6), constrained_layout=True, squeeze=False)
    for ax, label in zip(axes[0], labels):
        rs = [r for r in results if r["config"] == label]
        its = [max(r["iter"], 0.5) for r in rs]
        for key, name in (("H", "H"), ("equilibrated", "D_E^-½ H D_E^-½"), ("jacobi", "D_J^-½ H D_J^-½")):
            ax.plot(its, [r[key] for r in rs], "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("gradient-descent iteration (0 plotted at 0.5)")
        ax.set_ylabel("κ = max|λ| / min|λ|")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(out / "condition.png", dpi=110)
    print(f"wrote {out / 'condition.md'}, {out / 'condition.png'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("analysis", choices=("sparsity", "condition"))
    p.add_argument("--out", default=None)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--image", default=None)
    p.add_argument("--activations", nargs="+", default=None)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 10, 100, 1000], help="sparsity: training steps at which to measure")
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--iters", type=int, default=3000, help="condition: gradient-descent iterations")
    p.add_argument("--checkpoints", type=int, default=8, help="condition: log-spaced iterations with a Hessian")
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--lr-scale", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    (sparsity if args.analysis == "sparsity" else condition)(args)


if __name__ == "__main__":
    main()
