"""The modular field of MCL-NF: K modules of one :class:`Field` architecture evaluated as one batched computation.

Every layer's parameters are stacked over modules — ``layers.{i}.weight`` of shape (K, out, in) and
``layers.{i}.bias`` of shape (K, out), the names of :class:`Field`'s with a leading module axis — so
all modules run in one ``torch.baddbmm`` per layer, never a Python loop over modules. An encoding with
parameters (a hash grid's ``encoding.table``) is stacked alike, (K, F, Σ T_l), and evaluated for all
modules in one gather, on each module's own points. Because the
names match, ``torch.func.vmap(lambda p, x: functional_call(Field(config), p, (x,)))`` over the
stacked parameters computes :meth:`ModularField.forward_all` as well; ``benchmarks/modular_step.py``
measures both and the explicit ``baddbmm`` (used here) is the faster on CPU.

Routing is the caller's (e.g. from task regions; K need not equal the number of tasks):

* :meth:`forward` ``(x, module_index)`` — each coordinate goes to one module. Coordinates are grouped
  by module (a stable sort) and padded to the largest group, and only the modules that receive at
  least one coordinate take part in the GEMMs: a batch routed to one module costs one field's
  forward, a balanced batch over all K costs one batched forward with no padding at all. Modules
  that receive no coordinate get gradients that are exactly zero.
* :meth:`forward_blend` ``(x, weights)`` — a convex combination of modules per coordinate (the
  paper's Algorithm 1, inference lines 27–31: blending neighbouring modules near region borders).
  Each nonzero weight costs one point evaluation: the cost is that of routing ``nnz(weights)``
  points, i.e. a one-hot row costs as much as :meth:`forward`, a row blending two modules twice that.
* :meth:`forward_all` ``(x)`` — every module on every point (or on its own (K, N, d) batch).

Growing (:meth:`add_module`) replaces the stacked Parameters by new, larger ones: an optimizer built
before holds the old objects and must be rebuilt (``torch.optim.Adam(field.parameters(), lr)``).
That is also what a task switch wants: with fresh Adam state, modules that receive no coordinate
have gradient exactly 0 and Adam's update of them is exactly 0 (m = v = 0), so they stay bit-exact —
whereas Adam state carried over from a previous task keeps moving them (its momentum is nonzero).
Pre-allocating capacity with a mask was the alternative; it was not chosen, because it makes every
optimizer and every parameter count carry dead modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mclnf.errors import MclnfError
from mclnf.fields.activations import FoldedActivation
from mclnf.fields.mlp import Field, FieldConfig


def _folded(act: nn.Module):
    """(c, g) with act(z) == g(c·z): the constant c is folded into the stacked weights, as ``Field``'s."""
    return (act.scale, act.folded) if isinstance(act, FoldedActivation) else (1.0, act)


class StackedLinear(nn.Module):
    """K linear maps side by side: ``weight`` (K, out, in), ``bias`` (K, out)."""

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def extra_repr(self) -> str:
        k, o, i = self.weight.shape
        return f"modules={k}, in_features={i}, out_features={o}"


