"""The product's import graph, read statically: no module imports in a cycle (imports inside
functions included; those under `if TYPE_CHECKING:` never run and are left out), and no stage
imports another stage or the stages package above it. And what an actor process imports at its
start, checked in a fresh interpreter: no model runtime in a stage module, no codec or storage in
the executor's own actors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.spec import STAGES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"clipforge": ROOT / "pipeline_image" / "clipforge", "clipforge_operator": ROOT / "operator" / "clipforge_operator"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):  # noqa: ANN202
    """Every node of `tree` but those under `if TYPE_CHECKING:` (their else branch runs)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules `name` imports anywhere in its body: `from a import b` counts as
    importing a.b when that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_product_module_imports_in_a_cycle():
    assert _cycles(_graph()) == []


def test_cycles_are_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_count_and_type_checking_ones_do_not():
    tree = ast.parse("if TYPE_CHECKING:\n    import a\nelse:\n    import b\ndef f():\n    import c\n")
    imported = {alias.name for node in _runtime_nodes(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"b", "c"}


def test_a_stage_imports_no_other_stage_nor_the_stages_package():
    graph = _graph()
    stage_modules = [m for m in graph if m.startswith("clipforge.stages.") and m != "clipforge.stages.base"]
    assert stage_modules, "no stage modules found"
    for module in stage_modules:
        stages_imported = {t for t in graph[module] if t == "clipforge.stages" or t.startswith("clipforge.stages.")}
        assert stages_imported <= {"clipforge.stages.base"}, f"{module} imports {sorted(stages_imported)}"


def test_the_stage_contract_imports_no_stage():
    imported = _graph()["clipforge.stages.base"]
    assert not {t for t in imported if t.startswith("clipforge.stages")}


# What each Ray actor process imports costs CPU at every start (docs/performance.md, start-up).
# Checked in a fresh interpreter: in this one, other tests have imported everything already.
MODEL_RUNTIME = ("torch", "torchvision", "transformers", "pandas")


def _imported_by(module: str, candidates: tuple[str, ...]) -> list[str]:
    code = (f"import sys, {module}\n"
            f"print(' '.join(m for m in {candidates!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_module_imports_no_model_runtime(stage):
    # torch and transformers only inside the methods that load and run a model; pandas nowhere.
    assert _imported_by(f"clipforge.stages.{stage}", MODEL_RUNTIME) == []


def test_the_executors_own_actors_import_neither_codec_nor_storage():
    # The attempts ledger and the throughput meter run clipforge.executors.ray_data and the stage
    # contract only: PyAV, numpy and pyarrow (through storage) would be paid there for nothing.
    heavy = ("av", "numpy", "pyarrow", "clipforge.storage", "ray.data", *MODEL_RUNTIME)
    assert _imported_by("clipforge.executors.ray_data", heavy) == []
