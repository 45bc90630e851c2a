"""sot_jax's modules import each other without a circle. Only imports that run when a module is imported count
(imports inside functions run later, and `if TYPE_CHECKING:` ones never); a package importing its own submodules
is an edge to each submodule, not to itself."""

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sot_jax"


def module_files() -> dict[str, Path]:
    """Every module of sot_jax by dotted name (a package by its own name, from its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_time_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif _is_type_checking(node):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules an import statement names: `from pkg import sub` names pkg.sub when sub is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package upwards
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph() -> dict[str, set[str]]:
    """sot_jax's import-time imports of its own modules, module -> imported modules."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in _import_time_imports(ast.parse(path.read_text(), str(path))):
            names = _imported_modules(node, module, is_package)
            if isinstance(node, ast.ImportFrom):  # each alias is a submodule, or a name of the module imported from
                submodules = [name for name in names[:-1] if name in files]
                names = submodules if len(submodules) == len(names) - 1 else [*submodules, names[-1]]
            targets |= {name for name in names if name in files and name != module}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path a -> ... -> a in `graph`, or None when it has no cycle."""
    finished: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                return path[path.index(target) :] + [target]
            if target not in finished and (cycle := visit(target)):
                return cycle
        path.pop()
        finished.add(node)
        return None

    for node in sorted(graph):
        if node not in finished and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_sot_jax_has_no_import_cycle():
    graph = import_graph()
    # The graph sees `from package import submodule`, `from module import name`, and a package's own submodules.
    assert {"sot_jax.data.brackets", "sot_jax.errors"} <= graph["sot_jax.data.text"]
    assert "sot_jax.models.registry" in graph["sot_jax.models"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
