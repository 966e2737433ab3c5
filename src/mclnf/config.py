"""Every command's config, composed of option groups declared once (:mod:`mclnf.options` makes the CLI of them).

Groups: :class:`FieldOptions`, :class:`LoaderOptions`, :class:`SceneOptions`, :class:`OccupancyOptions`,
:class:`OptimOptions`, :class:`RunOptions`, :class:`StreamOptions`, :class:`DatasetOptions`,
:class:`OuterOptions`, and the learners' own (:class:`~mclnf.learners.base.StrategyOptions`,
:class:`~mclnf.learners.base.OnlineOptions`, :class:`~mclnf.learners.meta.MetaOptions`). Options whose
default depends on the signal are None until :func:`resolve` fills them with the kind's defaults
(:data:`DEFAULTS`, :data:`KIND_DEFAULTS`) and checks that every option given applies.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mclnf.errors import MclnfError
from mclnf.fields import ACTIVATIONS, ENCODINGS, HASH_OPTIONS, FieldConfig
from mclnf.learners import CONTINUAL_LEARNERS, ONLINE_LEARNERS
from mclnf.learners.base import LearnerOptions, OnlineOptions, StrategyOptions
from mclnf.learners.meta import MetaOptions
from mclnf.optim import OPTIMIZERS, default_lr
from mclnf.optim.auto import choose_optimizer
from mclnf.options import OptionGroup, check_positive, check_positive_int, check_seed, flag_name, option
from mclnf.runtime import PRECISIONS, check_device, check_precision, native_bf16
from mclnf.signals import Layout, Signal, load_signal, signal_kind
from mclnf.signals.classification import BENCHMARKS
from mclnf.signals.occupancy_grid import check_resolution
from mclnf.stacked import STACKABLE

DEFAULTS = {"activation": "sine", "width": 256, "depth": 5, "batch_size": 512}  # of options left unset, unless the kind's say otherwise
KIND_DEFAULTS = {  # per-kind defaults of options left unset
    "image": {"resize": 256},  # the papers' 256 × 256
    "audio": {"first_omega0": 3000.0},  # SIREN's audio setting: time in [-1, 1] spans the whole clip
    # NeRF's ReLU + positional encoding (on lego 25.8 dB held-out in 6 minutes; gaussian σ 0.1, the preconditioner paper's NeRF, 22.1), sized for 2 cores
    "radiance": {"activation": "relu-pe", "sigma": 0.1, "width": 128, "depth": 4, "batch_size": 1024},
}
KIND_LR = {("radiance", "adam"): 1e-3}  # NeRF's 5e-4 order; 1e-4 (the image fields') was 4.5 dB behind on lego after 400 steps
ENCODING_DEFAULTS = {"hashgrid": {"activation": "relu", "width": 64, "depth": 3}}  # instant-ngp's MLP head: 2 hidden ReLU layers × 64 (before the kind's defaults)
ENCODING_LR = {("hashgrid", "adam"): 1e-2}  # instant-ngp's Adam 1e-2: tables start at ±1e-4, 1e-4 would barely move them
ACTIVATION_OPTIONS = {  # the field options that apply to each activation
    "sine": ("omega0", "first_omega0"), "gaussian": ("sigma",), "wavelet": ("omega0", "s0"), "relu": (), "relu-pe": ("pe_frequencies",),
}  # fmt: skip
SIGNAL_OPTIONS = {  # the loader options that apply to each kind
    "image": ("resize", "crop", "gray", "pad"),
    "audio": ("start", "duration"),
    "video": ("frames", "start_frame", "resize", "crop"),
    "occupancy": ("points", "eval_points", "resolution"),
    "radiance": ("resize", "holdout", "samples", "importance", "scene_bound", "direction", "factor", "ndc"),
}
FIELD_OPTIONS = ("width", "depth", "activation", "omega0", "first_omega0", "sigma", "s0", "pe_frequencies", "encoding", *HASH_OPTIONS)
PRECISION_HELP = ("arithmetic of the training steps: fp32, or mixed precision — bf16, or fp16 (cuda only; loss scaling) — matrix products under torch.autocast, "
                  "with parameters, optimizer state, loss, metrics and curvature estimates in float32 (docs/precision.md)")  # fmt: skip
# mclnf fit's default precision by (kind, activation, optimizer), no encoding, on a CPU where bf16 is native (runtime.native_bf16): the fastest that costs ≤ 0.3 dB
# at fit's default budget (benchmarks/fit_throughput.py --fit, docs/precision.md): sine images −0.19 to +0.01 dB in bf16 (camera, 4 Kodak images) at 1.6× the
# step rate; bf16 cost 1.3–2.0 dB for gaussian, wavelet and hash-grid images and 7 dB for audio, and was no faster for relu-pe: those stay fp32
PRECISION_DEFAULTS = {("image", "sine", "adam"): "bf16"}
OFFLINE_BUDGETS = ("stream", "full")  # meta-test's accountings of the offline references (commands/meta_test.py)
META_TASK_BATCH = {"radiance": 256}  # rays of each task per outer step: a scene block's tasks hold thousands


# ---- option groups -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class FieldOptions(OptionGroup):
    """field"""

    activation: str | None = option(None, "sine (SIREN), gaussian, wavelet (real Gabor, WIRE), relu, relu-pe (ReLU with positional encoding) (default: sine; radiance relu-pe)", choices=ACTIVATIONS)
    width: int | None = option(None, "hidden units per layer (default: 256; radiance 128; mcl-nf modules: width / √T)")
    depth: int | None = option(None, "number of linear layers (default: 5; radiance 4; 5 × 256 from 2 to 3: 198,915 parameters)")
    omega0: float | None = option(None, "sine/wavelet frequency ω₀ (default: sine 30, wavelet 10)")
    first_omega0: float | None = option(None, "sine: ω₀ of the first layer (default: ω₀; audio 3000 as SIREN)")
    sigma: float | None = option(None, "gaussian: width σ (default: 0.05; radiance 0.1)")
    s0: float | None = option(None, "wavelet: window scale s₀ (default: 10)")
    pe_frequencies: int | None = option(None, "relu-pe: number of frequencies L (default: 8)")
    encoding: str = option("none", "input encoding before the MLP: none, or hashgrid (multiresolution hash grid, Müller et al. 2022; its MLP head "
                           "defaults to instant-ngp's: relu, --width 64, --depth 3, adam 1e-2)", choices=ENCODINGS)  # fmt: skip
    hash_levels: int | None = option(None, "hashgrid: levels L (default: 16)")
    hash_table_size: int | None = option(None, "hashgrid: log2 of the table size T per level (default: images 15 — 470k parameters for 2 cores, where instant-ngp's "
                                         "gigapixel images take 24; 3-D (video, meshes, scenes) 19 as instant-ngp's NeRF; audio 17)")  # fmt: skip
    hash_features: int | None = option(None, "hashgrid: features F per table entry (default: 2)")
    hash_base_resolution: int | None = option(None, "hashgrid: coarsest resolution N_min (default: 16)")
    hash_growth: float | None = option(None, "hashgrid: growth factor b between levels, N_l = floor(N_min b^l) (default: the b that reaches N_max at the last level: "
                                       "images 512, twice the default 256 pixels; 3-D 2048, instant-ngp's NeRF; audio 2^19, a 12 s clip at 44.1 kHz)")  # fmt: skip

    def check(self):
        check_positive_int(self, "width", "depth", "pe_frequencies", "hash_levels", "hash_table_size", "hash_features", "hash_base_resolution")
        if self.hash_growth is not None and not self.hash_growth >= 1:
            raise MclnfError(f"--hash-growth {self.hash_growth}: must be ≥ 1")

    def field_config(self, layout: Layout) -> FieldConfig:
        """The field these options describe for signals of ``layout``."""
        return FieldConfig(in_dim=layout.in_dim, out_dim=layout.out_dim, **{k: getattr(self, k) for k in FIELD_OPTIONS})


@dataclass(kw_only=True)
class LoaderOptions(OptionGroup):
    """signal (each applies to the kinds named)"""

    resize: int | None = option(None, "image/video: scale so the longer side has this many pixels, bilinear (image default: 256; 0 keeps the size)")
    crop: tuple[int, int] | None = option(None, "image/video: centred crop (of every frame) before resizing", metavar=("H", "W"))
    gray: bool | None = option(None, "image: convert to luminance", action="store_true")
    pad: int | None = option(None, "image: zero rows/columns added on every side, last (MCL-NF's CelebA: --crop 178 178 --resize 0 --pad 1)")
    start: float | None = option(None, "audio: start time in seconds")
    duration: float | None = option(None, "audio: length in seconds (default: to the end)")
    frames: int | None = option(None, "video: number of frames (default: all)")
    start_frame: int | None = option(None, "video: first frame (default: 0)")


@dataclass(kw_only=True)
class SceneOptions(OptionGroup):
    """scene (posed images: a radiance field)"""

    holdout: int | None = option(None, "scene (.npz, LLFF, transforms.json without a split): every N-th view is held out for evaluation (default: 8)")
    samples: int | None = option(None, "scene: stratified samples per ray (default: 64)")
    importance: int | None = option(None, "scene: extra samples per ray drawn from the first pass's weights (hierarchical sampling; default: 0)")
    scene_bound: float | None = option(None, "scene: half-size of the scene box around its centre, world units (default: the ball every camera sees whole)")
    direction: str | None = option(None, "scene: view direction as 2 angles (field input 5, default) or a unit vector (input 6)", choices=("angles", "vector"))
    factor: int | None = option(None, "LLFF, nerfstudio: read images_N/, the images downscaled N times (default: LLFF images/ if present, else the images_N/ of "
                                "the smallest N; nerfstudio its automatic choice, the longer side under 1600 pixels)")  # fmt: skip
    ndc: bool | None = option(None, "LLFF: render in normalized device coordinates, NeRF's for forward-facing scenes (default: on for LLFF; refused for other scenes)",
                              action=argparse.BooleanOptionalAction)  # fmt: skip


@dataclass(kw_only=True)
class OccupancyOptions(OptionGroup):
    """occupancy (meshes)"""

    points: int | None = option(None, "occupancy: training points, 1/3 uniform and 2/3 near the surface (default: 100000)")
    eval_points: int | None = option(None, "occupancy: held-out points for IoU (default: 100000)")
    resolution: int | None = option(None, "occupancy: marching-cubes grid of the reconstruction (default: 128)")

    def check(self):
        if self.resolution is not None and self.resolution < 2:
            raise MclnfError(f"--resolution {self.resolution}: must be at least 2")


@dataclass(kw_only=True)
class OptimOptions(OptionGroup):
    """optimization"""

    optimizer: str = option("adam", "optimizer (esgd, adahessian-*, shampoo, kfac: the preconditioner paper's)", choices=tuple(OPTIMIZERS))
    lr: float | None = option(None, "learning rate (default: " + ", ".join(f"{k} {default_lr(k):g}" for k in OPTIMIZERS) + "; radiance adam 1e-3)")
    steps: int = option(2000, "training steps (mini-batches)")
    batch_size: int | None = option(None, "samples (radiance: rays) per mini-batch; each epoch visits every sample once (default: 512; radiance 1024)")
    seed: int = option(0, "seed of initialization, batch order and occupancy points; same seed, same result")

    def check(self):
        check_positive_int(self, "steps", "batch_size")
        check_seed(self, "seed")
        if self.lr is not None:
            check_positive(self, "lr")


@dataclass(kw_only=True)
class RunOptions(OptionGroup):
    """run"""

    out: Path | None = option(None, "output folder (default: runs/<command>-<input>-<variant>)")
    resume: bool = option(False, "continue the run in --out from its checkpoint")
    overwrite: bool = option(False, "replace a previous run in --out (only a folder that holds an mclnf run)")
    progress: bool = option(True, "no progress bar", flag="quiet")


@dataclass(kw_only=True)
class TrackingOptions(OptionGroup):
    """logging (log.jsonl in --out, always: the training loss, learning rate, gradient and update norms, and every evaluation)"""

    log_every: int | None = option(None, "steps between logged training steps (default: every step up to 999, every 10th up to 9,999, every 100th up to 99,999, …)")
    tensorboard: bool = option(False, "also log to --out/tensorboard: the same scalars, and the reconstructions (images, audio) at every evaluation")

    def check(self):
        check_positive_int(self, "log_every")


@dataclass(kw_only=True)
class EvaluationOptions(OptionGroup):
    """evaluation"""

    eval_every: int | None = option(None, "evaluate (and checkpoint) every N steps and at the last (default: steps 1, 2, 4, 8, … and the last)")

    def check(self):
        check_positive_int(self, "eval_every")


@dataclass(kw_only=True)
class StreamOptions(OptionGroup):
    """task stream"""

    tasks: int = option(4, "number of tasks T")
    split: str | None = option(None, "image: patches (default; T strips along x) or resolution (T = s² pixel-parity sub-images); video/audio: time; mesh: space (default; T slabs along x); "
                               "scene: space (blocks of the scene box, a view goes with its camera's block) or views (default; T groups of consecutive views)",
                               choices=("patches", "resolution", "time", "space", "views"))  # fmt: skip
    grid: tuple[int, ...] | None = option(None, "patches: ROWS COLS; space: GX GY GZ (product = --tasks; the MCL-NF paper's 4 scene blocks: 2 2 1)")
    learner: str = option("cl", "ol (offline, all tasks at once), cl (fine-tuning), er (experience replay), ewc, mer (meta-experience replay), modular (one module per region), all",
                          choices=(*CONTINUAL_LEARNERS, "all"))  # fmt: skip

    def check(self):
        check_positive_int(self, "tasks")
        if self.learner != "all" and self.learner not in CONTINUAL_LEARNERS:
            raise MclnfError(f"--learner {self.learner}: unknown; choose one of {', '.join(CONTINUAL_LEARNERS)} or all")


@dataclass(kw_only=True)
class DatasetOptions(OptionGroup):
    """dataset"""

    dataset: str = option("skimage_patches", "a folder or glob pattern of images, audio clips or videos, a built-in dataset (skimage_patches: 64 × 64 patches of "
                          "scikit-image's photos; lfw_subset: its 25 × 25 faces), or one scene (cut into blocks of views)", positional=True)  # fmt: skip
    test_fraction: float = option(0.3, "share of the files kept for meta-test (seeded by --split-seed)")
    split_seed: int = option(0, "seed of the meta-train/meta-test split")
    train_list: str | None = option(None, "a text file naming the meta-train files, one per line (with --test-list)")
    test_list: str | None = option(None, "a text file naming the meta-test files, one per line")
    clip: float | None = option(None, "audio: seconds, video: frames per clip; files are cut into consecutive clips")
    block_views: int | None = option(None, "scene: views per block; the scene's training views are cut into blocks of cameras adjacent in azimuth (default: 8)")

    def check(self):
        if (self.train_list is None) != (self.test_list is None):
            raise MclnfError("--train-list and --test-list: give both or neither")
        check_seed(self, "split_seed")


@dataclass(kw_only=True)
class OuterOptions(OptionGroup):
    """outer loop"""

    outer_steps: int = option(500, "outer (meta) steps")
    meta_batch: int = option(4, "signals per outer step (all processes together)")
    outer_lr: float = option(1e-4, "Adam learning rate of θ₀ (Learned Init's 1e-5 is for ~10⁵ outer steps; CPU-scale runs take hundreds)")
    clip_grad: float = option(1.0, "meta-gradient norm clipping")
    seed: int = option(0, "seed of θ₀ and of the meta-batches")
    checkpoint_every: int = option(50, "outer steps between checkpoints")

    def check(self):
        check_positive_int(self, "outer_steps", "meta_batch", "checkpoint_every")
        check_seed(self, "seed")
        check_positive(self, "outer_lr", "clip_grad")


@dataclass(kw_only=True)
class DeviceOptions(OptionGroup):
    """device"""

    device: str = option("cpu", "cpu or cuda[:N]")

    def check(self):
        check_device(self.device)


@dataclass(kw_only=True)
class PrecisionOptions(OptionGroup):
    """precision"""

    precision: str = option("fp32", PRECISION_HELP, choices=PRECISIONS)

    def check(self):
        if self.precision is not None:  # fit's None: the kind's (resolve)
            check_precision(self.precision, getattr(self, "device", "cpu"))


# ---- the commands' configs -----------------------------------------------------------------------
@dataclass(kw_only=True)
class SignalArgument(OptionGroup):
    """signal"""

    signal: str = option(dataclasses.MISSING, "a PNG/JPEG/TIFF image, a scikit-image image name (camera, astronaut, ...), a WAV/FLAC/OGG clip, an MP4/GIF video, "
                         "an OBJ/PLY/STL/OFF mesh (occupancy) or a scene of posed images (.npz, NeRF-synthetic, nerfstudio/instant-ngp or LLFF folder: a radiance field)", positional=True)  # fmt: skip


@dataclass(kw_only=True)
class FitConfig(SignalArgument, FieldOptions, LoaderOptions, SceneOptions, OccupancyOptions, OptimOptions, DeviceOptions, PrecisionOptions, RunOptions, EvaluationOptions, TrackingOptions):
    """fit"""
    optimizer: str = option("adam", "optimizer (esgd, adahessian-*, shampoo, kfac: the preconditioner paper's; esgd-robust: ESGD with a warm-up); "
                            "auto: adam at its default rate unless measurements on held-out images show another wins (relu-pe images: adam 1e-3), says why, "
                            "and restarts with adam if that choice blows up early", choices=(*OPTIMIZERS, "auto"))  # fmt: skip
    occupancy_grid: int | None = option(None, "scene: skip the samples in empty cells of an R³ occupancy grid of the field's density, refreshed every 16 steps "
                                        "(nerfacc's; R 64 or 128 suits an object; default: off)", metavar="R")  # fmt: skip
    precision: str | None = option(None, PRECISION_HELP + " (default: bf16 for images with the sine field, no encoding, adam, where bf16 is native — cuda, or a CPU with "
                                   "AVX512-BF16 or AMX: measured −0.2 dB at the default budget, 1.6x faster steps; fp32 otherwise; --resume: the run's)", choices=PRECISIONS)  # fmt: skip
    compile: bool = option(False, "torch.compile the training step's field (about 30 s to compile; ≈15 %% faster steps at batch 4096 on CPU)")

    def check(self):
        if self.occupancy_grid is not None:
            check_resolution(self.occupancy_grid)


@dataclass(kw_only=True)
class ContinualConfig(SignalArgument, FieldOptions, LoaderOptions, SceneOptions, OccupancyOptions, OptimOptions, DeviceOptions, PrecisionOptions, RunOptions, StreamOptions, StrategyOptions,
                      EvaluationOptions, TrackingOptions):  # fmt: skip
    """continual"""

    steps: int = option(500, "training steps (mini-batches) per task")
    eval_every: int | None = option(None, "also evaluate the whole signal every N steps of a task, for the log (default: after each task only)")


@dataclass(kw_only=True)
class MetaTrainConfig(DatasetOptions, FieldOptions, LoaderOptions, SceneOptions, MetaOptions, OuterOptions, DeviceOptions, PrecisionOptions, RunOptions, TrackingOptions):
    """meta-train"""

    def check(self):
        if self.precision == "fp16":  # bf16 has float32's exponent range: no loss scaling needed
            raise MclnfError("--precision fp16: not for meta-train (the inner loop's gradients would need loss scaling too); use bf16 or fp32")


@dataclass(kw_only=True)
class MetaTestConfig(DeviceOptions, PrecisionOptions, RunOptions, TrackingOptions):
    """meta-test"""

    paths: list[str] = option(dataclasses.MISSING, "meta-train run folders (FOLDER:maml-cl scores a mol run's θ₀ as maml-cl: the two meta-train alike), then the "
                              "dataset they were meta-trained on", positional=True, metavar="RUN [RUN ...] DATASET", nargs="+")  # fmt: skip
    steps: list[int] = option([2**k for k in range(13)], "test-time steps per task at which every method is scored")
    signals: int | None = option(None, "meta-test only the first N signals (default: all)")
    test_optimizer: str | None = option(None, "meta methods' test-time optimizer (default: the inner loop's SGD)", choices=tuple(OPTIMIZERS))
    test_lr: float | None = option(None, "its learning rate (default: the inner learning rate for sgd, else the optimizer's)")
    baselines: list[str] = option(["ol", "cl", "er", "ewc", "mer"], "non-meta baselines from random initializations (modular: one module per task)",
                                  choices=tuple(CONTINUAL_LEARNERS), nargs="*")  # fmt: skip
    baselines_only: bool = option(False, "score the baselines only: the runs still define the dataset, its tasks and the field")
    baseline_optimizer: str = option("adam", "the baselines' optimizer", choices=tuple(OPTIMIZERS))
    baseline_lr: float = option(1e-4, "the baselines' learning rate")
    batch_size: int | None = option(None, "samples per test-time step (default: the whole task)")
    offline_budget: list[str] = option(["stream", "full"], "the offline references' (mol, ol) budget at s steps per task: stream (s·T steps of a task's batch on the "
                                       "whole signal: equal samples seen, T× the updates of a module) and/or full (s steps of T task batches: equal updates "
                                       "per parameter and equal samples)", choices=OFFLINE_BUDGETS, nargs="+")  # fmt: skip
    grid_steps: list[int] | None = option(None, "steps whose reconstructions are drawn (default: the first and last)")
    grid_signals: int = option(4, "signals in each reconstruction grid")
    seed: int = option(0, "seed of the baselines' initializations and batch orders")

    def check(self):
        if len(self.paths) < 2:
            raise MclnfError("meta-test: give one or more RUN folders and then the DATASET")
        bad = [b for b in self.baselines if b not in CONTINUAL_LEARNERS]
        if bad:
            raise MclnfError(f"--baselines {bad[0]}: unknown; choose from {', '.join(CONTINUAL_LEARNERS)}")
        if self.baselines_only and not self.baselines:
            raise MclnfError("--baselines-only: no --baselines to score")
        bad = [b for b in self.offline_budget if b not in OFFLINE_BUDGETS] or ([] if self.offline_budget else ["(none)"])
        if bad:
            raise MclnfError(f"--offline-budget {bad[0]}: choose one or both of {', '.join(OFFLINE_BUDGETS)}")
        if not self.steps or any(s < 1 for s in self.steps):
            raise MclnfError(f"--steps {' '.join(map(str, self.steps))}: step counts must be positive")
        if self.grid_steps is not None and not set(self.grid_steps) <= set(self.steps):
            raise MclnfError(f"--grid-steps {' '.join(map(str, self.grid_steps))}: every grid step must be one of --steps")
        check_positive_int(self, "signals", "batch_size", "grid_signals")
        check_seed(self, "seed")
        for name in ("test_lr", "baseline_lr"):
            if getattr(self, name) is not None:
                check_positive(self, name)

    @property
    def runs(self) -> list[Path]:
        return [Path(p) for p in self.paths[:-1]]

    @property
    def dataset(self) -> str:
        return self.paths[-1]


@dataclass(kw_only=True)
class BenchConfig(DeviceOptions, RunOptions, TrackingOptions):
    """cl-bench"""

    bench: str = option(dataclasses.MISSING, "the benchmark", positional=True, choices=tuple(BENCHMARKS))
    methods: list[str] = option(["all"], "methods to run, or all", flag="method", choices=(*ONLINE_LEARNERS, "all"), nargs="+")
    seeds: int = option(3, "seeds 0 … S−1 (the stream and the model depend on the seed)")
    data: str | None = option(None, "the dataset's folder (MNIST: default ../shared/data/mnist or $MCLNF_DATA/mnist; CIFAR-100: cifar-100-python; miniImageNet: the mini-imagenet-cache-*.pkl folder)")
    tasks: int | None = option(None, "only the first T tasks of the stream (stated in the output)")
    overrides: dict = dataclasses.field(default_factory=dict)  # LearnerOptions set by the user, for every method (BenchOverrides on the CLI)

    def check(self):
        check_positive_int(self, "seeds", "tasks")
        if self.bench not in BENCHMARKS:
            raise MclnfError(f"{self.bench}: unknown benchmark; choose from {', '.join(BENCHMARKS)}")
        for m in self.methods:
            if m != "all" and m not in ONLINE_LEARNERS:
                raise MclnfError(f"--method {m}: unknown; choose from {', '.join(ONLINE_LEARNERS)} or all")
        known = {f.name for f in dataclasses.fields(LearnerOptions)}
        for name in self.overrides:
            if name not in known:
                raise MclnfError(f"{flag_name(name)}: not an option of the online learners")


@dataclass(kw_only=True)
class BenchOverrides(StrategyOptions, OnlineOptions):
    """overrides (default: the benchmark's, docs/cl-bench.md; an option given applies to every method)"""

    lr: float | None = option(None, "SGD learning rate (sgd, er, ewc, gem, agem, mer; default 0.03)")


@dataclass(kw_only=True)
class FolderArgument(OptionGroup):
    """signals"""

    folder: str = option(dataclasses.MISSING, "a folder of signals of one kind and, after the loader options, one size: images (PNG/JPEG/TIFF), "
                         "audio clips (WAV/FLAC/OGG) or videos (MP4/GIF); its subfolders are not read", positional=True)  # fmt: skip


@dataclass(kw_only=True)
class FitManyConfig(FolderArgument, FieldOptions, LoaderOptions, OptimOptions, DeviceOptions, PrecisionOptions, RunOptions):
    """fit-many"""

    optimizer: str = option("adam", "optimizer; element-wise ones only: over the stacked parameters one is exactly one per field", choices=STACKABLE)
    precision: str | None = option(None, "arithmetic of the training steps, as mclnf fit's --precision (default: mclnf fit's for the folder's kind and field)",
                                   choices=PRECISIONS)  # fmt: skip
    signals_per_batch: int | None = option(None, "fields stacked into one training step (torch.func.vmap) (default: as many as memory takes; "
                                           "on the CPU no more than keep a layer's activations of the stack within 4 MiB)")  # fmt: skip

    def check(self):
        check_positive_int(self, "signals_per_batch")


# ---- kind defaults -------------------------------------------------------------------------------
def resolve_field(cfg, kind: str):
    """``cfg`` with unset field options (and batch size, if it has one) at the kind's defaults, after
    checking that every field option given applies to the activation."""
    d = {**DEFAULTS, **KIND_DEFAULTS.get(kind, {}), **ENCODING_DEFAULTS.get(cfg.encoding, {})}
    cfg = dataclasses.replace(cfg, **{k: d[k] for k in ("activation", "width", "depth", "batch_size") if hasattr(cfg, k) and getattr(cfg, k) is None})
    if cfg.encoding != "hashgrid":
        for name in HASH_OPTIONS:
            if getattr(cfg, name) is not None:
                raise MclnfError(f"{flag_name(name)}: applies to --encoding hashgrid only")
    own = set(ACTIVATION_OPTIONS[cfg.activation])
    for name in sorted({o for opts in ACTIVATION_OPTIONS.values() for o in opts} - own):
        if getattr(cfg, name) is not None:
            raise MclnfError(f"{flag_name(name)}: does not apply to --activation {cfg.activation}")
    return dataclasses.replace(cfg, **{k: v for k, v in d.items() if k in own and getattr(cfg, k) is None})


def resolve(cfg, kind: str):
    """A fit or continual config with the kind's defaults filled in and every option checked against the kind."""
    cfg = resolve_field(cfg, kind)
    for name in {o for opts in SIGNAL_OPTIONS.values() for o in opts} - set(SIGNAL_OPTIONS[kind]):
        if getattr(cfg, name) not in (None, False):
            raise MclnfError(f"{flag_name(name)}: does not apply to {kind} signals ({cfg.signal})")
    if getattr(cfg, "occupancy_grid", None) is not None and kind != "radiance":
        raise MclnfError(f"--occupancy-grid: does not apply to {kind} signals ({cfg.signal})")
    cfg = dataclasses.replace(cfg, **{k: v for k, v in KIND_DEFAULTS.get(kind, {}).items() if k in SIGNAL_OPTIONS[kind] and getattr(cfg, k) is None})
    if cfg.optimizer == "auto":
        name, lr, _ = choose_optimizer(kind, cfg.activation)
        lr = ENCODING_LR.get((cfg.encoding, name), lr)  # a hash grid's tables want instant-ngp's rate whatever the head
        cfg = dataclasses.replace(cfg, optimizer=name, lr=lr if cfg.lr is None else cfg.lr)
    if cfg.encoding == "hashgrid" and cfg.optimizer == "shampoo":  # its preconditioner of the (F, Σ T_l) table is (Σ T_l)²: terabytes
        raise MclnfError("--optimizer shampoo: does not fit --encoding hashgrid (a Kronecker factor per table dimension: (entries)² numbers)")
    if cfg.lr is None:  # explicit, so that --resume --lr <the default> is the same run
        cfg = dataclasses.replace(cfg, lr=ENCODING_LR.get((cfg.encoding, cfg.optimizer), KIND_LR.get((kind, cfg.optimizer), default_lr(cfg.optimizer))))
    if getattr(cfg, "precision", "fp32") is None:  # fit's: the measured default (PRECISION_DEFAULTS)
        cfg = dataclasses.replace(cfg, precision=default_precision(kind, cfg))
    return cfg


def default_precision(kind: str, cfg) -> str:
    """``mclnf fit``'s precision for a ``kind`` signal when ``--precision`` is not given: :data:`PRECISION_DEFAULTS` for fields
    without an encoding, on a CPU that multiplies bfloat16 natively (:func:`~mclnf.runtime.native_bf16`); else fp32. On
    CUDA fp32: a step at fit's batch sizes is launch-bound there, and autocast's casts made the 5 × 256 sine step slower
    on an H200 (bf16 0.71–0.83× fp32's speed at batch 4096, 1.11–1.25× only at 65,536; benchmarks/gpu_check.py, docs/gpu.md)."""
    name = PRECISION_DEFAULTS.get((kind, cfg.activation, cfg.optimizer), "fp32") if cfg.encoding == "none" else "fp32"
    return name if name == "fp32" or (cfg.device.startswith("cpu") and native_bf16("cpu")) else "fp32"


def resolve_meta(cfg: MetaTrainConfig, kind: str) -> MetaTrainConfig:
    """A meta-train config with the kind's field defaults (sine's first ω₀ for audio) and scenes' task batch."""
    cfg = resolve_field(cfg, kind)
    if cfg.task_batch is None and kind in META_TASK_BATCH:
        cfg = dataclasses.replace(cfg, task_batch=META_TASK_BATCH[kind])
    return cfg


def loader_options(cfg, kind: str | None = None) -> dict:
    """The loader options ``cfg`` sets (those of ``kind`` only, when given), as keyword arguments of :func:`mclnf.signals.load_signal`."""
    names = SIGNAL_OPTIONS[kind] if kind else [f.name for f in dataclasses.fields(LoaderOptions) + dataclasses.fields(SceneOptions)]
    return {k: getattr(cfg, k) for k in names if k != "resolution" and getattr(cfg, k, None) is not None}  # None: unset


def load_configured_signal(cfg) -> Signal:
    """The signal ``cfg.signal`` loaded with the options of its kind that ``cfg`` sets (occupancy points seeded by ``cfg.seed``)."""
    kind = signal_kind(cfg.signal)
    signal = load_signal(cfg.signal, **loader_options(cfg, kind) | ({"seed": cfg.seed} if kind == "occupancy" else {}))
    if cfg.resolution is not None:
        signal.layout = dataclasses.replace(signal.layout, resolution=cfg.resolution)
    return signal


def learner_options(cfg, **changes) -> LearnerOptions:
    """The :class:`LearnerOptions` part of a config (with ``changes``)."""
    names = {f.name for f in dataclasses.fields(LearnerOptions)}
    return LearnerOptions(**{**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)}, **changes})

