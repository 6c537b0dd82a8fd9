"""The runner's import layout: imports between its modules go one way (no cycles, not even behind a function-level
or TYPE_CHECKING import), the few function-level imports of gpurun modules are deliberate, and no module imports
the training stack when it is imported (only when a function runs)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.env import REPO_ROOT

RUNNER = REPO_ROOT / "gpurun" / "runner"
HEAVY = {"torch", "diffusers", "transformers", "peft", "safetensors", "accelerate", "bitsandbytes", "lycoris"}
#: function-level imports of gpurun modules that stay, and why: both sit inside a try that turns an import failure
#: into the script's own error report (the runner's error event, the smoke check's failed stage)
DELIBERATE = {
    "gpurun.runner.__main__": {"gpurun.trainconfig", "gpurun.runner.train"},
    "gpurun.runner.smoke": {"gpurun.runner.lora", "gpurun.runner.model.load", "gpurun.runner.optim"},
    # the sampler's entry point, like __main__: a broken stack still ends as an error event
    "gpurun.runner.sampling": {"gpurun.runner.model.load", "gpurun.runner.precision", "gpurun.runner.sample"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(RUNNER.rglob("*.py")):
        parts = path.relative_to(RUNNER.parent.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level and not under TYPE_CHECKING) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    eager: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            eager.add(id(node))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in eager) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from gpurun.runner import oom` imports the submodule gpurun.runner.oom
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            out += [(name, id(node) in eager) for name in subs or [node.module]]
    return out


def test_runner_imports_form_no_cycle() -> None:
    graph = {
        name: {m for m, _ in _imports(path) if m in MODULES and m != name and not name.startswith(m + ".")}
        for name, path in MODULES.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        assert name not in trail, "import cycle: " + " -> ".join([*trail[trail.index(name) :], name])
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        done.add(name)

    for name in MODULES:
        visit(name, [])


def test_function_level_imports_of_gpurun_are_the_deliberate_ones() -> None:
    late = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {
            n.module if isinstance(n, ast.ImportFrom) else a.name
            for f in functions
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
        }
        gpurun = {m for m in inside if m and m.split(".")[0] == "gpurun"}
        if gpurun:
            late[name] = gpurun
    assert late == DELIBERATE


def test_no_module_imports_the_training_stack_at_import_time() -> None:
    eager_heavy = {
        name: sorted({m for m, eager in _imports(path) if eager and m.split(".")[0] in HEAVY})
        for name, path in MODULES.items()
    }
    assert {k: v for k, v in eager_heavy.items() if v} == {}
