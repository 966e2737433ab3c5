"""The house rules that can be checked: data flows one way through the layers, no import circles, no command
imports another, mclnf.optim holds real optimizers only, and every CLI name resolves through the one registry."""

import ast
from pathlib import Path

import pytest
import torch

import mclnf
from mclnf import learners
from mclnf.cli import COMMANDS, parser
from mclnf.optim import OPTIMIZERS, build_optimizer

ROOT = Path(mclnf.__file__).parent
LAYERS = {  # a module may import from its own layer and the ones below
    "errors": 0, "io": 0, "options": 0, "sampling": 0, "runtime": 0, "resources": 0,
    "signals": 1, "fields": 2, "losses": 3, "optim": 3, "learners": 4, "tracking": 5, "train": 5, "eval": 5,
    "stacked": 5, "config": 6, "runs": 7, "commands": 8, "cli": 9, "api": 9, "__main__": 10,
    "__init__": 10,  # the package's face: the API's names, imported on first use (every module's `from mclnf import __version__` is not an edge)
}  # fmt: skip


def module_name(path: Path) -> str:
    return ".".join(("mclnf", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Every mclnf module → the mclnf modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    graph = {}
    for f in ROOT.rglob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mclnf"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if (ROOT / Path(*node.module.split(".")[1:], a.name)).with_suffix(".py").is_file()}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("mclnf")}
        graph[module_name(f)] = deps - {"mclnf"}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer_and_no_import_goes_up():
    graph = imports()
    assert {layer(m) for m in graph} <= set(LAYERS)
    upward = [(m, d) for m, ds in graph.items() for d in ds if layer(d) != layer(m) and LAYERS[layer(d)] > LAYERS[layer(m)]]
    assert not upward


def test_no_import_circles():
    graph = imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, " -> ".join([*path, d])
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_command_imports_another():
    graph = imports()
    commands = {m for m in graph if m.startswith("mclnf.commands.")}
    assert len(commands) == 8
    assert not [(m, d) for m in commands for d in graph[m] if d in commands]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optim_holds_real_torch_optimizers(name):
    opt = build_optimizer(name, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups and isinstance(opt.state, dict)
    assert set(opt.state_dict()) >= {"state", "param_groups"}


def test_every_cli_name_resolves_through_the_registry():
    sub = next(a for a in parser()._actions if a.dest == "command").choices
    choices = {a.dest: set(a.choices) for c in ("continual", "cl-bench", "meta-train") for a in sub[c]._actions if a.choices}
    assert choices["learner"] == set(learners.CONTINUAL_LEARNERS) | {"all"}
    assert choices["methods"] == set(learners.ONLINE_LEARNERS) | {"all"}
    assert choices["method"] == set(learners.META_METHODS) and choices["meta_grad"] == set(learners.META_GRADIENTS)
    for table in (learners.CONTINUAL_LEARNERS, learners.ONLINE_LEARNERS):
        assert all(issubclass(c, learners.Learner) for c in table.values())
    assert all(issubclass(c, learners.MetaMethod) and c.name == n for n, c in learners.META_METHODS.items())
    assert set(COMMANDS) == {"fit", "fit-many", "continual", "render", "export", "meta-train", "meta-test", "cl-bench"}
