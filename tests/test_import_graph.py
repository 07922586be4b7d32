"""The modules of fuzzcache/ and strategies/ import one another without a cycle: each module
stands above what it uses.

The graph is read from the source with ``ast``: every ``import x`` and ``from x import y``
anywhere in a file (a deferred import inside a function is an edge too), with ``from package
import name`` pointing at the submodule when ``name`` is one.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"fuzzcache": "fuzzcache", "strategies": "fuzzcache.strategies"}  # folder -> its package (pyproject's package-dir)


def module_files() -> dict[str, Path]:
    """Module name -> its file, for every module of PACKAGES (a package is its __init__.py)."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = (package, *path.relative_to(ROOT / folder).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that the file of module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""  # a relative import's package
            source = ".".join(filter(None, (base, node.module)))
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return found & modules.keys()


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of PACKAGES it imports."""
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its modules, the first one repeated at the end; None if none."""
    done: set[str] = set()  # modules on no cycle

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for child in sorted(graph[module]):
            if cycle := visit(child, path + [module]):
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module, []):
            return cycle
    return None


def test_graph_is_read_from_every_module():
    graph = import_graph()
    assert {"fuzzcache", "fuzzcache.targets", "fuzzcache.isolation", "fuzzcache.strategies.engine"} <= graph.keys()
    assert "fuzzcache.guard" in graph["fuzzcache.isolation"]  # `from fuzzcache import guard`: the submodule
    assert "fuzzcache.threads" in graph["fuzzcache.isolation"]  # imported inside a function


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
