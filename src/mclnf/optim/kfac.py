"""K-FAC for the ``nn.Linear`` layers of a model, behind the torch.optim API (preconditioned SGD).

The Kronecker-factor arithmetic is asdl's (asdfghjkl 0.1a5): its ``Linear`` operation turns a layer's
inputs and output gradients into the factors (bias column, ``aᵀa``, ``gᵀg``), ``cholesky_inv`` takes the
damped inverses and ``Kron.mvp`` applies ``G⁻¹ M A⁻¹``. What is written here is the part asdl only
offers inside its own forward/backward driver: persistent hooks that record on refresh steps only, the
refresh schedule, the optimizer state, and the step.
"""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Any, Callable

import torch
from asdl.operations.linear import Linear as _AsdlLinear
from asdl.symmatrix import Kron
from asdl.utils import cholesky_inv
from torch import Tensor, nn

# A field's first layer takes coordinates that need no gradient; torch then warns, on the full backward
# hook, that it fires for the outputs only — exactly the output gradient K-FAC records.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs")


class KFAC(torch.optim.Optimizer):
    r"""K-FAC (Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
    Curvature", ICML 2015, arXiv:1503.05671) as a preconditioner for SGD, the way Chng, Saratchandran &
    Lucey (arXiv:2402.08784) apply it to neural fields.

    For every ``nn.Linear`` layer with input :math:`a` (a column of ones appended when it has a bias),
    weight :math:`M = [W\;b]` and back-propagated per-sample output gradient :math:`g` (the gradient of the
    batch-mean loss times the batch size :math:`n`), on refresh steps::

        A = (1/n) Σ_i ā_i ā_iᵀ,        G = (1/n) Σ_i g_i g_iᵀ              (this batch's estimate)
        A⁻¹ ← (A + √λ I)⁻¹,           G⁻¹ ← (G + √λ I)⁻¹                 (factored Tikhonov, π = 1)

    and on every step :math:`t`::

        M_t = M_{t-1} - lr · G⁻¹ ∇_M L A⁻¹          (= lr · (A ⊗ G)⁻¹ vec ∇L, the K-FAC natural gradient)
        θ_t = θ_{t-1} - lr · ∇_θ L                  (parameters outside nn.Linear layers: plain SGD)

    Refresh steps are 1, 1 + N, 1 + 2N, … (``update_every`` = N = 100, the paper's inverse-update
    period); the factors and inverses are stale in between. The inputs and output gradients are recorded
    by a forward pre-hook and a full backward hook registered here on each layer, and only while the
    coming :meth:`step` is a refresh step: the other steps cost one Python check per layer. So the model
    must run forward and backward (``loss.backward()``) between :meth:`zero_grad` and :meth:`step`, as any
    torch optimizer expects; the factors live in ``self.state[layer.weight]``.

    ``G`` is the empirical Fisher factor (the gradients of the actual loss, all ``loss.backward()``
    gives): for a linear least-squares layer with one output, :math:`A ⊗ G = 2 E[r^2] ⋅ H` — the update is
    the Newton step scaled by :math:`2 / (4E[r^2])`.

    Args:
        model: the module whose ``nn.Linear`` layers are preconditioned; all its trainable parameters are
            optimized. It must contain at least one ``nn.Linear`` with a trainable weight.
        lr: learning rate (≥ 0), default 0.1 (the paper's).
        damping: Tikhonov damping λ ≥ 0, default 0.01; √λ is added to the diagonal of each factor. With
            λ = 0 the factors must be positive definite.
        update_every: refresh period N ≥ 1 of the factors and their inverses.

    Example::

        opt = KFAC(model, lr=0.1)
        for x, y in batches:
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, damping: float = 0.01, update_every: int = 100):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: KFAC needs the model (an nn.Module) to find its nn.Linear layers, got {type(model).__name__}")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0.0 <= lr < math.inf):
            raise ValueError(f"Invalid learning rate lr: {lr!r}; must be finite and ≥ 0")
        if not (isinstance(damping, (int, float)) and not isinstance(damping, bool) and 0.0 <= damping < math.inf):
            raise ValueError(f"Invalid damping: {damping!r}; must be finite and ≥ 0")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"Invalid update_every: {update_every!r}; must be an integer ≥ 1")
        self._layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        if not self._layers:
            raise ValueError(f"Invalid model: {type(model).__name__} has no nn.Linear layer with a trainable weight; K-FAC has nothing to precondition")
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, dict(lr=lr))
        self.damping, self.update_every = float(damping), update_every
        self._steps = 0  # step() calls so far: drives the refresh schedule
        self._owned = set(self._layers)
        self._inputs: dict[nn.Module, Tensor] = {}
        self._outgrads: dict[nn.Module, Tensor] = {}
        me = weakref.ref(self)  # closures over a weak reference: a deep-copied model does not copy the optimizer

        def save_input(module: nn.Module, args: tuple) -> None:
            opt = me()
            if opt is not None and module in opt._owned and torch.is_grad_enabled() and opt.refreshes_at(opt._steps + 1):
                opt._inputs[module] = args[0].detach()

        def save_outgrad(module: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
            opt = me()
            if opt is not None and module in opt._owned and opt.refreshes_at(opt._steps + 1):
                opt._outgrads[module] = grad_output[0].detach()

        self._handles = []
        for m in self._layers:
            self._handles.append(m.register_forward_pre_hook(save_input))
            self._handles.append(m.register_full_backward_hook(save_outgrad))

    def refreshes_at(self, step: int) -> bool:
        """Whether step number ``step`` (1-based) refreshes the factors and their inverses."""
        return (step - 1) % self.update_every == 0

    def records_curvature(self) -> bool:
        """Whether the coming :meth:`step` refreshes the factors from the coming forward and backward pass."""
        return self.refreshes_at(self._steps + 1)

    def remove_hooks(self) -> None:
        """Detach the recording hooks from the model (the optimizer cannot refresh afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["schedule"] = {"steps": self._steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        schedule = state_dict.pop("schedule", None)
        if schedule is None:
            raise ValueError("KFAC.load_state_dict: the state dict has no 'schedule' entry (not saved by KFAC)")
        super().load_state_dict(state_dict)
        self._steps = int(schedule["steps"])

    # -- the update ------------------------------------------------------------------------------------
    def _refresh(self, layer: nn.Linear) -> None:
        """This batch's factors of ``layer`` (asdl's Linear-operation arithmetic) and their damped inverses."""
        if layer not in self._inputs or layer not in self._outgrads:
            raise RuntimeError(
                f"KFAC: step {self._steps + 1} refreshes the Kronecker factors but no forward and backward pass through "
                f"{layer} was recorded; run model(x) and loss.backward() between zero_grad() and step()"
            )
        a = _AsdlLinear.preprocess_in_data(layer, self._inputs[layer], None)  # n × f_in
        g = _AsdlLinear.preprocess_out_grads(layer, self._outgrads[layer])  # n × f_out
        n = a.shape[0]
        if layer.bias is not None:
            a = _AsdlLinear.extend_in_data(a)  # n × (f_in + 1): the bias column
        g = g * n  # per-sample gradients of a batch-mean loss
        A = _AsdlLinear.cov_kron_A(layer, a).div_(n)
        G = _AsdlLinear.cov_kron_B(layer, g).div_(n)
        shift = math.sqrt(self.damping)
        try:  # cholesky_inv shifts its argument's diagonal in place and back: give it copies
            A_inv, G_inv = cholesky_inv(A.clone(), shift), cholesky_inv(G.clone(), shift)
        except torch.linalg.LinAlgError as e:
            raise RuntimeError(f"KFAC: a Kronecker factor of {layer} is not positive definite at damping {self.damping:g} ({e}); use damping > 0") from None
        self.state[layer.weight].update(A=A, G=G, A_inv=A_inv, G_inv=G_inv)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.refreshes_at(self._steps + 1):
            try:
                for layer in self._layers:
                    self._refresh(layer)
            finally:
                self._inputs.clear()
                self._outgrads.clear()
        lr = self.param_groups[0]["lr"]  # one group: KFAC builds it from the model
        done = set()
        for layer in self._layers:
            w, b = layer.weight, layer.bias
            if b is not None and not b.requires_grad:
                b = None
            done.update((w, b))
            if w.grad is None and (b is None or b.grad is None):
                continue
            state = self.state[w]
            if "A_inv" not in state:
                raise RuntimeError(f"KFAC: {layer} has no Kronecker factors yet (its first refresh did not happen)")
            gw = torch.zeros_like(w) if w.grad is None else w.grad
            m = gw if b is None else torch.cat([gw, torch.zeros_like(b) if b.grad is None else b.grad[:, None]], 1)
            nat = Kron(state["A"], state["G"], state["A_inv"], state["G_inv"]).mvp(m, use_inv=True)  # G⁻¹ M A⁻¹
            w.add_(nat[:, : w.shape[1]], alpha=-lr)
            if b is not None:
                b.add_(nat[:, -1], alpha=-lr)
        for p in self.param_groups[0]["params"]:
            if p not in done and p.grad is not None:
                p.add_(p.grad, alpha=-lr)
        self._steps += 1
        return loss


__all__ = ["KFAC"]
