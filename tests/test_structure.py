"""The package layout the architecture promises: the library imports nothing from the builders or evaluation."""

from __future__ import annotations

import ast
from pathlib import Path

import onereason

LIBRARY = Path(onereason.__file__).parent
UPPER = ("data_builders", "evaluation")
DYNAMIC = {"import_module", "find_spec", "__import__"}


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in `path`: statements anywhere (lazy ones too) and
    `importlib.import_module` / `find_spec` / `__import__` calls with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in DYNAMIC and node.args and isinstance(node.args[0], ast.Constant):
                found.append((node.lineno, str(node.args[0].value)))
    return found


def test_the_library_imports_nothing_from_data_builders_or_evaluation():
    offenders = [
        f"{path.relative_to(LIBRARY.parent)}:{line} imports {module}"
        for path in sorted(LIBRARY.rglob("*.py"))
        for line, module in imported_names(path)
        if module.split(".")[0] in UPPER
    ]
    assert not offenders, "the library reaches up into the builders or evaluation:\n" + "\n".join(offenders)


def test_the_walk_sees_lazy_and_dynamic_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import importlib\n"
        "def f():\n"
        "    from evaluation.generate import BeamRanker\n"
        "    importlib.import_module('data_builders.tasks')\n",
        encoding="utf-8",
    )
    assert [m for _, m in imported_names(sample)] == [
        "importlib",
        "evaluation.generate",
        "data_builders.tasks",
    ]
