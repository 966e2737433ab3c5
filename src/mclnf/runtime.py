"""Process-wide settings that make training steps faster (the CLI applies them, the library never does), and the
device every command runs on: the one ``--device`` check and the helpers that move work there and results back."""

from __future__ import annotations

import ctypes
import ctypes.util


def keep_freed_memory() -> bool:
    """glibc only: serve large blocks from the heap (no mmap) and never trim it, so a step's big
    temporaries reuse pages already faulted in. By default every block over 32 MiB (batch 65,536:
    each activation is 64 MiB) is a fresh mmap that the kernel zero-fills at first touch, every step
    (measured: 1000 → 608 ms per step at batch 65,536, 43.7 → 39.2 ms at 4096). The cost: the process
    keeps its peak memory. Returns whether the setting took effect."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def flush_denormals() -> bool:
    """Treat subnormal floats as zero. A gaussian or wavelet field's exp(−u²) underflows into subnormals
    as it trains (pre-activations grow), and x86 arithmetic on them is many times slower: measured on a
    trained lego NeRF (gaussian 4 × 128), a 512-ray training step 0.50 → 0.24 s. Values below 1.2e−38
    become 0. Returns whether the CPU supports it."""
    import torch

    return torch.set_flush_denormal(True)


def check_device(name: str):
    """The ``torch.device`` that ``--device NAME`` names, if this machine has it; else one :class:`~mclnf.errors.MclnfError`
    line naming the option (every command's ``--device`` is checked here, before anything is loaded or written)."""
    import torch

    from mclnf.errors import MclnfError

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise MclnfError(f"--device {name}: not a device name (cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise MclnfError(f"--device {name}: not supported; mclnf runs on cpu or cuda[:N]")
    if not torch.cuda.is_available():
        why = f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise MclnfError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        raise MclnfError(f"--device {name}: not available; this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def on_device(predict, device):
    """``predict`` (a function of one tensor, on ``device``) as a function of CPU tensors with CPU results."""
    return lambda x: predict(x.to(device)).cpu()


def tensors_to(obj, device):
    """A dataclass ``obj`` (a signal, a task) with every tensor field on ``device`` (the same object when all are there;
    fields holding one tensor keep holding one)."""
    import dataclasses

    import torch

    moved, changes = {}, {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.init and isinstance(value, torch.Tensor) and value.device != torch.device(device):
            changes[f.name] = moved.setdefault(id(value), value.to(device))
    return dataclasses.replace(obj, **changes) if changes else obj


# ---- torch.distributed (torchrun) ----------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when not distributed."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def init_distributed(device: str, backend: str | None = None) -> str:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1) with ``backend`` (default: nccl for cuda, gloo for
    the CPU); nothing otherwise. Returns this process's device: ``--device cuda`` (no index) under torchrun is
    ``cuda:LOCAL_RANK`` (modulo the GPUs), so that N processes on one machine use N GPUs; any other name is kept."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))  # nccl's collectives run on the current device
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.startswith("cuda") else "gloo"))
    return device


# ---- mixed precision -----------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision_name(name: str) -> None:
    """``name`` is one of :data:`PRECISIONS`, else one :class:`~mclnf.errors.MclnfError` line naming ``--precision``."""
    if name not in PRECISIONS:
        from mclnf.errors import MclnfError

        raise MclnfError(f"--precision {name}: unknown; choose one of {', '.join(PRECISIONS)}")


def check_precision(name: str, device: str = "cpu") -> None:
    """``--precision NAME`` on ``--device``, else one :class:`~mclnf.errors.MclnfError` line naming the option.
    fp16 is refused on the CPU: torch autocasts there, but this build's CPU float16 matmuls are no faster than
    float32 (measured on a Xeon with AMX-BF16 and AVX512-FP16, one thread, the 5 × 256 sine field's step at batch
    4096: fp32 60 ms, fp16 59 ms, bf16 27 ms), so it would cost accuracy for nothing; bf16 is the CPU's fast format."""
    import torch

    from mclnf.errors import MclnfError

    check_precision_name(name)
    if name == "fp16" and torch.device(device).type == "cpu":
        raise MclnfError("--precision fp16: not on --device cpu (CPU float16 matmuls are no faster than float32 here); use bf16 or fp32")


def native_bf16(device="cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware — a CUDA GPU that supports bfloat16, or a CPU with
    AVX512-BF16 or AMX (torch's own probes) — where bf16 steps are faster than float32; elsewhere torch emulates
    them, more slowly than float32."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]  # private in torch 2.13: absent → False
    return any(bool(probe()) for probe in probes if probe is not None)


class Precision:
    """The arithmetic of training steps: ``fp32`` (plain float32, no autocast at all), or mixed precision
    ``bf16`` / ``fp16`` (Micikevicius et al., "Mixed Precision Training", ICLR 2018, as ``torch.amp`` implements it).

    Mixed precision runs a step's forward pass under ``torch.autocast(device, dtype)``: the matrix products
    (``nn.Linear``, ``matmul``) take their inputs cast to the low-precision type and return it (accumulating
    in float32 inside the kernel); element-wise operations then run in the type of their inputs. What stays
    float32, and why:

    * the parameters, so the gradients (autocast's casts hand back float32 gradients) and the optimizer
      state: a step adds ``lr · update`` ≈ 1e-4 of a weight, which bfloat16's 8-bit mantissa (relative
      spacing 2⁻⁸ ≈ 4e-3) would round away;
    * the loss: the targets are float32, so ``pred − target`` promotes to float32 and the squared error
      and its mean (a sum of ~10⁵ terms) are float32 (losses of :mod:`mclnf.losses`; BCE is float32 under autocast);
    * the metrics and the evaluations (PSNR, SSIM, …): they run outside the training step, without autocast;
    * curvature estimates: a step whose optimizer takes Hessian-vector products or records Kronecker factors
      from it (:func:`mclnf.optim.curvature_step`: ESGD's and AdaHessian's refresh steps, K-FAC's) runs in
      float32 — a Hutchinson estimate differentiates the forward twice and K-FAC inverts factors built
      from it, and low-precision rounding in those is what a preconditioner must not see; EWC's Fisher
      is computed after a task, outside the training steps; the FIM loss's Fisher statistics are summed in float32.

    ``fp16`` (5-bit exponent: gradients below 6e-8 flush to zero) scales the loss before the backward pass
    with a :class:`torch.amp.GradScaler` and divides the gradients back before the update (:meth:`unscale`);
    a step whose gradients overflow is skipped and the scale halved. ``bf16`` has float32's exponent range
    and needs no scaling. ``state_dict()`` holds the scaler's state, so a resumed fp16 run continues exactly.
    """

    def __init__(self, name: str = "fp32", device="cpu"):
        import torch

        check_precision_name(name)
        self.name, self.device_type = name, torch.device(device).type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.scaler = torch.amp.GradScaler(self.device_type) if name == "fp16" else None

    @property
    def mixed(self) -> bool:
        """Whether steps run under autocast (bf16, fp16)."""
        return self.dtype is not None

    def autocast(self):
        """The context of a step's forward pass and loss: ``torch.autocast``, or nothing at all for fp32."""
        import contextlib

        import torch

        return torch.autocast(self.device_type, dtype=self.dtype) if self.mixed else contextlib.nullcontext()

    def scale(self, loss):
        """The loss to differentiate: multiplied by the loss scale (fp16), else itself."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, optimizer) -> bool:
        """After the backward pass of :meth:`scale`'s loss: divide the gradients in ``optimizer``'s parameters by the scale
        and adjust the scale (halved after an overflow, doubled after 2000 finite steps); returns False when a gradient
        overflowed (inf or nan), so the update must be skipped. Without a scaler: True, and nothing is done."""
        if self.scaler is None:
            return True
        import torch

        self.scaler.unscale_(optimizer)
        finite = all(bool(torch.isfinite(p.grad).all()) for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
        self.scaler.update()
        return finite

    def state_dict(self) -> dict:
        return {"precision": self.name, "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
