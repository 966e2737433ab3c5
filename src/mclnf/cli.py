"""``mclnf <command>``: argparse generated from each command's config (:mod:`mclnf.config`), then the command.
``--config FILE`` (YAML, TOML or JSON) sets options as defaults that flags on the command line override.
User errors print one line and exit 2; a diverged run prints its message and exits 1."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mclnf.commands import cl_bench, continual, export, fit, fit_many, meta_test, meta_train, render
from mclnf.config import BenchConfig, BenchOverrides, ContinualConfig, FitConfig, FitManyConfig, MetaTestConfig, MetaTrainConfig
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.tables import comparison_table
from mclnf.options import add_options, from_args, read_options
from mclnf.runtime import flush_denormals, keep_freed_memory


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """A metavar that spells out its own repetition (``RUN [RUN ...] DATASET``) is shown as it is."""

    def _format_args(self, action, default_metavar):
        if isinstance(action.metavar, str) and " " in action.metavar:
            return action.metavar
        return super()._format_args(action, default_metavar)


@dataclass
class Command:
    config: type
    help: str
    description: str
    examples: tuple[str, ...]
    run: Callable[[argparse.Namespace], str]  # the namespace → what to print at the end
    exclude: tuple[str, ...] = ()


def run_fit(a) -> str:
    return fit.summary(fit.fit(from_args(FitConfig, a)))


def run_fit_many(a) -> str:
    record = fit_many.fit_many(from_args(FitManyConfig, a))
    return "" if record is None else fit_many.summary(record)


def run_continual(a) -> str:
    records = continual.continual(from_args(ContinualConfig, a))
    out = Path(records[0]["config"]["out"])
    return comparison_table(records) + f"outputs in {out.parent if a.learner == 'all' else out}\n"


def run_meta_train(a) -> str:
    record = meta_train.meta_train(from_args(MetaTrainConfig, a))
    return "" if record is None else meta_train.summary(record)


def run_meta_test(a) -> str:
    cfg = from_args(MetaTestConfig, a)
    return meta_test.summary(meta_test.meta_test(cfg), cfg.out or Path(cfg.paths[0]) / "meta-test")


OVERRIDES = tuple(f.name for f in dataclasses.fields(BenchOverrides))
NOT_ONLINE = ("modules", "module_width", "fim_lambda", "fisher", "fim_form", "mer_steps")  # field-only options, and MER's pieces (cl-bench: one example each)


def run_cl_bench(a) -> str:
    overrides = {k: getattr(a, k) for k in OVERRIDES if getattr(a, k, None) is not None}
    cfg = from_args(BenchConfig, a, overrides=overrides)
    cl_bench.cl_bench(cfg)
    return f"outputs in {cfg.out or Path('runs') / f'cl-bench-{cfg.bench}'}\n"


def run_render(a) -> str:
    return render.summary(render.render(from_args(render.RenderConfig, a)))


def run_export(a) -> str:
    return export.summary(*export.export(from_args(export.ExportConfig, a)))


COMMANDS = {
    "fit": Command(
        FitConfig, "fit a field to one signal (image, audio, video, mesh or scene) and write every output",
        "Fit a neural field to an image, audio clip, video, mesh (an occupancy field) or scene of posed images (a radiance field, NeRF) and "
        "write metrics.json, the reconstruction (PNG/WAV/MP4/PLY; scenes: the held-out views, views_vs_truth.png and turntable.mp4), "
        "curve.png, field.safetensors, checkpoint.pt and config.yaml to --out.",
        ("mclnf fit camera --steps 5000 --out runs/camera", "mclnf fit ../shared/data/audio/gt_counting.wav", "mclnf fit bikes.mp4 --frames 16 --resize 256",
         "mclnf fit bunny.obj --activation gaussian --sigma 0.09", "mclnf fit ../shared/data/nerf/lego_100.npz --optimizer esgd"), run_fit,
    ),  # fmt: skip
    "fit-many": Command(
        FitManyConfig, "fit a field to every signal of a folder, many fields per training step (batched with vmap)",
        "Fit one field to every signal of FOLDER (images, audio clips or videos of one size after --resize/--crop/--duration/--frames), "
        "--signals-per-batch fields stacked into each training step with torch.func.vmap; each is the field mclnf fit with the same options fits. "
        "Writes a folder per signal (field.safetensors, reconstruction, metrics.json) and summary.csv to --out, and prints the summary; "
        "--resume skips the signals done. Under torchrun --nproc_per_node=N the processes share the folder.",
        ("mclnf fit-many ../shared/data/faces_utk --resize 64 --width 64 --depth 3 --steps 500 --out runs/faces",
         "mclnf fit-many ../shared/data/librispeech_clips --duration 2",
         "torchrun --nproc_per_node=2 -m mclnf fit-many ../shared/data/faces_utk --resize 64 --out runs/faces"), run_fit_many,
    ),  # fmt: skip
    "continual": Command(
        ContinualConfig, "learn a signal that arrives as a sequence of tasks",
        "Split a signal into --tasks tasks (image strips or pixel-parity sub-images, video chunks, audio segments, mesh blocks, scene blocks or "
        "view groups), learn them one after another with --learner, and write metrics.json (R[i][j] = quality on task j after task i, final "
        "quality, BWT), the reconstruction after every task, matrix.png and checkpoint.pt (after every task; --resume continues). --learner all "
        "runs every learner on the same stream into OUT/<learner> and writes comparison.md and comparison.png.",
        ("mclnf continual ../shared/data/celeba_align/000001.jpg --crop 178 178 --resize 0 --pad 1 --learner all",
         "mclnf continual ../shared/data/video/bikes.mp4 --frames 16 --resize 128 --learner modular",
         "mclnf continual camera --split resolution --learner er --buffer-size 8192",
         "mclnf continual ../shared/data/nerf/lego_100.npz --grid 2 2 1 --learner modular"), run_continual,
    ),  # fmt: skip
    "render": Command(
        render.RenderConfig, "render the field of a fit, continual or meta-train run (super-resolution, camera paths)",
        "Evaluate the field of a run — a fit's field, a continual run's final field (--learner all: every learner's, or --learner's), a meta-train "
        "run's θ₀ (or θ₀ adapted to SIGNAL for --adapt-steps steps per task) — and write the signal in its own form (PNG, WAV, MP4 or PLY), "
        "on a denser grid with --resolution or --scale, or, for scenes, along --camera-path (orbit or a JSON file of camera-to-world matrices).",
        ("mclnf render runs/camera", "mclnf render runs/camera --scale 4 --out camera_x4.png", "mclnf render runs/continual-000001-all --learner modular",
         "mclnf render runs/lfw", "mclnf render runs/lfw face.png --adapt-steps 16", "mclnf render runs/lego --camera-path orbit --frames 96",
         "mclnf render runs/lego --camera-path camera_path.json --out frames/"), run_render,
    ),  # fmt: skip
    "export": Command(
        export.ExportConfig, "export a fit run's field: its surface as a mesh (.ply) by marching cubes",
        "Extract the surface of a fit run's field by marching cubes over a --resolution³ grid and write it as a PLY mesh (default RUN/mesh.ply): "
        "a scene's (radiance field's) density at --threshold σ over its scene box, coloured by the field, or a mesh's (occupancy field's) "
        "occupancy at --threshold (0.5).",
        ("mclnf export runs/lego --mesh", "mclnf export runs/lego --mesh --resolution 256 --threshold 10 --out lego.ply",
         "mclnf export runs/bunny --mesh --threshold 0.3"), run_export,
    ),  # fmt: skip
    "meta-train": Command(
        MetaTrainConfig, "meta-learn a field initialization on a dataset of signals",
        "Meta-learn the initialization θ₀ of a field on the meta-train part of DATASET (a folder, a glob pattern, or a built-in dataset: "
        "skimage_patches, 664 64 × 64 patches of scikit-image's 14 photos, the default; lfw_subset, its 200 25 × 25 faces) with --method, and "
        "write init.safetensors, checkpoint.pt (every --checkpoint-every outer steps; --resume continues exactly), meta_train.json and "
        "meta_train.png to --out. Under torchrun --nproc_per_node=N the meta-batch is split across the processes.",
        ("mclnf meta-train lfw_subset --method mcl-nf --out runs/lfw-mcl-nf",
         "mclnf meta-train '../shared/data/celeba_align/*.jpg' --crop 178 178 --resize 64 --method mcl-nf-fim --meta-grad emcl",
         "mclnf meta-train ../shared/data/librispeech --clip 0.5 --method mol",
         "mclnf meta-train ../shared/data/nerf/lego_100.npz --resize 32 --samples 32 --tasks 2 --method mcl-nf --meta-grad emcl",
         "torchrun --nproc_per_node=2 -m mclnf meta-train lfw_subset --meta-batch 8"), run_meta_train,
    ),  # fmt: skip
    "meta-test": Command(
        MetaTestConfig, "test-time optimization from meta-learned initializations, against baselines",
        "Adapt every meta-test signal of DATASET (the split each RUN was meta-trained beside) as a task stream, from each RUN's initialization and "
        "with the baselines from random ones, for every step count of --steps; write table.md (Step 1 / Best / Final), compute.md (parameters, "
        "peak memory, episodes/s), psnr_vs_step.png, reconstruction grids and metrics.json; each method's results go to methods/ as soon as it "
        "is done, and --resume skips the methods done.",
        ("mclnf meta-test runs/lfw-mcl-nf lfw_subset", "mclnf meta-test runs/mcl-nf runs/mol runs/oml lfw_subset --steps 1 2 4 8 16 --out runs/table1"),
        run_meta_test,
    ),  # fmt: skip
    "cl-bench": Command(
        BenchConfig, "online continual classification benchmarks (EMCL's Table III)",
        "Learn a benchmark's tasks once, in order (batches of 10, each for --glances steps), with every --method over --seeds seeds; write "
        "table.md (ACC and BWT ÷ T−1, mean ± std, training time, the ratios of EMCL's time to La-MAML's and MER's), time.png (Fig. 2), "
        "matrix_<method>.png (mean accuracy matrix), runs/<method>-seed<k>.json and metrics.json. Options left out take the benchmark's "
        "defaults (EMCL's Table II, La-MAML's released settings; docs/cl-bench.md); an option given applies to every method.",
        ("mclnf cl-bench mnist-permutations --method all --seeds 3", "mclnf cl-bench mnist-permutations --method emcl --emcl-no-pgd --out runs/emcl-no-pgd",
         "mclnf cl-bench split-cifar100 --data ~/data/cifar-100-python --method er emcl"), run_cl_bench,
    ),  # fmt: skip
}


CONFIG_HELP = "read options from a YAML, TOML or JSON file (keys: option names, as batch_size or batch-size); flags given here override it"


def option_classes(command: str) -> list[tuple[type, tuple[str, ...]]]:
    """(config class, options left out) of every option group the command's CLI takes."""
    c = COMMANDS[command]
    return [(c.config, c.exclude), *([(BenchOverrides, NOT_ONLINE)] if c.config is BenchConfig else [])]


