"""The package boundary the README states: `export/` works on any `.keras` without `zoo/`."""

import subprocess
import sys
from pathlib import Path

import export


def test_importing_every_export_module_imports_no_zoo_module():
    modules = sorted(f"export.{p.stem}" for p in Path(export.__file__).parent.glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'zoo' or m.startswith('zoo.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(modules) > 15


def test_no_export_module_imports_zoo_even_inside_a_function():
    import ast

    offenders = []
    for path in sorted(Path(export.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n == "zoo" or n.startswith("zoo.")]
    assert not offenders


def test_benchmarks_import_neither_tests_nor_each_other():
    """Shared benchmark set-up lives in benchmarks/_common.py; a script imports it, never tests/ or another script."""
    import ast

    folder = Path(export.__file__).parent.parent / "benchmarks"
    scripts = {p.stem for p in folder.glob("*.py")} - {"_common"}
    offenders = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in scripts | {"tests"} or n.startswith("benchmarks.")]
    assert not offenders
    assert len(scripts) > 5
