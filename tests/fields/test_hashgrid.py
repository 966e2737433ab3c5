"""The multiresolution hash encoding (Müller et al. 2022, §3) and hash-grid fields: exact at vertices, d-linear
between them, the spatial hash of the paper (and collisions exactly where it says), gradients against finite
differences, torch.func (functional_call, vmap, jvp, meta-gradients), modular hash-grid fields, the closed-form
parameter count, and ``mclnf fit --encoding hashgrid`` end to end."""

import dataclasses
import itertools
import json

import pytest
import torch
from conftest import DATA, cli, one_line
from torch.func import functional_call, grad, jvp, vmap

from mclnf.config import FitConfig, resolve
from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig, HashGridEncoding
from mclnf.fields.hashgrid import PRIMES, level_sizes, spatial_hash
from mclnf.fields.modular import ModularField
from mclnf.learners import MetaOptions, meta_method
from mclnf.signals.datasets import load_dataset

D = torch.float64


def encoding(dim=2, levels=2, log2_t=6, features=2, base=4, growth=4.0, seed=0) -> HashGridEncoding:
    """2-D default: level 0 has N = 4, a dense 5 × 5 grid (25 ≤ 64 entries); level 1 has N = 16, 17² = 289 > 64: hashed."""
    torch.manual_seed(seed)
    enc = HashGridEncoding(dim, levels, log2_t, features, base, growth).to(D)
    with torch.no_grad():
        enc.table.normal_()  # O(1) features: differences are visible
    return enc


def vertex_coords(v, n) -> torch.Tensor:
    """The coordinate in [-1, 1]^d of integer vertex ``v`` of a level of resolution ``n``."""
    return torch.tensor(v, dtype=D) / n * 2 - 1


def level_feature(enc, x, level) -> torch.Tensor:
    F = enc.features
    return enc(x)[..., level * F : (level + 1) * F]


def random_points(n, d, seed=1) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=D) * 2 - 1


# ---- the layout of levels ------------------------------------------------------------------------
def test_levels_dense_while_the_grid_fits_then_hashed():
    enc = encoding(levels=4, base=4, growth=2.0)
    assert enc.resolutions == [4, 8, 16, 32]  # N_l = floor(N_min b^l)
    assert enc.hashed == [False, True, True, True]  # (N+1)² = 25 ≤ 64 = T, then 81, 289, 1089 > 64
    assert enc.sizes == [25, 64, 64, 64]
    assert tuple(enc.table.shape) == (2, 25 + 64 + 64 + 64)
    assert level_sizes(3, 3, 10, 4, 2.0) == ([4, 8, 16], [125, 729, 1024], [False, False, True])
    # a growth computed to reach N_max does reach it despite float rounding (16·(128^(1/15))^15 is 2047.9999999999984)
    assert HashGridEncoding(2, 16, 15, 2, 16, (512 / 16) ** (1 / 15)).resolutions[::3] == [16, 32, 64, 128, 256, 512]
    assert HashGridEncoding(3, 16, 19, 2, 16, (2048 / 16) ** (1 / 15)).resolutions[-1] == 2048


def test_bad_options_are_refused():
    with pytest.raises(MclnfError, match="growth"):
        HashGridEncoding(2, 4, 10, 2, 16, 0.5)
    with pytest.raises(MclnfError, match="at most 32"):
        HashGridEncoding(2, 4, 33, 2, 16, 2.0)
    with pytest.raises(MclnfError, match="--hash-levels 0"):
        FieldConfig(2, 3, activation="relu", encoding="hashgrid", hash_levels=0)
    with pytest.raises(MclnfError, match="relu-pe"):
        FieldConfig(2, 3, activation="relu-pe", encoding="hashgrid")
    with pytest.raises(MclnfError, match="--encoding fourier"):
        FieldConfig(2, 3, encoding="fourier")


