"""DESIGN.md's dependency rule, checked: dependencies point one way, and a layer uses
another through its package's public names only where the rule says so.

The imports are read from the source (module level and inside functions; imports under
``if TYPE_CHECKING:`` count too: a type is a dependency)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "agentd"
BENCH = ROOT.parent / "bench"

# What each part may import, besides itself. A part is a top-level module or package of
# agentd; "fastpath" covers fastpath.py and its two implementations.
BASE = {"aio", "errors", "schema", "config", "fastpath", "metrics", "runtime", "log", "version"}
ALLOWED: dict[str, set[str]] = {
    "aio": set(),
    "errors": set(),
    "runtime": set(),
    "version": set(),
    "schema": {"errors"},
    "config": {"errors"},
    "log": {"config"},
    "metrics": set(),
    "fastpath": {"errors", "schema"},
    "client_json": {"errors", "fastpath"},
    "store": {"aio", "errors", "schema", "config", "fastpath"},
    "backends": {"errors", "config", "fastpath", "metrics"},
    "cache": {"aio", "errors", "config", "fastpath", "metrics", "store"},
    "tools": {"errors", "config", "metrics", "version"},
    "wire": {"errors", "schema", "config", "fastpath", "client_json"},
    "auth": BASE | {"store"},
    "agent": BASE | {"store", "cache", "backends", "auth", "tools"},
    "jobs": BASE | {"store", "agent", "auth", "wire", "client_json"},
    "console": {"version"},
    "server": BASE
    | {"store", "cache", "backends", "auth", "agent", "tools", "jobs", "wire", "client_json"}
    | {"console"},
    "proc": BASE | {"server"},
    "chat_client": BASE | {"client_json"},
    "keys_client": {"config"},
    "reshard_cli": {"config", "store"},
    "cli": BASE | {"proc", "chat_client", "keys_client", "reshard_cli"},
    "__main__": {"cli"},
}
# Parts whose internals stay theirs: others import the package itself (its __init__),
# or the modules named here.
PUBLIC = {
    "store": {"agentd.store", "agentd.store.api", "agentd.store.redis.reshard"},
    "cache": {"agentd.cache"},
    "backends": {"agentd.backends"},
    "auth": {"agentd.auth"},
    "tools": {"agentd.tools"},
    "agent": {"agentd.agent"},
    "wire": None,  # the wire formats are all public
    "jobs": None,
    "server": {"agentd.server"},
}


def part_of(module: str) -> str:
    name = module.split(".")[1] if module.count(".") else "__init__"
    if name in ("_fastpath", "_fastpath_py"):
        return "fastpath"
    if name == "__init__":
        return "version"  # agentd/__init__.py holds only the version
    return name


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every agentd module that ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "agentd":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "agentd":
                continue
            # "from . import x" and "from .pkg import mod" may name modules.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if _is_module(candidate):
                    yield node.lineno, candidate
                else:
                    yield node.lineno, target


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


SOURCES = sorted(p for p in ROOT.rglob("*.py"))


def violations() -> list[str]:
    found = []
    for path in SOURCES:
        here = module_name(path)
        mine = part_of(here)
        allowed = ALLOWED.get(mine)
        if allowed is None:
            found.append(f"{here}: part {mine!r} has no place in the dependency rule")
            continue
        for line, target in imports(path):
            theirs = part_of(target)
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if theirs == mine or target == "agentd":
                continue
            if theirs not in allowed:
                found.append(f"{where}: {mine} must not import {theirs} ({target})")
                continue
            public = PUBLIC.get(theirs)
            if public is not None and target not in public:
                found.append(f"{where}: {mine} reaches into {target}; use {sorted(public)}")
    return sorted(set(found))


def test_every_import_follows_the_dependency_rule() -> None:
    assert violations() == []


def test_no_module_imports_itself_back_through_a_circle() -> None:
    graph = {module_name(p): {t for _, t in imports(p)} for p in SOURCES}
    for start in graph:
        seen: set[str] = set()
        stack = list(graph[start])
        while stack:
            node = stack.pop()
            if node == start:
                pytest.fail(f"{start} imports itself back through a circle")
            if node in seen or node not in graph:
                continue
            seen.add(node)
            stack.extend(graph[node])


def test_the_check_sees_a_violation() -> None:
    # The rule is read from real imports: a lower part importing a higher one is caught.
    assert part_of("agentd.store.base") == "store"
    assert "server" not in ALLOWED["store"] and "agent" not in ALLOWED["cache"]
    assert any(t == "agentd.agent" for _, t in imports(ROOT / "server" / "chat.py"))


# -- inside the store: the interfaces, then shared logic, then two implementations -------

STORE = "agentd.store"
IMPLEMENTATIONS = (f"{STORE}.memory", f"{STORE}.redis")


def store_imports(path: Path) -> set[str]:
    return {t for _, t in imports(path) if t == STORE or t.startswith(f"{STORE}.")}


def test_the_store_interfaces_import_nothing_of_the_store() -> None:
    assert store_imports(ROOT / "store" / "api.py") == set()


def test_no_store_implementation_imports_another_or_is_imported_by_shared_code() -> None:
    wrong = []
    for path in sorted((ROOT / "store").rglob("*.py")):
        here = module_name(path)
        if here == STORE:
            continue  # open_store picks the implementation
        own = next((impl for impl in IMPLEMENTATIONS if here.startswith(impl)), None)
        for target in store_imports(path):
            impl = next((impl for impl in IMPLEMENTATIONS if target.startswith(impl)), None)
            if impl is not None and impl != own:
                wrong.append(f"{here} imports {target}")
    assert wrong == []


def test_bench_reaches_the_store_through_its_public_modules_and_key_formats() -> None:
    # The key formats, and the Lua scripts, which the round-trip tools (bench/turn_*.py)
    # name by their SHA1 and call as agentd does.
    allowed = PUBLIC["store"] | {f"{STORE}.keys", f"{STORE}.scripts"}
    wrong = [
        f"{path.relative_to(BENCH.parent)} imports {target}"
        for path in sorted(BENCH.rglob("*.py"))
        for _, target in imports(path)
        if target.startswith(STORE) and target not in allowed
    ]
    assert wrong == []


def test_proc_uses_server_only_through_create_app() -> None:
    """And ``check_startup``: what the supervisor checks before it forks a worker that
    would fail on it (the credentials' key material); ``front_for``: the protocol
    factory a worker serves its listening sockets with (server/front.py); and
    ``preload``: what a config's workers will import, imported once before forking."""
    names = set()
    for path in sorted((ROOT / "proc").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("server"):
                names.update(alias.name for alias in node.names)
    assert names == {"create_app", "check_startup", "front_for", "preload"}
