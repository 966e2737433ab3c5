"""GPU check: one command, a few minutes on a CUDA machine, one table of what works there and how fast.

    python benchmarks/gpu_check.py                        # --device cuda: the check (a few minutes)
    python benchmarks/gpu_check.py --device cpu --quick   # a dry run of the script itself, on any machine (about 2 minutes on 2 cores)

(a) tests: the test suite's device-parametrized tests (the ``device`` fixture of ``tests/conftest.py``) run with
    ``MCLNF_TEST_DEVICE=<device>``, so only their ``<device>`` cases: every command on the device, resumed there
    exactly, checkpoints moved from the CPU to the device and back.
(b) commands: ``mclnf fit`` (an image at fp32, bf16 and (CUDA) fp16, and a NeRF scene), ``render``, ``continual``, ``meta-train`` (every
    meta-gradient rule and bf16; ``--quick``: second-order only), ``meta-test`` and ``cl-bench`` with ``--device <device>`` on
    tiny inputs (those of tests/commands), each in its own process: ok or FAILED (its last error line below the
    table) and seconds (process start included).
(c) throughput on the device beside the CPU, with the benchmarks' own models and helpers: the fit step of the default
    5 × 256 sine field (``fit_throughput.make_step``, GFLOP/s by ``fit_throughput.flops_per_step``), the NeRF step at
    ``mclnf fit``'s scene defaults (``nerf_fit.step_seconds``), the meta-batch's inner loops vmapped against a Python
    loop (``meta_performance.outer_step``: mcl-nf, second-order, 3 inner steps) and the peak memory of one EMCL
    meta-step at 1, 2 and 16 inner steps beside second-order's (not with ``--quick``): from the second inner step on,
    each task's inner parameters are its own, so 16 / 2 is the growth with the inner loop's length
    (``mclnf.eval.memory.peak_mib``: on CUDA the allocator's peak; on the CPU the resident peak of a fresh process,
    ``meta_performance.py --one-memory``).
    GPU times wait for the device (``torch.cuda.synchronize``).

Without a CUDA device ``--device cuda`` stops at once: one line naming the option, exit status 2. The exit status is 1
when any test or command failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fit_throughput import flops_per_step, make_step  # noqa: E402
from meta_performance import outer_step, seconds  # noqa: E402
from nerf_fit import step_seconds  # noqa: E402

from mclnf.config import FitConfig  # noqa: E402
from mclnf.errors import MclnfError  # noqa: E402
from mclnf.eval.memory import peak_mib  # noqa: E402
from mclnf.fields import FieldConfig  # noqa: E402
from mclnf.learners import MetaOptions, meta_method  # noqa: E402
from mclnf.runtime import check_device  # noqa: E402
from mclnf.signals.datasets import load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MCLNF_DATA", ROOT.parent / "shared" / "data"))
DEVICE_TESTS = ("tests/commands/test_device_cli.py", "tests/commands/test_continual_device.py")
RULES = ("second-order", "first-order", "emcl")


# ---- (a) the device tests --------------------------------------------------------------------------
def device_tests(device: str) -> tuple[str, bool, float, str, str]:
    """pytest on :data:`DEVICE_TESTS` with ``MCLNF_TEST_DEVICE=device``: (row name, ok, seconds, counts, output tail)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DEVICE_TESTS], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "MCLNF_TEST_DEVICE": device})  # fmt: skip
    seconds_taken = time.perf_counter() - t0
    lines = r.stdout.strip().splitlines()
    counts = ", ".join(re.findall(r"\d+ (?:passed|failed|skipped|errors?)", lines[-1])) if lines else ""
    return f"pytest device tests ({device})", r.returncode == 0, seconds_taken, counts, "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])