# ---- the hash --------------------------------------------------------------------------------------
def test_hash_is_the_papers_formula():
    # hand-computed: 5·2654435761 = 0x3_1715_6075, 7·805459861 = 0x1_5010_6513
    assert int(spatial_hash(torch.tensor([3, 5]), 10)) == (0x075 ^ 3)  # low 10 bits of 0x...6075 = 0x075
    assert int(spatial_hash(torch.tensor([3, 5, 7]), 19)) == (3 ^ 0x17156075 ^ 0x50106513) & (2**19 - 1) == 329061
    assert int(spatial_hash(torch.tensor([12345]), 8)) == 12345 % 256  # 1-D: π₁ = 1, a plain modulo
    # against Python's integers in instant-ngp's uint32 arithmetic, large coordinates included
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 3):
        v = torch.randint(0, 2**21, (200, d), generator=g)
        expected = []
        for row in v.tolist():
            h = 0
            for i, vi in enumerate(row):
                h ^= (vi * PRIMES[i]) % 2**32
            expected.append(h % 2**19)
        assert spatial_hash(v, 19).tolist() == expected


def test_vertices_share_a_feature_exactly_when_their_hashes_are_equal():
    enc = encoding()
    n, offset, T = enc.resolutions[1], enc.sizes[0], 2**6
    with torch.no_grad():  # feature 0 of entry j is j: a vertex's feature names the entry it reads
        enc.table[0] = torch.arange(enc.table.shape[1], dtype=D)
    verts = list(itertools.product(range(n + 1), repeat=2))
    got = level_feature(enc, torch.stack([vertex_coords(v, n) for v in verts]), 1)[:, 0]
    formula = [((v0 * 1) ^ (v1 * 2654435761)) % T for v0, v1 in verts]
    torch.testing.assert_close(got, torch.tensor(formula, dtype=D) + offset, atol=1e-9, rtol=0)
    # a colliding pair (289 vertices, 64 entries): changing their entry changes both, and nothing else
    a, b = next((p, q) for p, q in itertools.combinations(range(len(verts)), 2) if formula[p] == formula[q])
    x = torch.stack([vertex_coords(v, n) for v in verts])
    before = level_feature(enc, x, 1)
    with torch.no_grad():
        enc.table[1, offset + formula[a]] += 10.0
    change = (level_feature(enc, x, 1) - before)[:, 1].detach()
    assert float(change[a]) == pytest.approx(10.0) and float(change[b]) == pytest.approx(10.0)
    expected = torch.tensor([10.0 if f == formula[a] else 0.0 for f in formula], dtype=D)
    torch.testing.assert_close(change, expected, atol=1e-9, rtol=0)


# ---- interpolation -----------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1])  # dense, hashed
def test_exact_at_vertices(level):
    enc = encoding()
    n, offset = enc.resolutions[level], [0, enc.sizes[0]][level]
    for v in [(0, 0), (1, 3), (n, 0), (2, n), (n, n), (n - 1, 1)]:  # upper faces included
        idx = v[0] + v[1] * (n + 1) if level == 0 else (v[0] ^ (v[1] * 2654435761)) % 64
        got = level_feature(enc, vertex_coords(v, n)[None], level)[0]
        torch.testing.assert_close(got, enc.table[:, offset + idx].detach(), atol=1e-12, rtol=0)


