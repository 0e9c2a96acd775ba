"""barlab's modules import each other without a cycle, counting imports inside functions too.

A cycle that only closes through a function-level import still ties the modules into one knot
(none can be read, tested or moved alone) and fails as soon as someone hoists that import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "barlab"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module under barlab/ (a package is its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The barlab modules that ``name`` imports anywhere in its file (module level or in a function).

    ``from pkg import x`` counts as importing the module ``pkg.x`` when there is one, else ``pkg``;
    relative imports are resolved against ``name``'s package. The parent packages Python runs on the
    way (``import a.b.c`` runs ``a/__init__`` and ``a/b/__init__``) are not counted: a submodule that
    imports its sibling while its package initialises is no cycle.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the barlab modules it imports, for every module under barlab/."""
    modules = module_files()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, fixed order)."""
    state: dict[str, str] = {}  # "open" while on the search path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("import barlab.a\nfrom . import b\nfrom .c import name\nfrom .. import top\n"
                      "def f():\n    from barlab.d import e\n    import numpy\n")
    known = {"barlab.pkg.mod", "barlab.a", "barlab.pkg.b", "barlab.pkg.c", "barlab", "barlab.d", "barlab.d.e"}
    assert imported_modules("barlab.pkg.mod", module, known) == {
        "barlab.a", "barlab.pkg.b", "barlab.pkg.c", "barlab", "barlab.d.e"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_barlab_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_generator_takes_no_helper_from_the_quantizers():
    graph = import_graph()
    offending = {(name, dep) for name, deps in graph.items() if name.startswith("barlab.generator")
                 for dep in deps if dep.startswith("barlab.tokenizer.quantizers")}
    assert not offending, offending
