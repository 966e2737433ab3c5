"""``mclnf <command>``: options → config dataclass → runner. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mclnf.continual.learners import LEARNERS
from mclnf.errors import DivergedError, MclnfError
from mclnf.fields import ACTIVATIONS
from mclnf.optim import OPTIMIZERS, default_lr
from mclnf.runtime import flush_denormals, keep_freed_memory


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def add_fit(sub) -> None:
    p = sub.add_parser(
        "fit", formatter_class=Help, help="fit a field to one signal and write every output",
        description="Fit a neural field to an image, audio clip, video or mesh and write metrics.json, the "
        "reconstruction (PNG/WAV/MP4/PLY), curve.png, field.safetensors and checkpoint.pt to --out.",
        epilog="examples:\n  mclnf fit camera --steps 5000 --out runs/camera\n"
        "  mclnf fit ../shared/data/audio/gt_counting.wav\n  mclnf fit bikes.mp4 --frames 16 --resize 256\n"
        "  mclnf fit bunny.obj --activation gaussian --sigma 0.09\n  mclnf fit ../shared/data/nerf/lego_100.npz --optimizer esgd",
    )  # fmt: skip
    add_signal_field_options(p, "fit", auto=True)
    p.set_defaults(steps=2000)


def add_continual(sub) -> None:
    from mclnf.continual.learners import LearnerOptions

    d = LearnerOptions()
    p = sub.add_parser(
        "continual", formatter_class=Help, help="learn a signal that arrives as a sequence of tasks",
        description="Split a signal into --tasks tasks (image strips or pixel-parity sub-images, video chunks, "
        "audio segments, mesh blocks), learn them one after another with --learner, and write metrics.json "
        "(R[i][j] = quality on task j after task i, final quality, BWT), the reconstruction after every task, "
        "matrix.png and checkpoint.pt (after every task; --resume continues). --learner all runs every learner "
        "on the same stream into OUT/<learner> and writes comparison.md and comparison.png.",
        epilog="examples:\n  mclnf continual ../shared/data/celeba_align/000001.jpg --crop 178 178 --resize 0 --pad 1 --learner all\n"
        "  mclnf continual ../shared/data/video/bikes.mp4 --frames 16 --resize 128 --learner modular\n"
        "  mclnf continual camera --split resolution --learner er --buffer-size 8192\n"
        "  mclnf continual ../shared/data/nerf/lego_100.npz --grid 2 2 1 --learner modular",
    )  # fmt: skip
    add_signal_field_options(p, "continual", auto=False)
    g = p.add_argument_group("task stream and learner")
    g.add_argument("--tasks", type=positive_int, default=4, help="number of tasks T")
    g.add_argument("--split", choices=("patches", "resolution", "time", "space", "views"), help="image: patches (default; T strips along x) or resolution (T = s² pixel-parity sub-images); video/audio: time; mesh: space (default T slabs along x); scene: space (blocks of the scene box, a view goes with its camera's block; default T slabs along x) or views (T groups of consecutive views)")
    g.add_argument("--grid", type=positive_int, nargs="+", help="patches: ROWS COLS; space: GX GY GZ (product = --tasks; the MCL-NF paper's 4 scene blocks: 2 2 1)")
    g.add_argument("--learner", choices=(*LEARNERS, "all"), default="cl", help="ol (offline, all tasks at once), cl (fine-tuning), er (experience replay), ewc, mer (meta-experience replay), modular (one module per region), all")
    g.add_argument("--buffer-size", type=positive_int, default=d.buffer_size, help="er, mer: reservoir buffer size (samples)")
    g.add_argument("--replay-batch", type=positive_int, help="er, mer: replayed samples added to each batch (default: --batch-size)")
    g.add_argument("--ewc-lambda", type=float, default=d.ewc_lambda, help="ewc: penalty strength λ (1: each old task's loss by its diagonal quadratic model)")
    g.add_argument("--fisher-samples", type=positive_int, default=d.fisher_samples, help="ewc: samples per task the Fisher is averaged over")
    g.add_argument("--mer-steps", type=positive_int, default=d.mer_steps, help="mer: pieces each batch is learned in, one step each")
    g.add_argument("--mer-beta", type=float, default=d.mer_beta, help="mer: within-batch Reptile step β")
    g.add_argument("--mer-batches", type=positive_int, default=d.mer_batches, help="mer: batches per across-batch Reptile step")
    g.add_argument("--mer-gamma", type=float, default=d.mer_gamma, help="mer: across-batch Reptile step γ")
    g.add_argument("--modules", type=positive_int, help="modular: number of modules K (default: one per task); K regions of the same split")
    g.add_argument("--module-width", type=positive_int, help="modular: hidden units of each module (default: --width / √K, so K modules hold about one field's parameters)")
    p.set_defaults(steps=500)


def add_meta_train(sub) -> None:
    from mclnf.meta.methods import META_GRADS, METHODS, MetaOptions
    from mclnf.meta.train import MetaTrainConfig

    d, o = MetaTrainConfig(), MetaOptions()
    p = sub.add_parser(
        "meta-train", formatter_class=Help, help="meta-learn a field initialization on a dataset of signals",
        description="Meta-learn the initialization θ₀ of a field on the meta-train part of DATASET (a folder, a glob pattern, "
        "or lfw_subset: scikit-image's 200 faces) with --method, and write init.safetensors, checkpoint.pt (every "
        "--checkpoint-every outer steps; --resume continues exactly), meta_train.json and meta_train.png to --out. "
        "Under torchrun --nproc_per_node=N the meta-batch is split across the processes.",
        epilog="examples:\n  mclnf meta-train lfw_subset --method mcl-nf --out runs/lfw-mcl-nf\n"
        "  mclnf meta-train '../shared/data/celeba_align/*.jpg' --crop 178 178 --resize 64 --method mcl-nf-fim --meta-grad emcl\n"
        "  mclnf meta-train ../shared/data/librispeech --clip 0.5 --method mol\n"
        "  mclnf meta-train ../shared/data/nerf/lego_100.npz --resize 32 --samples 32 --tasks 2 --method mcl-nf --meta-grad emcl\n"
        "  torchrun --nproc_per_node=2 -m mclnf meta-train lfw_subset --meta-batch 8",
    )  # fmt: skip
    p.add_argument("dataset", nargs="?", default=d.dataset, help="a folder or glob pattern of images, audio clips or videos, lfw_subset, or one scene (cut into blocks of views)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/meta-<dataset>-<method>)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, default=o.method, help="mol (MAML on whole signals), maml-cl, oml, mcl-nf (modules from one meta-learned init), mcl-nf-fim (with the FIM loss)")
    g.add_argument("--meta-grad", choices=META_GRADS, default=o.meta_grad, help="second-order (MAML), first-order (FOMAML) or emcl (closed form λH²(θ₀ − θ_k), no second-order graph)")
    g.add_argument("--tasks", type=positive_int, default=o.tasks, help="tasks T each signal is split into (image: T strips; audio/video: T segments)")
    g.add_argument("--split", choices=("patches", "resolution", "time", "views"), help="the task split (default: the kind's; scene blocks: views)")
    g.add_argument("--inner-steps", type=positive_int, default=o.inner_steps, help="inner SGD steps k per task")
    g.add_argument("--inner-lr", type=float, default=o.inner_lr, help="inner SGD learning rate α")
    g.add_argument("--fim-lambda", type=float, default=o.fim_lambda, help="mcl-nf-fim: λ in w = 1 + λ gᵀF⁻¹g / P (mean weight 1 + λ)")
    g.add_argument("--fisher", choices=("kfac-diag", "diagonal"), default=o.fisher, help="mcl-nf-fim: F per layer, diag(E[δ²]) ⊗ diag(E[a²]) or the exact diagonal")
    g.add_argument("--emcl-lambda", type=float, default=o.emcl_lambda, help="emcl: strength λ of the proximal pull towards θ₀")
    g.add_argument("--emcl-beta", type=float, default=o.emcl_beta, help="emcl: moving-average rate of the importance h")
    g.add_argument("--oml-fast-layers", type=positive_int, default=o.oml_fast_layers, help="oml: top layers adapted in the inner loop")
    g.add_argument("--task-batch", type=positive_int, help="samples of each task per outer step, drawn afresh each step (default: all; scenes: rays)")
    g = p.add_argument_group("outer loop")
    g.add_argument("--outer-steps", type=positive_int, default=d.outer_steps, help="outer (meta) steps")
    g.add_argument("--meta-batch", type=positive_int, default=d.meta_batch, help="signals per outer step (all processes together)")
    g.add_argument("--outer-lr", type=float, default=d.outer_lr, help="Adam learning rate of θ₀")
    g.add_argument("--clip-grad", type=float, default=d.clip_grad, help="meta-gradient norm clipping")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of θ₀ and of the meta-batches")
    g.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every, help="outer steps between checkpoints")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    add_dataset_options(p)
    add_field_options(p, " (mcl-nf modules: width / √T)", kind_defaults=True)
    g = p.add_argument_group("run")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (--outer-steps may grow)")
    g.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def add_dataset_options(p) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--test-fraction", type=float, default=0.3, help="share of the files kept for meta-test (seeded by --split-seed)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the meta-train/meta-test split")
    g.add_argument("--train-list", help="a text file naming the meta-train files, one per line (with --test-list)")
    g.add_argument("--test-list", help="a text file naming the meta-test files, one per line")
    g.add_argument("--clip", type=float, help="audio: seconds, video: frames per clip; files are cut into consecutive clips")
    g.add_argument("--block-views", type=positive_int, help="scene: views per block; the scene's training views are cut into blocks of cameras adjacent in azimuth (default 8)")
    add_loader_options(g)
    add_scene_options(g)


def add_loader_options(g) -> None:
    """How image, audio and video files are read (``fit``, ``continual``, ``meta-train``)."""
    g.add_argument("--resize", type=int, help="image/video: scale so the longer side has this many pixels, bilinear (fit's image default 256; 0 keeps the size)")
    g.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="image: centred crop before resizing")
    g.add_argument("--gray", action="store_true", default=None, help="image: convert to luminance")
    g.add_argument("--pad", type=int, help="image: zero rows/columns added on every side, last (MCL-NF's CelebA: --crop 178 178 --resize 0 --pad 1)")
    g.add_argument("--start", type=float, help="audio: start time in seconds")
    g.add_argument("--duration", type=float, help="audio: length in seconds (default: to the end)")
    g.add_argument("--frames", type=int, help="video: number of frames (default: all)")
    g.add_argument("--start-frame", type=int, help="video: first frame (default 0)")


def add_scene_options(g) -> None:
    """How a scene of posed images is read and rendered (``fit``, ``continual``, ``meta-train``)."""
    g.add_argument("--holdout", type=int, help="scene (.npz, LLFF): every N-th view is held out for evaluation (default 8)")
    g.add_argument("--samples", type=int, help="scene: stratified samples per ray (default 64)")
    g.add_argument("--importance", type=int, help="scene: extra samples per ray drawn from the first pass's weights (hierarchical sampling; default 0)")
    g.add_argument("--scene-bound", type=float, help="scene: half-size of the scene box around its centre, world units (default: the box holding every sample of every training ray; NeRF-synthetic objects: 1.5)")
    g.add_argument("--direction", choices=("angles", "vector"), help="scene: view direction as 2 angles (field input 5, default) or a unit vector (input 6)")


def add_field_options(p, width_note: str = "", kind_defaults: bool = False) -> None:
    """The field's options; with ``kind_defaults`` (fit, continual) the unset ones take the signal kind's defaults."""
    g = p.add_argument_group("field")
    kinds = lambda default, radiance: dict(help_=f" (default {default}; radiance {radiance})", default=None) if kind_defaults else dict(help_="", default=default)  # noqa: E731
    a, w, d = kinds("sine", "relu-pe; gaussian σ 0.1"), kinds(256, 128), kinds(5, 4)
    g.add_argument("--activation", choices=ACTIVATIONS, default=a["default"], help="sine (SIREN), gaussian, wavelet (real Gabor, WIRE), relu, relu-pe (ReLU with positional encoding)" + a["help_"])
    g.add_argument("--width", type=positive_int, default=w["default"], help="hidden units per layer" + width_note + w["help_"])
    g.add_argument("--depth", type=positive_int, default=d["default"], help="number of linear layers (5 × 256 from 2 to 3: 198,915 parameters)" + d["help_"])
    g.add_argument("--omega0", type=float, help="sine/wavelet frequency ω₀ (default: sine 30, wavelet 10)")
    g.add_argument("--first-omega0", type=float, help="sine: ω₀ of the first layer (default: ω₀; audio 3000 as SIREN)")
    g.add_argument("--sigma", type=float, help="gaussian: width σ (default 0.05)")
    g.add_argument("--s0", type=float, help="wavelet: window scale s₀ (default 10)")
    g.add_argument("--pe-frequencies", type=positive_int, help="relu-pe: number of frequencies L (default 8)")


def add_meta_test(sub) -> None:
    from mclnf.meta.test import BASELINE_CHOICES, BASELINES

    p = sub.add_parser(
        "meta-test", formatter_class=Help, help="test-time optimization from meta-learned initializations, against baselines",
        description="Adapt every meta-test signal of DATASET (the split each RUN was meta-trained beside) as a task stream, "
        "from each RUN's initialization and with the baselines from random ones, for every step count of --steps; write "
        "table.md (Step 1 / Best / Final), compute.md (parameters, peak memory, episodes/s), psnr_vs_step.png, "
        "reconstruction grids and metrics.json.",
        epilog="examples:\n  mclnf meta-test runs/lfw-mcl-nf lfw_subset\n"
        "  mclnf meta-test runs/mcl-nf runs/mol runs/oml lfw_subset --steps 1 2 4 8 16 --out runs/table1",
    )  # fmt: skip
    p.add_argument("paths", nargs="+", metavar="RUN [RUN ...] DATASET", help="meta-train run folders, then the dataset they were meta-trained on")
    p.add_argument("--out", type=Path, help="output folder (default: the first RUN/meta-test)")
    p.add_argument("--steps", type=positive_int, nargs="+", default=[2**k for k in range(13)], help="test-time steps per task at which every method is scored")
    p.add_argument("--signals", type=positive_int, help="meta-test only the first N signals (default: all)")
    p.add_argument("--test-optimizer", choices=list(OPTIMIZERS), help="meta methods' test-time optimizer (default: the inner loop's SGD)")
    p.add_argument("--test-lr", type=float, help="its learning rate (default: the inner learning rate for sgd, else the optimizer's)")
    p.add_argument("--baselines", nargs="*", choices=BASELINE_CHOICES, default=list(BASELINES), help="non-meta baselines from random initializations (modular: one module per task)")
    p.add_argument("--baseline-optimizer", choices=list(OPTIMIZERS), default="adam", help="the baselines' optimizer")
    p.add_argument("--baseline-lr", type=float, default=1e-4, help="the baselines' learning rate")
    p.add_argument("--batch-size", type=positive_int, help="samples per test-time step (default: the whole task)")
    p.add_argument("--grid-steps", type=positive_int, nargs="+", help="steps whose reconstructions are drawn (default: the first and last)")
    p.add_argument("--grid-signals", type=positive_int, default=4, help="signals in each reconstruction grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines' initializations and batch orders")
    p.add_argument("--overwrite", action="store_true", help="replace a previous meta-test in --out")
    p.add_argument("--quiet", action="store_true", help="no per-signal progress")


def run_meta_train(a: argparse.Namespace) -> None:
    from mclnf.meta.methods import MetaOptions
    from mclnf.meta.train import MetaTrainConfig, meta_train

    own = {f.name for f in dataclasses.fields(MetaOptions)} - {"vmap"}
    opts = MetaOptions(**{k: v for k, v in vars(a).items() if k in own})
    rest = {k: v for k, v in vars(a).items() if k not in ("command", "quiet", *own)}
    rest["crop"] = None if rest["crop"] is None else tuple(rest["crop"])
    r = meta_train(MetaTrainConfig(**rest, options=opts, progress=not a.quiet))
    if r is not None:
        print(f"{r['method']} ({r['meta_grad']}): {r['params']:,} parameters, {r['outer_steps']} outer steps on {r['signals']['train']} signals "
              f"in {r['train_s']:.1f} s, loss after adaptation {r['final_loss']:.4g}")  # fmt: skip
        print(f"outputs in {r['config']['out']}")


def run_meta_test(a: argparse.Namespace) -> None:
    from mclnf.meta.test import MetaTestConfig, compute_table, meta_test, table1

    if len(a.paths) < 2:
        raise MclnfError("meta-test: give one or more RUN folders and then the DATASET")
    opts = {k: v for k, v in vars(a).items() if k not in ("command", "quiet", "paths")}
    records = meta_test(MetaTestConfig(runs=[Path(p) for p in a.paths[:-1]], dataset=a.paths[-1], **opts, progress=not a.quiet))
    metrics = list(records[0]["summary"])
    print(table1(records, metrics[:1]), end="")
    print(compute_table(records, metrics[0]), end="")
    print(f"outputs in {a.out or Path(a.paths[0]) / 'meta-test'}")


def add_signal_field_options(p, command: str, auto: bool) -> None:
    """The options ``fit`` and ``continual`` share: the signal, the field, the optimizer, the run."""
    p.add_argument("signal", help="a PNG/JPEG/TIFF image, a scikit-image image name (camera, astronaut, ...), a WAV/FLAC/OGG clip, an MP4/GIF video, an OBJ/PLY/STL/OFF mesh (occupancy) or a scene of posed images (.npz, NeRF-synthetic or LLFF folder: a radiance field)")
    p.add_argument("--out", type=Path, help=f"output folder (default: runs/{command}-<signal>-<{'activation' if command == 'fit' else 'learner'}>)")
    add_field_options(p, kind_defaults=True)
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=[*OPTIMIZERS, "auto"] if auto else list(OPTIMIZERS), default="adam",
                   help="optimizer (esgd, adahessian-*, shampoo, kfac: the preconditioner paper's)" + ("; auto picks by the study's evidence and says why" if auto else ""))
    g.add_argument("--lr", type=float, help="learning rate (default: " + ", ".join(f"{k} {default_lr(k):g}" for k in OPTIMIZERS) + ")")
    g.add_argument("--steps", type=int, help="training steps (mini-batches)" + (" per task" if command == "continual" else ""))
    g.add_argument("--batch-size", type=int, help="samples (radiance: rays) per mini-batch; each epoch visits every sample once (default 512; radiance 1024)")
    g.add_argument("--seed", type=int, default=0, help="seed of initialization, batch order and occupancy points; same seed, same result")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    if command == "fit":
        g.add_argument("--compile", action="store_true", help="torch.compile the training step's field (about 30 s to compile; ≈15 %% faster steps at batch 4096 on CPU)")
    g = p.add_argument_group("signal (each applies to the kinds named)")
    add_loader_options(g)
    g.add_argument("--points", type=int, help="occupancy: training points, 1/3 uniform and 2/3 near the surface (default 100000)")
    g.add_argument("--eval-points", type=int, help="occupancy: held-out points for IoU (default 100000)")
    g.add_argument("--resolution", type=int, help="occupancy: marching-cubes grid of the reconstruction (default 128)")
    add_scene_options(g)
    g = p.add_argument_group("run")
    if command == "fit":
        g.add_argument("--tensorboard", action="store_true", help="also log to --out/tensorboard")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint" + (" (--steps may grow)" if command == "fit" else " (after its last finished task)"))
    g.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def add_render(sub) -> None:
    p = sub.add_parser(
        "render", formatter_class=Help, help="re-create the reconstruction from a run's field.safetensors",
        description="Evaluate a saved field and write the signal in its own form (PNG, WAV, MP4 or PLY).",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="a run folder (or its field.safetensors)")
    p.add_argument("--out", type=Path, help="output file (default: RUN/render.<png|wav|mp4|ply>)")
    p.add_argument("--resolution", type=int, help="occupancy: marching-cubes grid (default: the run's)")


def run_fit(a: argparse.Namespace) -> None:
    from mclnf.fit import FitConfig, fit

    options = {k: v for k, v in vars(a).items() if k not in ("command", "quiet")}
    if options["crop"] is not None:
        options["crop"] = tuple(options["crop"])
    record = fit(FitConfig(**options, progress=not a.quiet))
    final = "  ".join(f"{k} {v:.4g}" for k, v in record["final"].items() if isinstance(v, float))
    print(f"{record['signal']}: {record['kind']}, {record['params']:,} parameters, {record['steps']} steps in {record['wall_time_s']:.1f} s  →  {final}")
    print(f"outputs in {record['config']['out']}")


def run_continual(a: argparse.Namespace) -> None:
    from mclnf.continual.learners import LearnerOptions
    from mclnf.continual.run import ContinualConfig, comparison_table, continual

    own = {f.name for f in dataclasses.fields(LearnerOptions)} - {"optimizer", "lr", "batch_size", "seed"}  # those four are the run's
    options = {k: v for k, v in vars(a).items() if k not in ("command", "quiet", *own)}
    opts = LearnerOptions(**{k: v for k, v in vars(a).items() if k in own})
    options["crop"] = None if options["crop"] is None else tuple(options["crop"])
    options["grid"] = None if options["grid"] is None else tuple(options["grid"])
    records = continual(ContinualConfig(**options, options=opts, progress=not a.quiet))
    print(comparison_table(records), end="")
    print(f"outputs in {Path(records[0]['config']['out']).parent if a.learner == 'all' else records[0]['config']['out']}")


def run_render(a: argparse.Namespace) -> None:
    import dataclasses
    from functools import partial

    from mclnf.checkpoint import load_field
    from mclnf.fit import write_reconstruction

    field, layout = load_field(a.run)
    if a.resolution is not None:
        if not hasattr(layout, "resolution"):
            raise MclnfError(f"--resolution: does not apply to {layout.kind} fields")
        layout = dataclasses.replace(layout, resolution=a.resolution)
    run_dir = a.run if a.run.is_dir() else a.run.parent
    if a.out is not None:
        if a.out.suffix.lower() != layout.suffix:
            raise MclnfError(f"--out {a.out}: a {layout.kind} field renders to {layout.suffix}, not {a.out.suffix or '(no suffix)'}")
        if not a.out.parent.is_dir():
            raise MclnfError(f"--out {a.out}: no such folder {a.out.parent}")
    print(write_reconstruction(partial(layout.observe, field), layout, a.out or run_dir / f"render{layout.suffix}"))


def add_cl_bench(sub) -> None:
    from mclnf.clbench.data import BENCHMARKS
    from mclnf.clbench.learners import ONLINE_LEARNERS

    p = sub.add_parser(
        "cl-bench", formatter_class=Help, help="online continual classification benchmarks (EMCL's Table III)",
        description="Learn a benchmark's tasks once, in order (batches of 10, each for --glances steps), with every "
        "--method over --seeds seeds; write table.md (ACC and BWT ÷ T−1, mean ± std, training time, the ratios "
        "of EMCL's time to La-MAML's and MER's), time.png (Fig. 2), matrix_<method>.png (mean accuracy matrix), "
        "runs/<method>-seed<k>.json and metrics.json. Options left out take the benchmark's defaults "
        "(EMCL's Table II, La-MAML's released settings; docs/cl-bench.md); an option given applies to every method.",
        epilog="examples:\n  mclnf cl-bench mnist-permutations --method all --seeds 3\n"
        "  mclnf cl-bench mnist-permutations --method emcl --emcl-no-pgd --out runs/emcl-no-pgd\n"
        "  mclnf cl-bench split-cifar100 --data ~/data/cifar-100-python --method er emcl",
    )  # fmt: skip
    p.add_argument("bench", choices=BENCHMARKS, help="the benchmark")
    p.add_argument("--method", nargs="+", choices=(*ONLINE_LEARNERS, "all"), default=["all"], dest="methods", help="methods to run, or all")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0 … S−1 (the stream and the model depend on the seed)")
    p.add_argument("--data", help="the dataset's folder (MNIST: default ../shared/data/mnist or $MCLNF_DATA/mnist; CIFAR-100: cifar-100-python; miniImageNet: the mini-imagenet-cache-*.pkl folder)")
    p.add_argument("--tasks", type=positive_int, help="only the first T tasks of the stream (stated in the output)")
    p.add_argument("--out", type=Path, help="output folder (default runs/cl-bench-BENCH)")
    p.add_argument("--resume", action="store_true", help="skip the (method, seed) runs already in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("overrides (default: the benchmark's)")
    for name, kind, text in (
        ("lr", float, "SGD learning rate (sgd, er, ewc, gem, agem, mer; default 0.03)"), ("glances", int, "steps per incoming batch"),
        ("buffer-size", int, "memory size (samples; gem/agem: divided among the tasks)"), ("replay-batch", int, "replayed samples per step (default 10)"),
        ("ewc-lambda", float, "ewc: λ (default 100)"), ("memory-strength", float, "gem: margin (default 0.5)"),
        ("mer-beta", float, "mer: within-batch β (default 0.03)"), ("mer-gamma", float, "mer: across-batch γ (default 1)"), ("mer-batches", int, "mer: batches per example (default 5)"),
        ("lamaml-alpha", float, "lamaml: initial learning rates α"), ("lamaml-lr", float, "lamaml: learning rate of α"), ("clip", float, "lamaml: gradient clamp and norm clip"),
        ("emcl-lr", float, "emcl: meta learning rate α₀"), ("emcl-inner-lr", float, "emcl: inner learning rate β"), ("emcl-lambda", float, "emcl: λ"),
        ("emcl-gamma", float, "emcl: proximal step γ"), ("emcl-eta", float, "emcl: importance moving-average rate η (default 0.9)"), ("emcl-r", float, "emcl: r of the meta rates α₀ r / ĥ (default 1)"),
    ):  # fmt: skip
        g.add_argument(f"--{name}", type=positive_int if kind is int else kind, help=text)
    g.add_argument("--lamaml-second-order", action=argparse.BooleanOptionalAction, help="lamaml: differentiate through the inner steps (default: MNIST no, CIFAR/miniImageNet yes)")
    g.add_argument("--emcl-no-pgd", dest="emcl_pgd", action="store_const", const=False, help="emcl ablation: a plain gradient step on the regularized inner loss")
    g.add_argument("--emcl-no-reg", dest="emcl_reg", action="store_const", const=False, help="emcl ablation: no inner pull towards θ₀, the inner rate modulated by importance instead")
    g.add_argument("--emcl-importance", choices=("taylor", "si"), help="emcl: importance |g ⊙ θ₀| (taylor, default) or |g ⊙ Δθ₀| (si, the EMCL-SI ablation)")


def run_cl_bench(a: argparse.Namespace) -> None:
    from mclnf.clbench.run import BenchConfig, cl_bench

    own = ("bench", "seeds", "data", "tasks", "out", "resume", "overwrite")
    overrides = {k: v for k, v in vars(a).items() if k not in (*own, "methods", "command", "quiet") and v is not None}
    cl_bench(BenchConfig(**{k: getattr(a, k) for k in own}, methods=tuple(a.methods), overrides=overrides, progress=not a.quiet))
    print(f"outputs in {a.out or Path('runs') / f'cl-bench-{a.bench}'}")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="mclnf", description="Learn neural fields fast and continually.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_fit(sub)
    add_continual(sub)
    add_render(sub)
    add_meta_train(sub)
    add_meta_test(sub)
    add_cl_bench(sub)
    a = parser.parse_args(argv)
    keep_freed_memory()
    flush_denormals()
    try:
        {"fit": run_fit, "continual": run_continual, "render": run_render, "meta-train": run_meta_train, "meta-test": run_meta_test, "cl-bench": run_cl_bench}[a.command](a)
    except MclnfError as e:
        print(f"mclnf {a.command}: error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:
        print(f"mclnf {a.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mclnf {a.command}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