def test_the_upper_face_belongs_to_the_last_cell():
    """x = 1 is vertex N of the last cell (w = 1), never a cell beyond the grid: in range at a dense last level,
    and its derivative is the last cell's slope (the one-sided difference from inside)."""
    enc = encoding(levels=2, log2_t=10, base=4, growth=2.0)  # N = 4, 8: both dense (25, 81 ≤ 1024)
    assert enc.hashed == [False, False]
    x = torch.tensor([[1.0, 0.3]], dtype=D, requires_grad=True)
    out = enc(x)
    t = enc.table.detach()  # x_1 = (8, 5.2): vertices (8, 5) and (8, 6), rows 25 + v₀ + 9 v₁
    torch.testing.assert_close(out[0, 2:], 0.8 * t[:, 25 + 8 + 5 * 9] + 0.2 * t[:, 25 + 8 + 6 * 9], atol=1e-12, rtol=0)
    g = torch.autograd.grad(out[0, 2], x)[0][0, 0]
    h = 1e-7
    inside = (enc(x.detach())[0, 2] - enc(x.detach() - torch.tensor([[h, 0.0]], dtype=D))[0, 2]) / h
    assert float(g) == pytest.approx(float(inside.detach()), rel=1e-5)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_d_linear_between_vertices_and_continuous(d):
    enc = encoding(dim=d, levels=2, log2_t={1: 2, 2: 4, 3: 5}[d], base=2, growth=3.0)  # N = 2 (dense), 6 (hashed)
    assert enc.hashed == [False, True]
    x = random_points(50, d, seed=d)
    out = enc(x)
    for level, n in enumerate(enc.resolutions):
        pos = (x + 1) / 2 * n
        cell = pos.floor().clamp(max=n - 1)
        w = pos - cell
        expected = torch.zeros(len(x), enc.features, dtype=D)
        for c in itertools.product((0, 1), repeat=d):  # Σ_c Π_i w_i^{c_i}(1 − w_i)^{1−c_i} θ[corner]
            corner = cell + torch.tensor(c, dtype=D)
            weight = torch.where(torch.tensor(c, dtype=torch.bool), w, 1 - w).prod(-1)
            expected += weight[:, None] * level_feature(enc, corner / n * 2 - 1, level)  # the corner's own feature: exact at vertices
        torch.testing.assert_close(out[:, level * 2 : level * 2 + 2], expected, atol=1e-10, rtol=0)
    # continuous across cell faces, and linear along every axis within a cell
    face = torch.full((1, d), 0.123, dtype=D)
    face[0, 0] = 1 / 6 * 2 - 1  # on a face of the finest level's cells (vertex 1 of N = 6 along axis 0)
    e = torch.zeros(1, d, dtype=D)
    e[0, 0] = 1e-9
    torch.testing.assert_close(enc(face - e), enc(face + e), atol=1e-7, rtol=0)
    a, b = face.clone(), face.clone()
    a[0, 0] += 0.01
    b[0, 0] += 0.05  # the same cell of every level along axis 0
    torch.testing.assert_close(enc((a + b) / 2), (enc(a) + enc(b)) / 2, atol=1e-12, rtol=0)
    assert not torch.allclose(enc(a), enc(b))


def test_inputs_are_clamped_to_the_box_and_extra_coordinates_pass_through():
    enc = encoding(dim=5)  # a radiance field's input: 3 position coordinates hashed, 2 direction angles passed on
    assert enc.dim == 3 and enc.out_dim == 2 * 2 + 2
    x = random_points(7, 5)
    out = enc(x)
    assert out.shape == (7, 6)
    torch.testing.assert_close(out[:, 4:], x[:, 3:], atol=0, rtol=0)
    outside = x.clone()
    outside[:, :3] = x[:, :3].sign() * 1.5
    torch.testing.assert_close(enc(outside), enc(torch.cat([x[:, :3].sign(), x[:, 3:]], 1)), atol=0, rtol=0)



def test_no_points_give_no_features():  # an occupancy grid's chunk of empty space
    enc = encoding(dim=5)
    assert enc(torch.zeros(0, 5)).shape == (0, enc.out_dim)


# ---- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 3])
def test_gradients_match_finite_differences(d):
    enc = encoding(dim=d, levels=3, log2_t=5, base=2, growth=2.5)
    x = random_points(6, d, seed=10 + d)
    for n in enc.resolutions:  # finite differences must not cross a cell face
        frac = ((x + 1) / 2 * n) % 1
        assert bool(((frac > 1e-4) & (frac < 1 - 1e-4)).all())
    table = enc.table.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t, x: functional_call(enc, {"table": t}, (x,)), (table, x.clone().requires_grad_()))
    assert torch.autograd.gradgradcheck(lambda t, x: functional_call(enc, {"table": t}, (x,)), (table, x.clone().requires_grad_()))


