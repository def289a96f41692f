"""The package's folders are its layers, and imports flow one way down them:

    eqpo.workflow  (rule adapters: what workflow/scripts call)
    eqpo.analysis  (run files -> tables and figures)
    eqpo.backends.{cpu,verl,trl}  (training and prediction; no backend imports another)
    eqpo.data      (datasets, the demo cohort, the verl export)
    eqpo.runs      (a run's settings, files, logs, base-model facts)
    eqpo.core      (the method: estimators, grouping, reward, metrics; imports nothing above it)

Read from the source with ast, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "eqpo"
LAYERS = ["core", "runs", "data", "backends", "analysis", "workflow"]  # bottom to top


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


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "eqpo"


def backend(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "backends" else None


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_lives_in_a_layer():
    loose = sorted(m for m in MODULES if m != "eqpo" and layer(m) not in LAYERS)
    assert loose == [], f"{loose} sit outside the layer folders {LAYERS}"


@pytest.mark.parametrize("name", LAYERS)
def test_a_layer_imports_only_layers_below_it(name):
    rank = LAYERS.index(name)
    upward = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        if layer(m) == name
        for d in deps
        if layer(d) in LAYERS and LAYERS.index(layer(d)) > rank
    )
    assert upward == [], f"imports that run up from {name}: {upward}"


def test_no_backend_imports_another():
    crossing = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        for d in deps
        if backend(m) and backend(d) and backend(m) != backend(d)
    )
    assert crossing == [], crossing


def test_the_package_root_exposes_only_the_core():
    assert {layer(d) for d in GRAPH["eqpo"]} <= {"core"}


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_reader_sees_function_level_and_relative_imports():
    # the checks above are only as good as the import reader: two imports known to exist
    assert "eqpo.backends.cpu.trainer" in GRAPH["eqpo.workflow.pipeline"]  # inside a function
    assert "eqpo.core.advantages" in GRAPH["eqpo"]


# Settings are resolved once, at the workflow boundary: a rule hands its script plain values (for a
# run, eqpo.runs.settings.RunSettings.as_dict()), and neither the scripts nor the rule adapters nor
# the backends read the config object themselves.
SCRIPTS = SRC.parent / "workflow" / "scripts"
SETTINGS_READERS = ("train_settings", "estimator_options", "run_reward", "reproduction_options", "load_config")


def _config_reads(path: Path) -> list[str]:
    """``snakemake.config`` attribute reads in a file."""
    tree = ast.parse(path.read_text())
    return [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "config"
        and isinstance(node.value, ast.Name)
        and node.value.id == "snakemake"
    ]


def test_no_script_or_adapter_reads_the_snakemake_config():
    files = [*sorted(SCRIPTS.glob("*.py")), *sorted((SRC / "eqpo" / "workflow").glob("*.py"))]
    assert len(files) > 20
    assert [hit for path in files for hit in _config_reads(path)] == []


def _calls(path: Path, names: tuple[str, ...]) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.relative_to(SRC)}:{node.lineno} {node.func.id if isinstance(node.func, ast.Name) else node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) in names or getattr(node.func, "attr", None) in names)
    ]


def test_backends_resolve_no_settings_from_a_config():
    """The backends are handed typed settings; only a command-line entry point (``main``) loads a
    config, and it builds the settings there."""
    backends = sorted((SRC / "eqpo" / "backends").rglob("*.py"))
    found = [hit for path in backends for hit in _calls(path, SETTINGS_READERS) if not _in_main(path, hit)]
    assert found == []


def _in_main(path: Path, hit: str) -> bool:
    """Whether the call of ``hit`` (file:line name) sits inside a function named ``main``."""
    line = int(hit.split(":")[1].split()[0])
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.FunctionDef) and node.name == "main" and node.lineno <= line <= node.end_lineno
        for node in ast.walk(tree)
    )
