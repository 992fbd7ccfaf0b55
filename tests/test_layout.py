"""Package layout: no import cycle between kdlab modules, no two packages that import each other, functions that fit
on a screen.

Modules are sized by responsibility, not by a line cap (a cap split files by size); what is checked is what a reader
meets: a function longer than ``MAX_FUNCTION_LINES`` is a sign that it does several things, except the argument-parser
tables in ``LONG_TABLES`` (one ``add_argument`` per option: long, flat and read by looking up one line).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdlab"
MAX_FUNCTION_LINES = 80
LONG_TABLES = {
    "kdlab/cli.py:build_parser",
    "kdlab/study/commands.py:add_study_commands",
    "kdlab/train/commands.py:add_train_commands",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """kdlab module names an import statement names (``from kdlab.x import y`` names ``kdlab.x`` and, when ``y`` is a
    module, ``kdlab.x.y``; relative imports are resolved against ``module``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the kdlab modules it imports, at module level or inside functions (every import statement)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for node in ast.walk(tree):
            for target in _imported(node, name, path.name == "__init__.py"):
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    assert graph.get("kdlab.cli"), "the import graph is empty: the parser found no imports"
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle between kdlab modules: {' -> '.join(cycle)}"


def function_lengths() -> dict[str, int]:
    """``path:function`` (``path:Class.method`` for methods) -> its length in lines, decorators excluded."""
    lengths = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owner = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                    lengths[f"{name}:{owner}{child.name}"] = child.end_lineno - child.lineno + 1
    return lengths


def test_functions_fit_on_a_screen():
    lengths = function_lengths()
    assert lengths.get("kdlab/cli.py:build_parser"), "no function found: the walk is broken"
    long = {name: n for name, n in sorted(lengths.items()) if n > MAX_FUNCTION_LINES and name not in LONG_TABLES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"
    assert set(lengths) >= LONG_TABLES, f"stale LONG_TABLES entries: {sorted(LONG_TABLES - set(lengths))}"


def packages_importing_each_other(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of kdlab sub-packages (``kdlab.train``, ``kdlab.teacher_cache``, ...) each of which imports the other."""

    def package(module: str) -> str | None:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else None

    edges = {(package(a), package(b)) for a, targets in graph.items() for b in targets if package(a) and package(b)}
    return sorted((a, b) for a, b in edges if a < b and (b, a) in edges)


# Still to untangle (recorded, so that no new pair appears): kdlab.stats sits between the study plan (which it reads)
# and the study report (which reads it); eval.metrics uses stats.significance while stats reads eval's predictions.
KNOWN_MUTUAL = {("kdlab.eval", "kdlab.stats"), ("kdlab.stats", "kdlab.study")}


def test_packages_import_each_other_in_one_direction_at_most():
    assert packages_importing_each_other({"kdlab.a.x": {"kdlab.b.y"}, "kdlab.b.y": {"kdlab.a.z"}}) == [
        ("kdlab.a", "kdlab.b")
    ]
    mutual = set(packages_importing_each_other(import_graph()))
    assert ("kdlab.teacher_cache", "kdlab.train") not in mutual, "train and teacher_cache import each other again"
    assert mutual <= KNOWN_MUTUAL, f"new sub-packages that import each other: {sorted(mutual - KNOWN_MUTUAL)}"


def test_layout_page_lists_every_module():
    """docs/layout.md (written by scripts/layout.py) names exactly the modules there are."""
    page = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    listed = {line.split()[0] for line in page.splitlines() if line.startswith("kdlab/")}
    present = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")}
    assert listed == present, (
        f"docs/layout.md is out of date (run scripts/layout.py): missing {sorted(present - listed)}, "
        f"gone {sorted(listed - present)}"
    )