def test_jvp_in_the_table_is_the_encoding_of_the_tangent():
    """The encoding is linear in its table: its jvp along a tangent table is the encoding with that table."""
    enc = encoding(dim=3, levels=3, log2_t=7, base=2, growth=3.0)
    x = random_points(20, 3)
    tangent = torch.randn_like(enc.table)
    _, out = jvp(lambda t: functional_call(enc, {"table": t}, (x,)), (enc.table.detach(),), (tangent,))
    torch.testing.assert_close(out, functional_call(enc, {"table": tangent}, (x,)), atol=1e-12, rtol=0)


# ---- fields, torch.func, state ------------------------------------------------------------------------
def hash_config(in_dim=2, out_dim=3, **kw) -> FieldConfig:
    small = {"hash_levels": 4, "hash_table_size": 8, "hash_base_resolution": 4, "hash_growth": 2.0}
    return FieldConfig(in_dim, out_dim, width=16, depth=3, activation="relu", encoding="hashgrid", **(small | kw))


@pytest.mark.parametrize("in_dim", [1, 2, 3, 5, 6])
def test_num_params_closed_form_equals_the_field(in_dim):
    for cfg in (hash_config(in_dim), FieldConfig(in_dim, 4, width=64, depth=3, activation="relu", encoding="hashgrid")):
        assert cfg.num_params == Field(cfg).num_params
    d = min(in_dim, 3)
    cfg = hash_config(in_dim)  # N = 4, 8, 16, 32; T = 256; the first layer takes L·F = 8 features instead of d coordinates
    table = 2 * sum(min(256, (n + 1) ** d) for n in (4, 8, 16, 32))
    assert cfg.num_params - dataclasses.replace(cfg, encoding="none").num_params == table + (8 - d) * 16


def test_defaults_by_grid_dimension():
    img = FieldConfig(2, 3, activation="relu", encoding="hashgrid")
    assert (img.hash_levels, img.hash_table_size, img.hash_features, img.hash_base_resolution) == (16, 15, 2, 16)
    assert Field(img).encoding.resolutions[-1] == 512
    scene = FieldConfig(5, 4, activation="relu", encoding="hashgrid")
    assert (scene.hash_table_size, Field(scene).encoding.resolutions[-1]) == (19, 2048)
    assert FieldConfig(1, 1, activation="relu", encoding="hashgrid").hash_growth == 2.0
    plain = FieldConfig(2, 3, hash_levels=4)  # hash options are dropped without the encoding, as unused activation options are
    assert plain.hash_levels is None and plain.encoding == "none"
    assert FieldConfig.from_dict(img.to_dict()) == img


@pytest.mark.parametrize("in_dim", [1, 2, 3])
def test_state_dict_round_trip(in_dim):
    cfg = hash_config(in_dim)
    torch.manual_seed(0)
    a = Field(cfg)
    assert "encoding.table" in a.state_dict()
    torch.manual_seed(1)
    b = Field(cfg)
    x = random_points(30, in_dim).float()
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    assert a(x).shape == (30, 3)


def test_tables_start_uniform_in_the_papers_range():
    torch.manual_seed(0)
    t = Field(FieldConfig(2, 3, activation="relu", encoding="hashgrid")).encoding.table.detach()
    assert float(t.abs().max()) <= 1e-4 and float(t.abs().max()) > 0.99e-4
    assert abs(float(t.mean())) < 1e-6 and float(t.std()) == pytest.approx(1e-4 / 3**0.5, rel=0.01)


