"""``--optimizer auto``: the optimizer the preconditioner study found best for a field, and why.

Evidence (docs/preconditioners.md; DIV2K 256², batch 512, 5 × 256, 2000 steps, 2 seeds for Adam/ESGD):
sine images — ESGD reaches Adam's 2000-step PSNR in 0.39 of the steps / 0.45 of the time and ends
4 dB higher; gaussian and wavelet — ESGD is below Adam on average (seed-sensitive), the slower
curvature methods not faster in time; relu-pe — Adam 1e-3 beats both Adam 1e-4 and ESGD;
occupancy (bunny) — Adam 1e-4 has the best IoU at equal time; radiance (lego, docs/radiance.md) —
Adam 1e-3 above ESGD 0.15 on the gaussian NeRF after 6 minutes. Audio and video were not studied:
Adam, the safe default.
"""

from __future__ import annotations


def choose_optimizer(kind: str, activation: str) -> tuple[str, float, str]:
    """(optimizer, learning rate, reason) for a field of ``activation`` fitted to a ``kind`` signal."""
    if kind == "image" and activation == "sine":
        return "esgd", 0.15, "ESGD reached Adam's 2000-step PSNR in 0.45x its time on sine image fields"
    if activation in ("relu", "relu-pe"):
        return "adam", 1e-3, "curvature methods do not help ReLU fields (sparse Hessian); Adam 1e-3 was fastest"
    if kind == "image":
        return "adam", 1e-4, f"ESGD was not reliably better than Adam on {activation} image fields"
    if kind == "radiance":
        return "adam", 1e-3, "on lego's gaussian NeRF Adam 1e-3 ended 1.3 dB above ESGD after 6 minutes (docs/radiance.md)"
    if kind == "occupancy":
        return "adam", 1e-4, "Adam had the best IoU at equal time on occupancy"
    return "adam", 1e-4, f"no study evidence for {kind} fields; Adam is the safe default"
