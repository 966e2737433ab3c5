"""One configurable coordinate MLP for every activation, usable as a module and under torch.func."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from mclnf.errors import MclnfError
from mclnf.fields.activations import ACTIVATIONS, Gaussian, RealGabor, Sine, siren_init_
from mclnf.fields.encoding import PositionalEncoding
from mclnf.fields.hashgrid import HashGridEncoding, grid_dim, table_entries
from mclnf.resources import check_fits

DEFAULT_OMEGA0 = {"sine": 30.0, "wavelet": 10.0}
ENCODINGS = ("none", "hashgrid")  # of the input, before the MLP (relu-pe's positional encoding goes with its activation)
HASH_OPTIONS = ("hash_levels", "hash_table_size", "hash_features", "hash_base_resolution", "hash_growth")
# hash grid defaults by the grid's dimension: (L, log2 T, F, N_min, N_max); the growth b = (N_max / N_min)^(1/(L−1)) reaches N_max
HASH_DEFAULTS = {
    1: (16, 17, 2, 16, 2**19),  # audio: N_max 2^19 ≈ a 12 s clip at 44.1 kHz sample by sample (b = 2, tiny-cuda-nn's default)
    2: (16, 15, 2, 16, 512),  # images: T = 2^15 (≈ 470k parameters, CPU-sized; the paper's gigapixel 2^24), N_max = 2 × the default 256 pixels
    3: (16, 19, 2, 16, 2048),  # video, meshes, scenes: instant-ngp's NeRF (T = 2^19, N_max 2048 over the unit cube)
}


@dataclass
class FieldConfig:
    """Architecture of a field. ``depth`` counts linear layers: 5 × 256 from 2 to 3 has 198,915 parameters.

    Options an activation (or the encoding) does not use are stored as ``None``; unset ones take the paper's value
    (a hash grid's: instant-ngp's, sized by the grid's dimension, :data:`HASH_DEFAULTS`).
    """

    in_dim: int
    out_dim: int
    width: int = 256
    depth: int = 5
    activation: str = "sine"
    omega0: float | None = None  # sine (30) and wavelet (10) frequency
    first_omega0: float | None = None  # sine: frequency of the first layer (default ω₀; SIREN audio uses 3000)
    sigma: float | None = None  # gaussian width (0.05)
    s0: float | None = None  # wavelet window scale (10)
    pe_frequencies: int | None = None  # relu-pe: L (8)
    encoding: str = "none"  # "hashgrid": the multiresolution hash encoding of the input (mclnf.fields.hashgrid)
    hash_levels: int | None = None  # hashgrid: L (16)
    hash_table_size: int | None = None  # hashgrid: log2 T per level (1-D 17, 2-D 15, 3-D 19)
    hash_features: int | None = None  # hashgrid: F per entry (2)
    hash_base_resolution: int | None = None  # hashgrid: N_min (16)
    hash_growth: float | None = None  # hashgrid: b (default: reaches N_max = 1-D 2^19, 2-D 512, 3-D 2048 at the last level)

    def __post_init__(self):
        a = self.activation
        if a not in ACTIVATIONS:
            raise MclnfError(f"--activation {a}: unknown; choose one of {', '.join(ACTIVATIONS)}")
        self.encoding = self.encoding or "none"
        if self.encoding not in ENCODINGS:
            raise MclnfError(f"--encoding {self.encoding}: unknown; choose one of {', '.join(ENCODINGS)}")
        if self.encoding == "hashgrid" and a == "relu-pe":
            raise MclnfError("--activation relu-pe: its positional encoding does not combine with --encoding hashgrid (use relu)")
        self._hash_defaults()
        for name, low in (("in_dim", 1), ("out_dim", 1), ("width", 1), ("depth", 2)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be an integer ≥ {low}")
        used = {"sine": {"omega0", "first_omega0"}, "gaussian": {"sigma"}, "wavelet": {"omega0", "s0"}, "relu-pe": {"pe_frequencies"}}.get(a, set())
        defaults = {"omega0": DEFAULT_OMEGA0.get(a), "sigma": 0.05, "s0": 10.0, "pe_frequencies": 8}
        for name in ("omega0", "first_omega0", "sigma", "s0", "pe_frequencies"):
            value = getattr(self, name)
            if name not in used:
                value = None
            elif value is None:
                value = self.omega0 if name == "first_omega0" else defaults[name]
            elif not value > 0:
                raise MclnfError(f"--{name.replace('_', '-')} {value}: must be positive")
            setattr(self, name, value)
        what = f"--width {self.width} --depth {self.depth}" + (f" --hash-levels {self.hash_levels} --hash-table-size {self.hash_table_size} --hash-features {self.hash_features}"
                                                               if self.encoding == "hashgrid" else "")  # fmt: skip
        check_fits(16 * self.num_params, f"{what}: a field of {self.num_params:,} parameters (weights, gradients, Adam's moments)")

    def _hash_defaults(self) -> None:
        """Hash grid options: None unless ``encoding`` is hashgrid; then checked, unset ones at the grid dimension's defaults."""
        if self.encoding != "hashgrid":
            for name in HASH_OPTIONS:
                setattr(self, name, None)
            return
        levels, log2_t, features, base, finest = HASH_DEFAULTS[grid_dim(self.in_dim)]
        for name, default in (("hash_levels", levels), ("hash_table_size", log2_t), ("hash_features", features), ("hash_base_resolution", base)):
            value = default if getattr(self, name) is None else getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MclnfError(f"--{name.replace('_', '-')} {value}: must be an integer ≥ 1")
            setattr(self, name, value)
        if self.hash_table_size > 32:
            raise MclnfError(f"--hash-table-size {self.hash_table_size}: at most 32 (log2 of the entries per level; the hash is 32-bit)")
        if self.hash_growth is None:
            L = self.hash_levels
            self.hash_growth = max(1.0, (finest / self.hash_base_resolution) ** (1 / (L - 1))) if L > 1 else 1.0
        elif not self.hash_growth >= 1:
            raise MclnfError(f"--hash-growth {self.hash_growth}: must be ≥ 1 (each level at least as fine as the one before)")
        self.hash_growth = float(self.hash_growth)

    @property
    def num_params(self) -> int:
        """Σ (fan_in + 1) · fan_out over the linear layers (an encoding widens the first input), plus a hash grid's
        F · Σ_l min(T, (N_l + 1)^d) table entries (:func:`mclnf.fields.hashgrid.table_entries`)."""
        first, table = self.in_dim, 0
        if self.activation == "relu-pe":
            first = self.in_dim * (1 + 2 * self.pe_frequencies)
        if self.encoding == "hashgrid":
            first = self.hash_levels * self.hash_features + self.in_dim - grid_dim(self.in_dim)
            table = self.hash_features * table_entries(self.in_dim, self.hash_levels, self.hash_table_size, self.hash_base_resolution, self.hash_growth)
        w = self.width
        return table + (first + 1) * w + (self.depth - 2) * (w + 1) * w + (w + 1) * self.out_dim  # in closed form: any depth, no list

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FieldConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def tapped(layer: nn.Linear, h: Tensor, bias: Tensor) -> Tensor:
    """``layer(h)`` with the per-sample ``bias`` (N, out) in place of ``layer.bias``: one addmm; a call
    of the module (and a correction) where it has hooks that must see the call."""
    if layer._forward_pre_hooks or layer._forward_hooks or layer._backward_hooks:
        return layer(h) + (bias - layer.bias)
    return torch.addmm(bias, h, layer.weight.t())


class Field(nn.Module):
    """An MLP f(x) = W_L(σ(… σ(W_1 γ(x) + b_1) …)) + b_L with the activation σ of its config; γ is the
    identity, relu-pe's positional encoding, or the multiresolution hash encoding (``encoding="hashgrid"``,
    :class:`~mclnf.fields.hashgrid.HashGridEncoding`: Müller et al. 2022; its MLP head is instant-ngp's
    small ReLU network by the CLI's defaults).

    Parameters are named ``layers.{i}.weight``/``layers.{i}.bias`` (and a hash grid's ``encoding.table``)
    and the forward pass has no in-place operations, so ``torch.func.functional_call``, ``grad`` and ``vmap`` apply directly.
    For training at a fixed batch, torch's opt-in ``field.compile(dynamic=False)`` fuses the
    activations (≈ 15 % faster steps at batch 4096 on CPU, after ≈ 30 s of compilation).
    """

    def __init__(self, config: FieldConfig):
        super().__init__()
        self.config = c = config
        if c.encoding == "hashgrid":
            self.encoding = HashGridEncoding(c.in_dim, c.hash_levels, c.hash_table_size, c.hash_features, c.hash_base_resolution, c.hash_growth)
        else:
            self.encoding = PositionalEncoding(c.in_dim, c.pe_frequencies) if c.activation == "relu-pe" else nn.Identity()
        dims = [getattr(self.encoding, "out_dim", c.in_dim)] + [c.width] * (c.depth - 1) + [c.out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        if c.activation == "sine":
            self.first_activation, self.activation = Sine(c.first_omega0), Sine(c.omega0)
            for i, layer in enumerate(self.layers):
                siren_init_(layer, c.omega0, first=i == 0)
        else:
            self.activation = {"gaussian": lambda: Gaussian(c.sigma), "wavelet": lambda: RealGabor(c.omega0, c.s0)}.get(c.activation, nn.ReLU)()
            self.first_activation = self.activation

    def forward(self, x: Tensor, taps: list[Tensor] | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Equal to ``last(σ(… σ(layer(γ(x)))))`` up to float rounding: activations with an
        ``of_linear`` fold their constants (ω₀, σ) into the weights, which are small, instead of
        scaling every pre-activation (see ``benchmarks/fit_throughput.py``) — except on a layer with
        module hooks (K-FAC records inputs and output gradients that way), which is called as a module.

        ``taps`` (one tensor per linear layer, shaped like its output (N, out): per-sample biases, in
        practice ``bias.expand(N, out)``) take the place of the layers' biases, z_l = a_{l-1} W_lᵀ +
        taps[l], and the inputs a_{l-1} of every linear layer are returned as well: ``(y, inputs)``.
        The gradient of a loss with respect to ``taps[l]`` is then the back-propagated error δ_l, so a
        per-sample gradient of layer l is the outer product δ_l ⊗ [a_{l-1}, 1] (the FIM loss). The tap
        enters the addmm that a bias would (no extra pass over the pre-activations); x must be (N, in).
        """
        h = self.encoding(x)
        *hidden, last = self.layers
        inputs = []
        for i, layer in enumerate(hidden):
            act = self.first_activation if i == 0 else self.activation
            of_linear = getattr(act, "of_linear", None)
            hooked = layer._forward_pre_hooks or layer._forward_hooks or layer._backward_hooks  # e.g. K-FAC's: they must see the call
            if taps is not None:
                inputs.append(h)
                h = act(tapped(layer, h, taps[i])) if of_linear is None or hooked else of_linear(h, layer.weight, taps[i])
            else:
                h = act(layer(h)) if of_linear is None or hooked else of_linear(h, layer.weight, layer.bias)
        if taps is None:
            return last(h)
        return tapped(last, h, taps[-1]), inputs + [h]

    @property
    def out_dims(self) -> list[int]:
        """Output size of every linear layer (the shapes of ``taps`` without the batch axis)."""
        return [layer.out_features for layer in self.layers]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