def test_functional_call_and_vmap_over_parameter_sets():
    cfg = hash_config(2)
    torch.manual_seed(0)
    field = Field(cfg).to(D)
    sets = []
    for seed in range(3):
        torch.manual_seed(seed + 10)
        sets.append({k: v.detach().to(D) for k, v in Field(cfg).named_parameters()})
    x = random_points(40, 2)
    # a swapped parameter dict is the field with those parameters
    other = Field(cfg).to(D)
    other.load_state_dict(sets[1])
    torch.testing.assert_close(functional_call(field, sets[1], (x,)), other(x), atol=0, rtol=0)
    stacked = {k: torch.stack([s[k] for s in sets]) for k in sets[0]}
    looped = torch.stack([functional_call(field, s, (x,)) for s in sets])
    torch.testing.assert_close(vmap(lambda p: functional_call(field, p, (x,)))(stacked), looped, atol=1e-12, rtol=0)
    xs = torch.stack([random_points(40, 2, seed=s) for s in range(3)])  # and with each set its own points
    looped = torch.stack([functional_call(field, s, (xi,)) for s, xi in zip(sets, xs)])
    torch.testing.assert_close(vmap(lambda p, xi: functional_call(field, p, (xi,)))(stacked, xs), looped, atol=1e-12, rtol=0)
    # per-set gradients of a loss, vmapped, equal the loop's; the table's gradient is nonzero
    loss = lambda p, xi: functional_call(field, p, (xi,)).square().mean()  # noqa: E731
    g = vmap(grad(loss))(stacked, xs)
    for i, s in enumerate(sets):
        gi = grad(loss)(s, xs[i])
        for k in gi:
            torch.testing.assert_close(g[k][i], gi[k], atol=1e-12, rtol=0)
    assert float(g["encoding.table"].abs().sum()) > 0


def test_modular_field_of_hash_grid_modules_equals_standalone_fields():
    cfg = hash_config(2)
    torch.manual_seed(0)
    fields = [Field(cfg).to(D) for _ in range(3)]
    mf = ModularField.from_fields(fields)
    assert tuple(mf.encoding.table.shape) == (3, *fields[0].encoding.table.shape)
    x = random_points(60, 2)
    out = mf.forward_all(x)
    idx = torch.arange(60) % 3
    routed = mf(x, idx)
    for k, f in enumerate(fields):
        torch.testing.assert_close(out[k], f(x), atol=1e-12, rtol=0)
        torch.testing.assert_close(routed[idx == k], f(x[idx == k]), atol=1e-12, rtol=0)
        torch.testing.assert_close(mf.module(k)(x), f(x), atol=0, rtol=0)
    only = mf(x[:7], torch.full((7,), 2))  # one module receives every point; the others' tables get zero gradient
    only.sum().backward()
    assert float(mf.encoding.table.grad[:2].abs().sum()) == 0 and float(mf.encoding.table.grad[2].abs().sum()) > 0
    k = mf.add_module(fields[0])
    torch.testing.assert_close(mf(x, torch.full((60,), k)), fields[0](x), atol=1e-12, rtol=0)
    mf.set_module(0, fields[1])
    torch.testing.assert_close(mf.module(0)(x), fields[1](x), atol=0, rtol=0)


@pytest.fixture(scope="module")
def faces():
    ds = load_dataset("lfw_subset", {"resize": 6})  # 6 × 6 real faces
    return ds.layout, ds.values("train")[:3].double()


