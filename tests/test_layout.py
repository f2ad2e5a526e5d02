"""The layout is the architecture: imports point one way, and no module imports itself back through others."""

import ast
from pathlib import Path

import pytest

from detector.paths import ROOT

PACKAGES = ("detector", "training", "evaluation", "handler", "bench", "tests", "container", "client")


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports (dotted names), from its import statements."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] in PACKAGES}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).glob("*.py"))}
GRAPH = {name: {i for i in project_imports(path) if i in MODULES} for name, path in MODULES.items()}


@pytest.mark.parametrize(
    "package, allowed",
    [
        ("detector", {"detector"}),
        ("handler", {"handler", "detector"}),
        ("client", {"client", "detector"}),
        ("bench", {"bench", "container", "detector", "handler", "training", "evaluation"}),
    ],
)
def test_imports_point_one_way(package, allowed):
    for name, imports in GRAPH.items():
        if name.startswith(f"{package}."):
            assert {i.split(".")[0] for i in imports} <= allowed, f"{name} imports {sorted(imports)}"


def test_no_import_circle():
    def visit(name: str, path: tuple[str, ...]) -> None:
        for imported in GRAPH[name]:
            assert imported not in path, " -> ".join((*path, imported))
            visit(imported, (*path, imported))

    for name in GRAPH:
        visit(name, (name,))


def test_the_handler_is_only_torchserve_io():
    """The handler holds no image or model logic of its own: it imports the core's one batch entry point."""
    imports = project_imports(ROOT / "handler" / "corruption_handler.py")
    assert "detector.inference.CorruptionDetector" in imports
    assert not {"torchvision", "PIL"} & {line.split()[1].split(".")[0] for line in
                                         (ROOT / "handler" / "corruption_handler.py").read_text().splitlines()
                                         if line.startswith(("import ", "from "))}  # fmt: skip
