"""Architecture rules: small modules, each with a one-line job, and no run-time import cycle.

Run ``python tests/test_architecture.py`` to print the module map (one line per module:
its path, line count and the first line of its docstring).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "leanmq_async"
MAX_LINES = 450

# Modules being split in parallel branches of issue 12 (their owners shrink them). The
# integrator empties this set at merge time; nothing else may be added to it.
LINE_LIMIT_ALLOWLIST: frozenset[str] = frozenset()

# Import edges (importer, imported) tolerated by the cycle check. Empty: the store <-> cluster
# pair is untangled in a parallel branch; should a cycle appear only through it before the
# merge, it is listed here with that comment, and the integrator empties the set.
CYCLE_EDGE_ALLOWLIST: frozenset[tuple[str, str]] = frozenset()


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    modules: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement run at some point: module level and in function bodies alike,
    but not the bodies of ``if TYPE_CHECKING:`` (their ``else:`` branches do run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _run_time_imports(ast.Module(body=[child], type_ignores=[]))
        else:
            yield from _run_time_imports(node)


def module_imports(text: str, name: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (source ``text``) imports at run time.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else
    ``pkg``; relative imports are resolved against ``name``.
    """
    known = set(known)
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _run_time_imports(ast.parse(text)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            parts = package.split(".")
            base = parts[: len(parts) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            targets.add(sub if sub in known else source)
    return {t for t in targets if t in known and t != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at run time.

    Importing ``a.b`` also runs ``a/__init__``; those implicit parent-package edges are left
    out (every package ``__init__`` re-exports its own modules).
    """
    modules = module_files()
    return {
        name: module_imports(path.read_text(), name, path.name == "__init__.py", modules)
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if (node, target) in CYCLE_EDGE_ALLOWLIST:
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def first_docstring_line(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else None


def module_map() -> list[str]:
    """One line per module: ``path (lines): first docstring line``."""
    lines = []
    for path in module_files().values():
        rel = path.relative_to(ROOT).as_posix()
        count = len(path.read_text().splitlines())
        lines.append(f"{rel} ({count}): {first_docstring_line(path)}")
    return lines


def test_no_module_is_over_the_line_limit() -> None:
    too_long = {}
    for path in module_files().values():
        rel = path.relative_to(ROOT).as_posix()
        count = len(path.read_text().splitlines())
        if count > MAX_LINES and rel not in LINE_LIMIT_ALLOWLIST:
            too_long[rel] = count
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job): {too_long}"


def test_the_run_time_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "run-time import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_sees_function_local_imports_not_type_checking_ones() -> None:
    graph = import_graph()
    # client.worker() imports the supervisor inside the function body.
    assert "leanmq_async.worker.supervisor" in graph["leanmq_async.client"]
    # The queue names its client only for the type checker.
    assert "leanmq_async.client" not in graph["leanmq_async.queue"]


def test_module_imports_resolves_relative_and_skips_type_checking_imports() -> None:
    known = {"p", "p.a", "p.b", "p.sub", "p.sub.c", "p.sub.d", "p.e"}
    text = """
from typing import TYPE_CHECKING
from . import d
from .. import a
from ..b import thing
if TYPE_CHECKING:
    from p import e
else:
    import p.e
def f():
    from p.sub import c
"""
    assert module_imports(text, "p.sub.x", False, known) == {
        "p.sub.d",
        "p.a",
        "p.b",
        "p.e",
        "p.sub.c",
    }
    assert module_imports("from . import c", "p.sub", True, known) == {"p.sub.c"}
    assert module_imports("if TYPE_CHECKING:\n    import p.a", "p.b", False, known) == set()


def test_the_queue_does_not_import_the_worker() -> None:
    graph = import_graph()
    for name in ("leanmq_async.queue", "leanmq_async.registration", "leanmq_async.webhook"):
        assert not {t for t in graph[name] if t.startswith("leanmq_async.worker")}, name


def test_importing_the_library_does_not_load_the_worker_runtime() -> None:
    code = (
        "import sys, leanmq_async\n"
        "mq = leanmq_async.LeanMQ('redis://localhost:1/0')\n"
        "@mq.queue('q').handler\n"
        "async def h(data: object) -> None: ...\n"
        "print(sorted(m for m in sys.modules if m.startswith('leanmq_async.worker')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_admin_command_module_is_listed_and_has_add_parser() -> None:
    from leanmq_async.ops.cli import COMMAND_MODULES

    listed = {m.__name__.rpartition(".")[2] for m in COMMAND_MODULES}
    files = {p.stem for p in (PACKAGE / "ops" / "cli").glob("*.py")} - {"__init__", "common"}
    assert listed == files, "list each command module of ops/cli/ in COMMAND_MODULES"
    assert all(callable(getattr(m, "add_parser", None)) for m in COMMAND_MODULES)


def test_every_module_states_its_job_in_one_sentence() -> None:
    bad = {}
    for path in module_files().values():
        line = first_docstring_line(path)
        if line is None or not line.endswith(".") or len(line) > 100:
            bad[path.relative_to(ROOT).as_posix()] = line
    assert not bad, f"modules whose docstring does not open with a one-line job: {bad}"


if __name__ == "__main__":
    sys.stdout.write("\n".join(module_map()) + "\n")
