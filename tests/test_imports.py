"""barlab's folders are layers: imports only go down, and nothing imports in a cycle.

Imports inside functions count too: a cycle that only closes through a function-level import still
ties the modules into one knot (none can be read, tested or moved alone) and fails as soon as someone
hoists that import.
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


# The layers, lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = (
    ("barlab", "barlab.errors", "barlab.utils"),                                 # foundations
    ("barlab.config",),                                                         # YAML paths, resolvers, instantiate
    ("barlab.data", "barlab.tokenizer", "barlab.generator", "barlab.metrics"),  # plain modules
    ("barlab.runtime",),                                                        # run state, checkpoints, ranks, SLURM
    ("barlab.lightning",),                                                      # LightningModules, callbacks
    ("barlab.pipeline",),                                                       # stages, trainer, results
    ("barlab.analysis", "barlab.bench", "barlab.cli", "barlab.train", "barlab.sample", "barlab.evaluate",
     "barlab.shard", "barlab.export", "barlab.convert", "barlab.pretokenize"),  # entry points and readers
)
PLAIN = ("barlab.data", "barlab.tokenizer", "barlab.generator", "barlab.metrics")
WIRING = ("barlab.lightning", "barlab.pipeline", "barlab.runtime", "barlab.cli", "barlab.train", "barlab.sample",
          "barlab.evaluate", "barlab.shard", "barlab.export", "barlab.convert", "barlab.analysis", "barlab.bench",
          "barlab.pretokenize")
# Among the plain packages, the only import allowed: the generator's image generator loads its tokenizer.
PLAIN_ALLOWED = {("barlab.generator", "barlab.tokenizer")}


def package_of(module: str) -> str:
    """``barlab.generator.heads.mbm`` -> ``barlab.generator``; ``barlab.train`` -> itself."""
    return ".".join(module.split(".")[:2])


def layer_of(module: str) -> int:
    package = package_of(module)
    for rank, packages in enumerate(LAYERS):
        if package in packages:
            return rank
    raise KeyError(package)


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import of a module from a higher layer, and every import between two plain packages
    that :data:`PLAIN_ALLOWED` does not list."""
    bad = []
    for name, deps in graph.items():
        for dep in deps:
            if layer_of(dep) > layer_of(name):
                bad.append((name, dep))
            elif (package_of(name) in PLAIN and package_of(dep) in PLAIN and package_of(name) != package_of(dep)
                  and (package_of(name), package_of(dep)) not in PLAIN_ALLOWED):
                bad.append((name, dep))
    return sorted(bad)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages its modules import."""
    packages: dict[str, set[str]] = {}
    for name, deps in graph.items():
        packages.setdefault(package_of(name), set()).update(
            package_of(dep) for dep in deps if package_of(dep) != package_of(name))
    for deps in list(packages.values()):
        for dep in deps:
            packages.setdefault(dep, set())
    return packages


def test_every_module_is_in_a_layer():
    unplaced = sorted({package_of(name) for name in import_graph()} - {p for layer in LAYERS for p in layer})
    assert not unplaced, f"add these packages to a layer in LAYERS: {unplaced}"


def test_imports_only_go_down():
    bad = upward_imports(import_graph())
    assert not bad, "imports that go up a layer: " + "; ".join(f"{a} -> {b}" for a, b in bad)


def test_plain_modules_never_import_the_wiring():
    bad = sorted((name, dep) for name, deps in import_graph().items() if package_of(name) in PLAIN
                 for dep in deps if package_of(dep) in WIRING)
    assert not bad, bad


def test_no_cycle_between_packages():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "package cycle: " + " -> ".join(cycle)


def test_the_layer_rules_catch_a_violation():
    graph = {"barlab.generator.heads.mbm": {"barlab.lightning.optim"},       # up two layers
             "barlab.data.loaders": {"barlab.metrics.reference"},            # plain -> plain
             "barlab.generator.image_generator": {"barlab.tokenizer.checkpoint"},  # the allowed one
             "barlab.pipeline.run": {"barlab.runtime.run_state"}}            # down: fine
    assert upward_imports(graph) == [("barlab.data.loaders", "barlab.metrics.reference"),
                                     ("barlab.generator.heads.mbm", "barlab.lightning.optim")]
    assert find_cycle(package_graph({"barlab.utils.a": {"barlab.metrics.b"}, "barlab.metrics.b": {"barlab.utils.c"},
                                     "barlab.utils.c": set()})) == ["barlab.metrics", "barlab.utils", "barlab.metrics"]


PROTOCOL_NAMES = {"main", "run", "plot"}  # each entry point / benchmark module provides its own


def test_no_two_public_functions_or_classes_share_a_name():
    seen: dict[str, list[str]] = {}
    for name, path in module_files().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") \
                    and node.name not in PROTOCOL_NAMES:
                seen.setdefault(node.name, []).append(name)
    shared = {symbol: modules for symbol, modules in seen.items() if len(modules) > 1}
    assert not shared, shared


def test_every_package_has_a_docstring():
    missing = [name for name, path in module_files().items()
               if path.name == "__init__.py" and not ast.get_docstring(ast.parse(path.read_text()))]
    folders = {p.parent for p in PACKAGE.rglob("*.py")}
    no_init = sorted(str(folder.relative_to(PACKAGE.parent)) for folder in folders
                     if not (folder / "__init__.py").is_file())
    assert not missing and not no_init, (missing, no_init)
