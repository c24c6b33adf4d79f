"""The package's import graph: layers that only import downward, no circle at import time, and a core that needs
torch alone (slowed_plugin/core/__init__.py states the rule)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "slowed_plugin"

# Area -> areas it must never import, even lazily (an upward import).
FORBIDDEN = {
    "core": {"trainer", "axolotl", "demo", "evaluation", "rules", "anchor", "inspector", "cli", "doctor"},
    "anchor": {"trainer", "axolotl", "demo", "inspector", "cli"},
    "evaluation": {"trainer", "axolotl", "demo", "rules", "cli"},
    "rules": {"trainer", "axolotl", "demo", "cli"},
    "trainer": {"axolotl", "demo", "inspector", "cli"},
}
# What core modules may import at module level besides the standard library and each other.
CORE_THIRD_PARTY = {"torch"}
CORE_SIBLINGS = {"slowed_plugin.checks", "slowed_plugin.log"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every import in ``path``, relative ones resolved."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
    return found


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


FILES = sorted(PACKAGE.rglob("*.py"))


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


def test_no_circle_at_import_time():
    modules = {_module(path): path for path in FILES}
    graph = {
        module: {name for name, at_top in _imports(path) if at_top and name in modules and name != module}
        for module, path in modules.items()
    }
    # A `from package import name` of a submodule counts as an edge to the package, which is what Python runs.
    state: dict[str, int] = {}
    circle: list[str] = []

    def visit(module: str, stack: list[str]) -> bool:
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1 and not module.startswith(target + "."):  # a package's own submodule
                circle.extend(stack[stack.index(target) :] + [module, target] if target in stack else [module, target])
                return True
            if target not in state and visit(target, stack + [target]):
                return True
        state[module] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, [module]):
            break
    assert not circle, " -> ".join(circle)
