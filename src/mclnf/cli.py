"""``mclnf <command>``: argparse generated from each command's config (:mod:`mclnf.config`), then the command.
User errors print one line and exit 2; a diverged run prints its message and exits 1."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mclnf.commands import cl_bench, continual, fit, meta_test, meta_train, render
from mclnf.config import BenchConfig, BenchOverrides, ContinualConfig, FitConfig, MetaTestConfig, MetaTrainConfig
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.tables import comparison_table
from mclnf.options import add_options, from_args
from mclnf.runtime import flush_denormals, keep_freed_memory


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
NOT_ONLINE = ("modules", "module_width", "fim_lambda", "fisher", "mer_steps")  # field-only options, and MER's pieces (cl-bench: one example each)


def run_cl_bench(a) -> str:
    overrides = {k: getattr(a, k) for k in OVERRIDES if getattr(a, k, None) is not None}
    cfg = from_args(BenchConfig, a, overrides=overrides)
    cl_bench.cl_bench(cfg)
    return f"outputs in {cfg.out or Path('runs') / f'cl-bench-{cfg.bench}'}\n"


def run_render(a) -> str:
    return f"{render.render(from_args(render.RenderConfig, a))}\n"


COMMANDS = {
    "fit": Command(
        FitConfig, "fit a field to one signal and write every output",
        "Fit a neural field to an image, audio clip, video, mesh or scene and write metrics.json, the reconstruction "
        "(PNG/WAV/MP4/PLY), curve.png, field.safetensors and checkpoint.pt to --out.",
        ("mclnf fit camera --steps 5000 --out runs/camera", "mclnf fit ../shared/data/audio/gt_counting.wav", "mclnf fit bikes.mp4 --frames 16 --resize 256",
         "mclnf fit bunny.obj --activation gaussian --sigma 0.09", "mclnf fit ../shared/data/nerf/lego_100.npz --optimizer esgd"), run_fit,
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
    "render": Command(render.RenderConfig, "re-create the reconstruction from a run's field.safetensors",
                      "Evaluate a saved field and write the signal in its own form (PNG, WAV, MP4 or PLY).", ("mclnf render runs/camera",), run_render),
    "meta-train": Command(
        MetaTrainConfig, "meta-learn a field initialization on a dataset of signals",
        "Meta-learn the initialization θ₀ of a field on the meta-train part of DATASET (a folder, a glob pattern, or lfw_subset: scikit-image's "
        "200 faces) with --method, and write init.safetensors, checkpoint.pt (every --checkpoint-every outer steps; --resume continues exactly), "
        "meta_train.json and meta_train.png to --out. Under torchrun --nproc_per_node=N the meta-batch is split across the processes.",
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
        "peak memory, episodes/s), psnr_vs_step.png, reconstruction grids and metrics.json.",
        ("mclnf meta-test runs/lfw-mcl-nf lfw_subset", "mclnf meta-test runs/mcl-nf runs/mol runs/oml lfw_subset --steps 1 2 4 8 16 --out runs/table1"),
        run_meta_test, exclude=("resume",),
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


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="mclnf", description="Learn neural fields fast and continually.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, c in COMMANDS.items():
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in c.examples)
        cp = sub.add_parser(name, help=c.help, description=c.description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(cp, c.config, exclude=c.exclude)
        if c.config is BenchConfig:
            add_options(cp, BenchOverrides, defaults=dict.fromkeys(OVERRIDES), exclude=NOT_ONLINE)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    keep_freed_memory()
    flush_denormals()
    try:
        print(COMMANDS[a.command].run(a), end="")
    except MclnfError as e:
        print(f"mclnf {a.command}: error: {e}", file=sys.stderr)
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
