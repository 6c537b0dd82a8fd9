"""The house rules, kept true: imports go downward only (function-level imports included, so none can hide a
cycle), provider names live under provision/, the CLI talks to the library through the api façade, the runner
takes nothing from the client side, and the façade's `__all__` is what it says."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import gpurun
from gpurun import api
from gpurun.provision.registry import PROVIDER_NAMES

PACKAGE = Path(gpurun.__file__).parent

#: the layers, bottom first: a module may import its own layer (without cycles) and the layers below, never above.
#: A prefix names a package and everything in it.
LAYERS: list[tuple[str, ...]] = [
    ("gpurun.errors", "gpurun.models", "gpurun.events", "gpurun.phases", "gpurun.safenames", "gpurun.lorafile",
     "gpurun.buckets", "gpurun.retry", "gpurun.kohya_keys", "gpurun.network_args", "gpurun.kohya_dataset",
     "gpurun.lorainit", "gpurun.configfiles", "gpurun.optimizers", "gpurun.lycoris_args", "gpurun.lycorisfile"),
    ("gpurun.settings", "gpurun.trainconfig", "gpurun.pricing", "gpurun.dataset", "gpurun"),
    ("gpurun.journal", "gpurun.provision", "gpurun.remote", "gpurun.runner"),
    ("gpurun.job", "gpurun.report"),
    ("gpurun.api",),
    ("gpurun.cli", "gpurun.__main__"),
]  # fmt: skip
#: what each side may not import even though it sits lower: the runner runs on the box with none of the client
#: side; provision and remote never import each other (only the orchestrator composes them)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "gpurun.runner": ("gpurun.provision", "gpurun.remote", "gpurun.pricing", "gpurun.journal", "gpurun.settings"),
    "gpurun.provision": ("gpurun.remote",),
    "gpurun.remote": ("gpurun.provision",),
    "gpurun.cli": ("gpurun.job", "gpurun.provision", "gpurun.remote", "gpurun.journal", "gpurun.runner"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "templates" not in p.parts}


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """Every gpurun module `name` imports, anywhere in the file (functions and TYPE_CHECKING blocks included)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gpurun":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            if base.split(".")[0] != "gpurun":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in MODULES else base), node.lineno


def layer_of(name: str) -> int:
    best, found = -1, None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{name} is in no layer: add it to LAYERS"
    return found


def test_every_module_sits_in_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_imports_go_downward_only() -> None:
    wrong = [
        f"{name}:{line} imports {target} (layer {layer_of(target)} above {layer_of(name)})"
        for name in MODULES
        for target, line in imports_of(name)
        if layer_of(target) > layer_of(name)
    ]
    assert wrong == []


def test_no_side_imports_what_it_must_not() -> None:
    wrong = []
    for name in MODULES:
        for side, banned in FORBIDDEN.items():
            if name == side or name.startswith(side + "."):
                wrong += [f"{name}:{line} imports {t}" for t, line in imports_of(name) if t.startswith(banned)]
    assert wrong == []


def test_there_is_no_import_cycle_even_through_function_level_imports() -> None:
    graph = {name: {t for t, _ in imports_of(name) if t in MODULES and t != name} for name in MODULES}
    # a package's __init__ re-exporting its own modules is not a cycle: the modules never import it back
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def _code_strings_and_names(path: Path) -> Iterator[tuple[str, int, str]]:
    """(kind, line, text) of every string constant that is not a docstring, and every identifier."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield "string", node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield "name", node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield "name", node.lineno, node.attr


def test_provider_names_live_under_provision_only() -> None:
    """Adding a provider is one module under provision/, one registry line, one fake: nothing else may branch on a
    provider's name. (`local` and `ssh` are also ordinary words elsewhere, so they count when compared with a
    provider's name.)"""
    vendors = {name for name in PROVIDER_NAMES if name not in ("local", "ssh")}
    wrong = []
    files = [p for p in PACKAGE.rglob("*.py") if "provision" not in p.relative_to(PACKAGE).parts[:1]]
    for path in files:
        for kind, line, text in _code_strings_and_names(path):
            if text.lower() in vendors or (kind == "name" and any(v in text.lower() for v in vendors)):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line}: {kind} {text!r}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                texts = [ast.unparse(part) for part in (node.left, *node.comparators)]
                names = {n for n in PROVIDER_NAMES if any(t.strip("'\"") == n or f"'{n}'" in t for t in texts)}
                if names and any("provider" in t or t.endswith(".name") for t in texts):
                    wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: compares a provider with {names}")
    assert wrong == []


def test_the_facade_exports_what_it_says() -> None:
    assert sorted(api.__all__) == sorted(set(api.__all__))
    for name in api.__all__:
        assert hasattr(api, name), f"gpurun.api.__all__ names {name}, which it does not have"
        member = getattr(api, name)
        if inspect.isfunction(member) or inspect.isclass(member):
            assert inspect.getdoc(member), f"gpurun.api.{name} has no docstring"
    public = {n for n, v in vars(api).items() if not n.startswith("_") and inspect.isfunction(v)}
    public = {n for n in public if getattr(api, n).__module__ == "gpurun.api"}
    assert public <= set(api.__all__), f"public functions missing from __all__: {public - set(api.__all__)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_is_for(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{name} has no module docstring"


# ---- the tests' own layout ------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
#: test folders that mirror no package: the shared test ground, whole-product runs, hostile-input suites
TEST_ONLY_FOLDERS = {"support", "e2e", "security"}


def test_test_folders_mirror_the_package() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {"templates"}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - TEST_ONLY_FOLDERS <= packages, f"test folders with no package of that name: {folders - packages}"
    for folder in folders:
        assert (TESTS / folder / "__init__.py").exists(), f"tests/{folder} needs an __init__.py (unique module names)"


def test_no_test_imports_another_test_module() -> None:
    """Shared helpers live in tests/support; a test module importing another would run its tests twice."""
    offenders = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            offenders += [
                f"{path.relative_to(TESTS)}:{node.lineno} imports {n}"
                for n in names
                if n.startswith("tests.") and (n.rsplit(".", 1)[-1].startswith("test_") or n == "tests.conftest")
            ]
    assert not offenders, offenders
