"""The package's imports flow one way: workflow -> eqpo.pipeline (rule adapters) -> analysis and the
backends (cpu, verl_ext, trl, data, demo) -> the library (estimators, grouping, reward, metrics,
settings). Read from the source with ast, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "eqpo"
# The method itself: what users' own code and every backend call. It imports nothing above it.
LIBRARY = {"eqpo.advantages", "eqpo.groups", "eqpo.rewards", "eqpo.metrics", "eqpo.vocabularies", "eqpo.methods",
           "eqpo.run_files", "eqpo.run_settings", "eqpo.jsonl", "eqpo.base_models"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every eqpo module ``path`` imports (``from x import y`` counts as x.y when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("eqpo")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("eqpo"):
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_nothing_in_the_package_imports_the_rule_adapters():
    offenders = sorted(m for m, deps in GRAPH.items() if "eqpo.pipeline" in deps)
    assert offenders == [], f"{offenders} import eqpo.pipeline, the top layer of rule adapters"


def test_the_library_imports_only_the_library():
    for module in sorted(LIBRARY):
        above = sorted(GRAPH[module] - LIBRARY)
        assert above == [], f"{module} imports {above}, above the library"


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_graph_is_read_correctly():
    """The reader itself: known edges of the package are found (relative and absolute imports)."""
    assert "eqpo.jsonl" in GRAPH["eqpo.analysis.collect"]  # from .. import jsonl
    assert "eqpo.analysis.runtime" in GRAPH["eqpo.analysis.figures"]  # from .runtime import ...
    assert "eqpo.base_models" in GRAPH["eqpo.verl_ext.launch"]  # from eqpo import base_models
    assert "eqpo.advantages" in GRAPH["eqpo.analysis.paper_tables"]