@pytest.mark.parametrize("method", ["mol", "oml", "mcl-nf"])
def test_meta_learning_a_hash_grid_initialization(faces, method):
    """The existing meta-learning machinery on a hash-grid field: second-order meta-gradient against finite
    differences, the vmapped inner loops equal a loop, and the table gets a meta-gradient."""
    layout, values = faces
    cfg = FieldConfig(2, 1, width=8, depth=3, activation="relu", encoding="hashgrid", hash_levels=2, hash_table_size=4, hash_base_resolution=2, hash_growth=2.0)
    m = meta_method(layout, cfg, MetaOptions(method=method, inner_steps=2, inner_lr=0.05, oml_fast_layers=1))
    m.template.double()
    theta = {k: v.double().requires_grad_() for k, v in m.init_params(0).items()}
    with torch.no_grad():
        theta["encoding.table"].normal_(0, 0.3)
    count = values.shape[0] * (4 if method == "mcl-nf" else 1)
    obj, *_ = m.objective(theta, values, count)
    g = dict(zip(theta, torch.autograd.grad(obj, list(theta.values()))))
    assert float(g["encoding.table"].abs().sum()) > 0
    if method == "oml":
        assert "encoding.table" not in m.fast  # the representation: meta-learned, not adapted in the inner loop
    torch.manual_seed(1)
    v = {k: torch.randn_like(p) for k, p in theta.items()}
    eps = 1e-5
    value = lambda s: float(m.objective({k: (p + s * eps * v[k]).detach() for k, p in theta.items()}, values, count)[0])  # noqa: E731
    assert sum(float((g[k] * v[k]).sum()) for k in g) == pytest.approx((value(1) - value(-1)) / (2 * eps), rel=1e-6, abs=1e-10)
    m.opts = dataclasses.replace(m.opts, vmap=False)
    obj2, *_ = m.objective(theta, values, count)
    g2 = dict(zip(theta, torch.autograd.grad(obj2, list(theta.values()))))
    for k in g:
        torch.testing.assert_close(g[k], g2[k], rtol=1e-9, atol=1e-12)


# ---- the CLI --------------------------------------------------------------------------------------
def test_resolved_defaults_are_instant_ngps_head_and_rate():
    cfg = resolve(FitConfig(signal="camera", encoding="hashgrid"), "image")
    assert (cfg.activation, cfg.width, cfg.depth, cfg.optimizer, cfg.lr) == ("relu", 64, 3, "adam", 1e-2)
    cfg = resolve(FitConfig(signal="x", encoding="hashgrid", width=32, lr=1e-3), "radiance")
    assert (cfg.activation, cfg.width, cfg.depth, cfg.lr) == ("relu", 32, 3, 1e-3)
    assert resolve(FitConfig(signal="camera"), "image").lr == 1e-4  # unchanged without the encoding
    with pytest.raises(MclnfError, match="--hash-levels: applies to --encoding hashgrid only"):
        resolve(FitConfig(signal="camera", hash_levels=4), "image")
    with pytest.raises(MclnfError, match="--optimizer shampoo"):  # a (Σ T_l)² Kronecker factor: refused, not attempted
        resolve(FitConfig(signal="camera", encoding="hashgrid", optimizer="shampoo"), "image")


def test_fit_an_image_with_a_hash_grid(tmp_path, capsys):
    image = DATA / "celeba_align" / "000001.jpg"
    out = tmp_path / "run"
    assert cli("fit", image, "--encoding", "hashgrid", "--hash-table-size", "12", "--resize", "32", "--steps", "40", "--batch-size", "256",
               "--eval-every", "10", "--quiet", "--out", out) == 0  # fmt: skip
    record = json.loads((out / "metrics.json").read_text())
    curve = [c["psnr"] for c in record["curve"]]
    assert [c["step"] for c in record["curve"]] == [10, 20, 30, 40]
    assert curve[-1] > curve[0] + 3
    field = record["field"]
    assert field["encoding"] == "hashgrid" and field["hash_table_size"] == 12 and field["activation"] == "relu" and field["width"] == 64
    assert record["params"] == FieldConfig.from_dict(field).num_params
    assert (out / "reconstruction.png").is_file()
    capsys.readouterr()
    assert cli("fit", image, "--hash-growth", "1.5", "--steps", "1", "--quiet", "--out", tmp_path / "bad") == 2
    assert "--hash-growth: applies to --encoding hashgrid only" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()
