"""Imports point downhill: every module imports, no import cycle (module- or function-level
imports alike), and no library module imports the CLI."""

import ast
import graphlib
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "selfsup"
CLI = "selfsup.cli"


def module_names() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__":
            names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (``from a import b``
    counts as importing ``a.b`` when that is a module; importing a child module does not count
    as importing its package's ``__init__``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in known else base)
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def is_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


@pytest.mark.parametrize("name", sorted(module_names()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycles():
    graph = import_graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_no_library_module_imports_the_cli():
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if not is_cli(m) for t in ts if is_cli(t))
    assert not bad, f"library modules import the CLI: {bad}"


def test_the_checker_sees_cycles_and_cli_imports(tmp_path):
    """The checks above would fail on a cycle: the graph of a two-module loop has one."""
    graph = {"selfsup.a": {"selfsup.b"}, "selfsup.b": {"selfsup.a"}}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())
    known = {"selfsup.x": tmp_path / "x.py", "selfsup.cli": tmp_path / "cli.py"}
    (tmp_path / "x.py").write_text("def f():\n    from selfsup.cli import main\n")
    assert imported_modules("selfsup.x", tmp_path / "x.py", known) == {"selfsup.cli"}