# ---- (b) the commands ------------------------------------------------------------------------------
def commands(device: str, tmp: Path, quick: bool) -> list[tuple[str, list]]:
    """(row name, ``mclnf`` arguments) of the smoke runs, in order (later ones read earlier ones' runs)."""
    dev = ("--device", device, "--quiet")
    face = DATA / "celeba_align" / "000003.jpg"
    meta = ("meta-train", "lfw_subset", "--method", "mcl-nf", "--width", 16, "--depth", 3, "--inner-steps", 1, "--meta-batch", 2, "--outer-steps", 3, "--resize", 12)
    rules = RULES[:1] if quick else RULES
    continual = ("continual", face, "--crop", 178, 178, "--resize", 24, "--width", 16, "--depth", 3, "--batch-size", 64, "--steps", 5, "--learner", "er" if quick else "all")
    meta_test = ("meta-test", *(tmp / f"meta-{rule}" for rule in rules), "lfw_subset", "--steps", 1, 2, "--signals", 2, "--baselines", "cl", "er")
    cl_bench = ("cl-bench", "mnist-permutations", "--tasks", 2, "--seeds", 1, "--method", *(("emcl", "er") if quick else ("all",)), "--data", DATA / "mnist", "--glances", 1, "--mer-batches", 1)
    runs = [
        ("fit camera", ["fit", "camera", "--resize", 32, "--width", 32, "--depth", 3, "--steps", 50, *dev, "--out", tmp / "fit"]),
        *((f"fit camera --precision {p}", ["fit", "camera", "--resize", 32, "--width", 32, "--depth", 3, "--steps", 50, "--precision", p, *dev, "--out", tmp / f"fit-{p}"])
          for p in ("bf16", "fp16") if p != "fp16" or device.startswith("cuda")),  # fit refuses fp16 on the CPU
        ("fit lego (NeRF)", ["fit", DATA / "nerf" / "lego_100.npz", "--resize", 16, "--samples", 8, "--width", 32, "--depth", 3, "--steps", 5, *dev, "--out", tmp / "nerf"]),
        ("render lego orbit", ["render", tmp / "nerf", "--camera-path", "orbit", "--frames", 4, "--resolution", 16, 16, *dev[:2], "--out", tmp / "orbit.mp4"]),
        ("continual", [*continual, *dev, "--out", tmp / "continual"]),
        *((f"meta-train ({rule})", [*meta, "--meta-grad", rule, *dev, "--out", tmp / f"meta-{rule}"]) for rule in rules),
        ("meta-train --precision bf16", [*meta, "--precision", "bf16", *dev, "--out", tmp / "meta-bf16"]),
        ("meta-test", [*meta_test, *dev, "--out", tmp / "meta-test"]),
        ("cl-bench", [*cl_bench, *dev, "--out", tmp / "cl-bench"]),
    ]
    return [(name, [str(a) for a in args]) for name, args in runs]


def smoke(name: str, args: list[str]) -> tuple[str, bool, float, str, str]:
    """``python -m mclnf ARGS`` in its own process: (row name, ok, seconds, the command, its last error line)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mclnf", *args], capture_output=True, text=True)
    seconds_taken = time.perf_counter() - t0
    err = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    return name, r.returncode == 0, seconds_taken, "mclnf " + " ".join(a.replace(str(DATA), "$DATA") for a in args[:2]) + " …", err


# ---- (c) throughput --------------------------------------------------------------------------------
def synced(fn, device: torch.device):
    """``fn`` followed by waiting for ``device``'s queue (GPU kernels run asynchronously)."""
    if device.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize(device))


def fit_step(device: torch.device, batch: int, repeats: int, precision: str = "fp32") -> tuple[float, float]:
    """(ms, GFLOP/s) of one training step of the default 5 × 256 sine field (Adam, mse) at ``batch`` on ``device``, the
    forward pass under ``precision``'s autocast (:class:`mclnf.runtime.Precision`)."""
    with torch.device(device):
        field, step = make_step("field", batch, precision, device.type)

    def ten():
        for _ in range(10):
            step()

    s = seconds(synced(ten, device), repeats) / 10
    return 1e3 * s, flops_per_step(field, batch) / s / 1e9


def nerf_step(device: torch.device, quick: bool) -> tuple[float, float]:
    """(ms, rays/s) of one NeRF training step at ``mclnf fit``'s lego defaults (1024 rays × 64 samples, 4 × 128 field)."""
    cfg = FitConfig(signal=str(DATA / "nerf" / "lego_100.npz"), device=str(device), progress=False)
    s = step_seconds(cfg, warmup=2 if quick else 20, timed=3 if quick else 20)
    return 1e3 * s, 1024 / s


