"""The package's import graph: layers that only import downward, no circle at import time, and a core that needs
torch alone (slowed_plugin/core/__init__.py states the rule)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "slowed_plugin"
FILES = sorted(PACKAGE.rglob("*.py"))

# The applications: each stands on the library and on none of the others (cli.py, the entry point, dispatches to
# them by name).
APPS = {"axolotl", "bench", "cli", "demo", "doctor", "inspector", "quickstart", "recipes_cli"}
# Area (a folder of slowed_plugin/, or a top-level module) -> areas it must never import, even lazily (an upward
# import). Every area has a row: test_every_area_has_a_row fails when a new one is added without its rule.
FORBIDDEN: dict[str, set[str]] = {
    "core": APPS | {"trainer", "evaluation", "rules", "anchor"},
    "anchor": APPS | {"trainer"},
    "evaluation": APPS | {"trainer", "rules"},
    "rules": APPS | {"trainer"},
    "trainer": APPS,
    "axolotl": APPS - {"axolotl"},
    "bench": APPS - {"bench"},
    "demo": APPS - {"demo", "inspector"},  # the demo shows the inspector's view of its models
    "doctor": APPS - {"doctor", "bench"},
    "inspector": (APPS - {"inspector"}) | {"trainer"},
    "quickstart": APPS - {"quickstart"},
    "recipes_cli": APPS - {"recipes_cli"},
    "cli": set(),
    # The foundation under everything: settings, validation, files, logging, versions, the tiny models.
    **{
        name: APPS | {"trainer", "core", "rules", "evaluation"}
        for name in ("config", "files", "log", "machine", "monitor", "quiet", "tiny", "validate", "versions")
    },
}
# Import circles known, each to be removed with its fix (the demo's two of issue 32 are fixed: none is left).
# test_no_import_circle fails on a circle not listed here and on a listed one that is gone.
KNOWN_CIRCLES: list[set[str]] = []
# What core modules may import at module level besides the standard library and each other.
CORE_THIRD_PARTY = {"torch"}
CORE_SIBLINGS = {"slowed_plugin.validate", "slowed_plugin.log"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): path for path in FILES}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module):
    """``(node, at module level)`` for every import the module can run: the whole tree (functions, methods,
    branches), without the ``if TYPE_CHECKING:`` blocks, which never run."""
    stack = [(node, True) for node in reversed(tree.body)]
    while stack:
        node, at_top = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack += [(child, at_top) for child in reversed(node.orelse)]
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, at_top
            continue
        inside = at_top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        # Module-level `if`/`try`/`with` bodies run at import; a class body too.
        stack += [(child, inside) for child in reversed(list(ast.iter_child_nodes(node)))]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every import in ``path``, relative ones resolved; a
    ``from package import submodule`` names the submodule as well as the package."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node, at_top in _import_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, at_top))
            found += [(f"{name}.{alias.name}", at_top) for alias in node.names if f"{name}.{alias.name}" in MODULES]
        else:
            found += [(alias.name, at_top) for alias in node.names]
    return found


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_area_has_a_row():
    areas = {_area(_module(path)) for path in FILES} - {"", "data"}  # data/ holds files only
    assert areas == set(FORBIDDEN), (
        f"missing rows {sorted(areas - set(FORBIDDEN))}, stale {sorted(set(FORBIDDEN) - areas)}"
    )


def test_no_upward_import():
    wrong = [
        f"{_module(path)} imports {name}"
        for path in FILES
        for name, _ in _imports(path)
        if name.startswith("slowed_plugin.") and _area(name) in FORBIDDEN.get(_area(_module(path)), ())
    ]
    assert not wrong, wrong


def test_core_needs_torch_alone_at_import():
    stdlib = sys.stdlib_module_names
    wrong = []
    for path in (PACKAGE / "core").rglob("*.py"):
        for name, at_top in _imports(path):
            root = name.split(".")[0]
            if name.startswith("slowed_plugin."):
                ok = name.startswith("slowed_plugin.core") or name in CORE_SIBLINGS
            else:
                ok = root in stdlib or root == "__future__" or (root in CORE_THIRD_PARTY) or not at_top
            if not ok:
                wrong.append(f"{_module(path)} imports {name}" + ("" if at_top else " (lazily)"))
    assert not wrong, wrong
    text = "\n".join(path.read_text(encoding="utf-8") for path in (PACKAGE / "core").rglob("*.py"))
    assert "_fingerprint" not in text and "import datasets" not in text  # datasets belong to the trainer


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside a function (a lazy import still ties
    the two modules together). A submodule's import of its own package is no edge: Python runs the package first."""
    return {
        module: {
            name
            for name, _ in _imports(path)
            if name in MODULES and name != module and not module.startswith(name + ".")
        }
        for module, path in MODULES.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_graph_sees_imports_inside_functions():
    graph = _graph()
    # doctor/cli.py imports its checks inside `run` (the parser stays light): edges all the same.
    assert "slowed_plugin.doctor.bench" in graph["slowed_plugin.doctor.cli"]
    # `from slowed_plugin.bench import step_pairs`-style imports name the submodule, not only the package.
    assert "slowed_plugin.bench.step_pairs" in graph["slowed_plugin.doctor.bench"]
    # slowed_plugin/__init__.py names its lazy classes under TYPE_CHECKING only: no edge, no import at run time.
    assert "slowed_plugin.axolotl.plugin" not in graph["slowed_plugin"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circle():
    """No circle anywhere, inside a folder too, counting imports inside functions."""
    circles = _circles(_graph())
    new = [" <-> ".join(sorted(c)) for c in circles if c not in KNOWN_CIRCLES]
    gone = [" <-> ".join(sorted(c)) for c in KNOWN_CIRCLES if c not in circles]
    assert not new, f"import circles: {new}"
    assert not gone, f"fixed, remove from KNOWN_CIRCLES: {gone}"