def parser(file_options: dict[str, dict] | None = None) -> argparse.ArgumentParser:
    """The CLI; ``file_options`` (command → option values, from ``--config``) replace declared defaults."""
    p = Parser(prog="mclnf", description="Learn neural fields fast and continually.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, c in COMMANDS.items():
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in c.examples)
        cp = sub.add_parser(name, help=c.help, description=c.description, epilog=epilog, formatter_class=HelpFormatter)
        cp.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
        values = (file_options or {}).get(name, {})
        add_options(cp, c.config, defaults=values, exclude=c.exclude)
        if c.config is BenchConfig:
            add_options(cp, BenchOverrides, defaults=dict.fromkeys(OVERRIDES) | values, exclude=NOT_ONLINE)
    return p


def config_file(command: str, argv: list[str]) -> str | None:
    """The ``--config`` of a command line (abbreviations as the full parser takes them), before the full parse."""
    pre = Parser(prog=f"mclnf {command}", add_help=False)
    pre.add_argument("--config")
    return pre.parse_known_args(argv)[0].config


def from_file(message: str, a: argparse.Namespace, values: dict) -> bool:
    """Whether an error about the option its message starts with (``--steps 0: ...``) is about a value the config file set."""
    m = re.match(r"--([a-z0-9-]+)", message)
    dest = m and m[1].replace("-", "_")
    return bool(dest) and dest in values and getattr(a, dest, None) == values[dest]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    values, path = {}, config_file(command, argv[1:]) if command else None
    if path is not None:
        try:
            values = read_options(path, option_classes(command), command)
        except MclnfError as e:
            print(f"mclnf {command}: error: {e}", file=sys.stderr)
            return 2
    a = parser({command: values} if values else None).parse_args(argv)
    keep_freed_memory()
    flush_denormals()
    try:
        print(COMMANDS[a.command].run(a), end="")
    except MclnfError as e:
        print(f"mclnf {a.command}: error: {f'{path}: ' if from_file(str(e), a, values) else ''}{e}", file=sys.stderr)
        return 2
    except DivergedError as e:
        print(f"mclnf {a.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        c = COMMANDS[a.command]
        resumable = "resume" not in c.exclude and "resume" in {f.name for f in dataclasses.fields(c.config)}
        print(f"mclnf {a.command}: interrupted" + ("; continue with --resume" if resumable else "; rerun it with --overwrite"), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
