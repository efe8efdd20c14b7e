"""The package's layers: each imports only those below it, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_fewshot

ROOT = Path(napari_fewshot.__file__).resolve().parent
#: What each part of the package may import of the package (besides itself; ``<root>``: ``__version__``).
ALLOWED = {
    "io": set(),
    "core": {"io"},
    "evaluation": {"core", "io"},
    "train": {"<root>", "core", "io"},
    "_napari": {"<root>", "core", "io", "train"},
    "cli": {"<root>", "_napari", "core", "evaluation", "io", "train"},
    "<root>": {"core"},
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = ("napari_fewshot", *path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``module`` imports anywhere in its code, except under ``if TYPE_CHECKING``."""
    found: set[str] = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    class Imports(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names if alias.name in modules)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = ".".join([*package[: len(package) - node.level + 1], node.module or ""] if node.level
                            else [node.module or ""]).strip(".")
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if name in modules else base)

    Imports().visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in modules and name != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def test_each_part_imports_only_the_parts_below_it():
    wrong = sorted(f"{module} imports {imported}" for module, imports in _graph().items() for imported in imports
                   if _part(imported) != _part(module) and _part(imported) not in ALLOWED[_part(module)])
    assert not wrong, "; ".join(wrong)


def test_no_module_imports_itself_back():
    graph = _graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            module, path = stack.pop()
            for imported in graph[module]:
                if imported == start:
                    cycles.append(" -> ".join((*path, start)))
                elif imported not in seen:
                    seen.add(imported)
                    stack.append((imported, (*path, imported)))
    assert not cycles, cycles[0]


def test_the_widgets_parts_share_its_state_and_import_neither_each_other_nor_the_widget():
    parts = {f"napari_fewshot._napari.{name}" for name in ("segment_part", "correct_part", "refine_part", "export_part")}
    modules = _modules()
    for part in parts:
        source = modules[part].read_text(encoding="utf-8")
        imported = {name for name in modules if name.startswith("napari_fewshot._napari.")
                    and f"from .{name.rsplit('.', 1)[1]} import" in source}
        assert not imported & (parts | {"napari_fewshot._napari.widget"}), f"{part} imports {sorted(imported)}"
        assert "from .state import WidgetState" in source