def meta_vmap(device: torch.device, layout, values: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Episodes/s of one mcl-nf outer step (second-order, 3 inner steps, 5 × 256 sine field) vmapped and as a Python loop."""
    rates = []
    for use in (True, False):
        step = meta_outer_step(device, layout, values, MetaOptions(method="mcl-nf", vmap=use))
        rates.append(len(values) / seconds(synced(step, device), repeats))
    return rates[0], rates[1]


def meta_outer_step(device: torch.device, layout, values: torch.Tensor, opts: MetaOptions):
    """``meta_performance.outer_step`` on ``device``: the method built on the CPU and its template moved, as ``mclnf
    meta-train`` does; θ₀ drawn there."""
    method = meta_method(layout, FieldConfig(2, 1), opts)
    method.template.to(device)
    with torch.device(device):
        return outer_step(method, values.to(device))


def meta_memory(device: torch.device, layout, values: torch.Tensor, rule: str, k: int) -> float | None:
    """Peak MiB of one mcl-nf outer step (meta-batch 4) with ``rule`` and ``k`` inner steps: on CUDA the allocator's peak of
    a step after a warm-up one; on the CPU the resident peak of the first step of a fresh process (meta_performance.py)."""
    if device.type != "cuda":
        r = subprocess.run([sys.executable, str(Path(__file__).with_name("meta_performance.py")), "--one-memory", rule, str(k)], capture_output=True, text=True, check=True)
        return float(r.stdout.split()[-1])
    step = meta_outer_step(device, layout, values, MetaOptions(method="mcl-nf", meta_grad=rule, inner_steps=k))
    step()
    return peak_mib(step, device)


def throughput(devices: list[torch.device], quick: bool) -> list[tuple[str, list, str]]:
    """Rows (measurement, one value per device, unit) of section (c)."""
    repeats = 2 if quick else 5
    ds = load_dataset("lfw_subset", {})  # 25 × 25 faces, as meta_performance.py
    layout, values = ds.layout, ds.values("train")
    rows = []
    for batch in (4096,) if quick else (4096, 65536):
        got = [fit_step(d, batch, repeats) for d in devices]
        rows += [(f"fit step, batch {batch}: ms", [g[0] for g in got], "ms"), (f"fit step, batch {batch}: GFLOP/s", [g[1] for g in got], "GFLOP/s")]
        bf16 = [fit_step(d, batch, repeats, "bf16") for d in devices]
        rows += [(f"fit step, batch {batch}, bf16: ms", [g[0] for g in bf16], "ms"), (f"fit step, batch {batch}: fp32 / bf16 time", [a[0] / b[0] for a, b in zip(got, bf16)], "x")]
    got = [nerf_step(d, quick) for d in devices]
    rows += [("NeRF step (1024 rays x 64): ms", [g[0] for g in got], "ms"), ("NeRF step: rays/s", [g[1] for g in got], "rays/s")]
    batch = 4 if quick else 8
    got = [meta_vmap(d, layout, values[:batch], 1 if quick else 3) for d in devices]
    rows += [(f"meta-batch {batch} vmapped: episodes/s", [g[0] for g in got], "ep/s"), (f"meta-batch {batch} Python loop: episodes/s", [g[1] for g in got], "ep/s"),
             ("vmap / loop", [g[0] / g[1] for g in got], "x")]  # fmt: skip
    for rule in ("emcl",) if quick else ("emcl", "second-order"):
        peaks = {k: [meta_memory(d, layout, values[:4], rule, k) for d in devices] for k in (1, 2, 16)}
        rows += [(f"{rule} meta-step peak, {k} inner step{'s' * (k > 1)}: MiB", peaks[k], "MiB") for k in (1, 2, 16)]
        rows += [(f"{rule} peak 16 / {k} inner steps", [b / a if a and b is not None else None for a, b in zip(peaks[k], peaks[16])], "x") for k in (1, 2)]
    return rows


# ---- the table -------------------------------------------------------------------------------------
def number(v) -> str:
    return "—" if v is None else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def print_table(devices: list[torch.device], rows: list[tuple[str, list, str]]) -> None:
    """Section (c)'s table: a column per device and, beside the CPU's, the ratio of the second device's value to the CPU's."""
    ratio = len(devices) > 1
    print(f"| measurement | {' | '.join(str(d) for d in devices)} |{f' {devices[1]} / cpu |' if ratio else ''}\n|---|{'---|' * (len(devices) + ratio)}")
    for what, vals, _ in rows:
        extra = f" {number(vals[1] / vals[0]) if None not in vals and vals[0] else '—'} |" if ratio else ""
        print(f"| {what} | {' | '.join(number(v) for v in vals)} |{extra}", flush=True)
    print()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device checked (default: cuda; cpu: a dry run of this script)")
    p.add_argument("--quick", action="store_true", help="fewer and shorter runs: second-order meta-train only, one batch size, fewer repeats")
    p.add_argument("--skip", nargs="+", default=[], choices=("tests", "commands", "throughput"), help="sections to leave out")
    args = p.parse_args(argv)
    try:
        device = check_device(args.device)
    except MclnfError as e:
        print(f"gpu_check: {e} for a dry run of this script; nothing was checked", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# mclnf gpu_check: --device {device} ({name}), torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.get_num_threads()} CPU threads"
          f"{', --quick' if args.quick else ''}\n", flush=True)  # fmt: skip
    failures = []

    if "tests" not in args.skip or "commands" not in args.skip:
        print("| check | result | seconds | detail |\n|---|---|---|---|", flush=True)
        rows = []
        if "tests" not in args.skip:
            rows.append(device_tests(str(device)))
            print(f"| {rows[-1][0]} | {'ok' if rows[-1][1] else 'FAILED'} | {rows[-1][2]:.1f} | {rows[-1][3]} |", flush=True)
        if "commands" not in args.skip:
            with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
                for row_name, cmd in commands(str(device), Path(tmp), args.quick):
                    rows.append(smoke(row_name, cmd))
                    print(f"| {rows[-1][0]} | {'ok' if rows[-1][1] else 'FAILED'} | {rows[-1][2]:.1f} | {rows[-1][3]} |", flush=True)
        failures = [r for r in rows if not r[1]]
        for row_name, _, _, _, tail in failures:
            print(f"\n## FAILED: {row_name}\n{tail}")
        print()

    if "throughput" not in args.skip:
        devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
        print_table(devices, throughput(devices, args.quick))
    print(f"gpu_check: {'all ok' if not failures else f'{len(failures)} FAILED: ' + ', '.join(r[0] for r in failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