class ModularField(nn.Module):
    """K modules of one :class:`FieldConfig`, parameters stacked, evaluated together (see the module docstring).

    ``ModularField(config, K)`` initializes the K modules as K successive ``Field(config)`` under the
    caller's RNG (each module exactly as a standalone field would be); ``ModularField(config, K, init)``
    starts every module from one shared initialization (a :class:`Field` or its state dict).
    """

    def __init__(self, config: FieldConfig, num_modules: int = 1, init: Field | Mapping[str, Tensor] | None = None):
        super().__init__()
        if not isinstance(num_modules, int) or num_modules < 1:
            raise MclnfError(f"num_modules {num_modules}: must be an integer ≥ 1")
        self.config = config
        template = self._new_field()  # activations and encoding (no parameters are used from it)
        self.encoding = template.encoding
        self._encoding_params = [n for n, _ in self.encoding.named_parameters()]  # a hash grid's table: stacked, one per module
        hidden = [template.first_activation] + [template.activation] * (config.depth - 2)
        self._acts = [_folded(a) for a in hidden]
        tensors = [self._tensors_of(init) for _ in range(num_modules)]  # init None: a fresh Field(config) each
        for name in self._encoding_params:
            setattr(self.encoding, name, nn.Parameter(torch.stack([t[f"encoding.{name}"] for t in tensors])))
        self.layers = nn.ModuleList(StackedLinear(torch.stack([t[f"layers.{i}.weight"] for t in tensors]), torch.stack([t[f"layers.{i}.bias"] for t in tensors])) for i in range(config.depth))

    # ---- construction and export -------------------------------------------------------------
    def _new_field(self) -> Field:
        """A Field(config) built without touching the caller's RNG."""
        with torch.random.fork_rng(devices=[]):
            return Field(self.config)

    def _tensors_of(self, init: Field | Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        """A module's parameters by their :class:`Field` names, checked against the config and copied."""
        if init is None:
            init = Field(self.config)  # consumes the caller's RNG, as a standalone field would
        if isinstance(init, Field):
            if init.config != self.config:
                raise MclnfError(f"module config {init.config} differs from the modular field's {self.config}")
            init = init.state_dict()
        ref = dict(self._new_field().named_parameters())
        try:
            out = {name: init[name] for name in ref}
        except KeyError as e:
            raise MclnfError(f"module state dict lacks {e}") from None
        for name, t in out.items():
            if t.shape != ref[name].shape:
                raise MclnfError(f"module {name} {tuple(t.shape)} does not fit the field's {tuple(ref[name].shape)}")
        return {name: t.detach().clone() for name, t in out.items()}

    def _stacks(self) -> dict[str, tuple[nn.Module, str]]:
        """Every stacked Parameter by its :class:`Field` name: (the module holding it, its attribute)."""
        out = {f"encoding.{n}": (self.encoding, n) for n in self._encoding_params}
        return out | {f"layers.{i}.{n}": (layer, n) for i, layer in enumerate(self.layers) for n in ("weight", "bias")}

    @classmethod
    def from_fields(cls, fields: Sequence[Field]) -> ModularField:
        """Stack standalone fields (one config) into one modular field; module k is ``fields[k]``."""
        if not fields:
            raise MclnfError("from_fields: need at least one field")
        mf = cls(fields[0].config, len(fields), init=fields[0])
        for f in fields[1:]:
            if f.config != mf.config:
                raise MclnfError(f"from_fields: configs differ ({f.config} vs {mf.config})")
        params = [dict(f.named_parameters()) for f in fields]
        with torch.no_grad():
            for name, (mod, attr) in mf._stacks().items():
                getattr(mod, attr).copy_(torch.stack([p[name] for p in params]))
        p = fields[0].layers[0].weight
        return mf.to(dtype=p.dtype, device=p.device)

    def module(self, k: int) -> Field:
        """Module k as a standalone :class:`Field` (a copy: same dtype and device), for rendering or saving."""
        k = self._check_index(k)
        p = self.layers[0].weight
        f = self._new_field().to(dtype=p.dtype, device=p.device)
        f.load_state_dict({name: getattr(mod, attr)[k].detach().clone() for name, (mod, attr) in self._stacks().items()})
        return f

    @torch.no_grad()
    def set_module(self, k: int, field: Field) -> None:
        """Module k becomes a copy of the standalone ``field`` (same config); the Parameters stay the same objects."""
        k = self._check_index(k)
        params = dict(field.named_parameters())
        for name, (mod, attr) in self._stacks().items():
            getattr(mod, attr)[k].copy_(params[name])

    def add_module(self, init: Field | Mapping[str, Tensor] | None = None, *args) -> int:
        """Append a module initialized from ``init`` (a Field or its state dict; None: a fresh
        ``Field(config)`` under the caller's RNG); returns its index. Old modules are unchanged.

        The stacked Parameters are replaced: rebuild the optimizer afterwards (module docstring).
        (``add_module(name, module)`` with a string name is nn.Module's and still works.)
        """
        if isinstance(init, str):
            return super().add_module(init, *args)
        new = self._tensors_of(init)
        for name, (mod, attr) in self._stacks().items():
            old = getattr(mod, attr)
            t = new[name].to(dtype=old.dtype, device=old.device)
            setattr(mod, attr, nn.Parameter(torch.cat([old.detach(), t[None]]), requires_grad=old.requires_grad))
        return self.num_modules - 1

    # ---- properties ----------------------------------------------------------------------------
    @property
    def num_modules(self) -> int:
        return self.layers[0].weight.shape[0]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_index(self, k: int) -> int:
        if not -self.num_modules <= k < self.num_modules:
            raise MclnfError(f"module {k}: the field has {self.num_modules} modules")
        return k % self.num_modules

    # ---- evaluation ----------------------------------------------------------------------------
    def _stacked(self, h: Tensor, select: Tensor | None = None) -> Tensor:
        """The MLP on (A, M, d) inputs, batch a = module ``select[a]`` (all K in order when None); a stacked
        encoding (the hash grid's) is applied here, per module: the inputs are then coordinates."""
        if self._encoding_params:
            h = self.encoding(h, select)
        *hidden, last = self.layers
        for layer, (c, g) in zip(hidden, self._acts):
            w, b = layer.weight, layer.bias
            if select is not None:
                w, b = w.index_select(0, select), b.index_select(0, select)
            if c != 1.0:
                w, b = c * w, c * b
            h = g(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
        w, b = last.weight, last.bias
        if select is not None:
            w, b = w.index_select(0, select), b.index_select(0, select)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    def forward_all(self, x: Tensor) -> Tensor:
        """Every module on ``x``: (N, d) → (K, N, out) on the same points, or (K, N, d) → (K, N, out) per module."""
        h = x if self._encoding_params else self.encoding(x)  # a stacked encoding: per module, in _stacked
        if h.dim() == 2:
            h = h.expand(self.num_modules, *h.shape)
        return self._stacked(h)

    def forward(self, x: Tensor, module_index: Tensor) -> Tensor:
        """f_{module_index[n]}(x[n]) for every n: (N, d), (N,) → (N, out). Only the modules that
        receive coordinates are evaluated, each on its own coordinates (grouped, padded to the largest group)."""
        n_pts = x.shape[0]
        if module_index.shape != (n_pts,):
            raise MclnfError(f"module_index of shape {tuple(module_index.shape)}: expected ({n_pts},)")
        K = self.num_modules
        idx = module_index.to(device=x.device, dtype=torch.long)
        if n_pts == 0:
            return x.new_zeros(0, self.config.out_dim)
        if int(idx.min()) < 0 or int(idx.max()) >= K:
            raise MclnfError(f"module_index in [{int(idx.min())}, {int(idx.max())}]: the field has {K} modules")
        h = x if self._encoding_params else self.encoding(x)  # a stacked encoding: per module, in _stacked
        counts = torch.bincount(idx, minlength=K)
        active = counts.nonzero().squeeze(1)  # modules that receive points, ascending
        A, M = active.numel(), int(counts.max())
        select = None if A == K else active
        order = torch.argsort(idx, stable=True)  # grouped by module, ascending — the order of `active`
        grouped = h.index_select(0, order)
        if A * M == n_pts:  # equal groups: a reshape, no padding
            y = self._stacked(grouped.reshape(A, M, -1), select).reshape(n_pts, -1)
        else:
            slot = torch.zeros(K, dtype=torch.long, device=x.device).index_put((active,), torch.arange(A, device=x.device))
            starts = torch.cumsum(counts, 0) - counts
            sorted_idx = idx.index_select(0, order)
            a, r = slot[sorted_idx], torch.arange(n_pts, device=x.device) - starts[sorted_idx]
            padded = grouped.new_zeros(A, M, grouped.shape[1]).index_put((a, r), grouped)
            y = self._stacked(padded, select)[a, r]
        inverse = torch.empty_like(order).index_put((order,), torch.arange(n_pts, device=x.device))  # out of place: the profiler's memory timeline trips on in-place index writes
        return y.index_select(0, inverse)

    def forward_blend(self, x: Tensor, weights: Tensor) -> Tensor:
        """Σ_k weights[n, k] f_k(x[n]): (N, d), (N, K) → (N, out); rows are meant to be convex combinations.

        Only nonzero weights are evaluated (cost: routing nnz(weights) points); differentiable in the
        parameters and in ``weights``."""
        if weights.shape != (x.shape[0], self.num_modules):
            raise MclnfError(f"weights of shape {tuple(weights.shape)}: expected ({x.shape[0]}, {self.num_modules})")
        pts, mods = weights.nonzero(as_tuple=True)
        y = self.forward(x.index_select(0, pts), mods)
        w = weights[pts, mods].to(y.dtype).unsqueeze(1)
        return y.new_zeros(x.shape[0], y.shape[1]).index_add(0, pts, w * y)
