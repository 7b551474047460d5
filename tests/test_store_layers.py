"""The store's layering, read from the imports: the interfaces import no implementation,
the memory and Redis implementations never import each other, the store's modules import
one another in no circle, and the layers above reach the store only through its public
modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORE = "agentd.store"
IMPLEMENTATIONS = (f"{STORE}.memory", f"{STORE}.redis")
# What the layers above may import; tests and bench may read key formats too.
PUBLIC = {STORE, f"{STORE}.api"}
PUBLIC_TO_BENCH = PUBLIC | {f"{STORE}.keys"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports at import time (not those imported inside a function)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if _exists(sub) else base)
            visit(child)

    visit(tree)
    return found


def _modules(*folders: str) -> dict[str, set[str]]:
    out = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out[_module_name(path)] = _imports(path)
    return out


def _store_imports(imports: set[str]) -> set[str]:
    return {m for m in imports if m == STORE or m.startswith(f"{STORE}.")}


STORE_MODULES = _modules("agentd/store")


def test_the_interfaces_import_nothing_of_the_store() -> None:
    assert _store_imports(STORE_MODULES[f"{STORE}.api"]) == set()


@pytest.mark.parametrize("module", sorted(STORE_MODULES))
def test_no_implementation_imports_another_or_is_imported_by_shared_code(module: str) -> None:
    own = next((impl for impl in IMPLEMENTATIONS if module.startswith(impl)), None)
    for imported in _store_imports(STORE_MODULES[module]):
        for impl in IMPLEMENTATIONS:
            if imported.startswith(impl):
                assert own == impl, f"{module} imports {imported}"


def test_the_store_imports_itself_in_no_circle() -> None:
    graph = {m: _store_imports(deps) - {m} for m, deps in STORE_MODULES.items()}
    # A package's __init__ is imported with each of its modules: not an edge of a cycle.
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not module.startswith(f"{d}.")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path, module]))
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_layers_above_import_only_the_public_store() -> None:
    wrong = []
    for module, imports in {**_modules("agentd"), **_modules("bench")}.items():
        if module.startswith(f"{STORE}.") or module == STORE:
            continue
        allowed = PUBLIC_TO_BENCH if module.startswith("bench") else PUBLIC
        wrong += [f"{module} imports {m}" for m in _store_imports(imports) - allowed]
    assert wrong == []
