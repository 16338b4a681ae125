"""The layering the architecture promises, read from the import statements of every module.

- `shared/` is what both sides of every call use: it imports nothing from `services/`.
- Each service package (coordinator, student, teacher, trainer) talks to the others over HTTP only: it imports
  no other service package. The CLI (`services/cli/`) and the launcher, which start every service, may import them all.
- The sandbox's limits are a leaf: settings name them without importing the sandbox.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("coordinator", "student", "teacher", "trainer")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names, lazy imports inside functions included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_rules_see_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from services.student.app import create_app\n")
    assert "services.student.app" in imported_modules(module)


def test_shared_imports_nothing_from_services():
    offending = {str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.startswith("services"))
                 for path in modules_under("shared")}
    assert {path: found for path, found in offending.items() if found} == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_package_imports_no_other_service_package(service):
    others = tuple(f"services.{other}" for other in SERVICES if other != service)
    offending = {}
    for path in modules_under(f"services/{service}"):
        found = sorted(m for m in imported_modules(path) if m.startswith(others))
        if found:
            offending[str(path.relative_to(ROOT))] = found
    assert offending == {}


def test_settings_name_the_sandbox_limits_without_the_sandbox():
    from_the_sandbox = {m for m in imported_modules(ROOT / "shared" / "settings.py") if m.startswith("shared.sandbox")}
    assert from_the_sandbox <= {"shared.sandbox.limits", "shared.sandbox.limits.SandboxLimits"}
    # Importing the limits runs the package's __init__ too: neither may pull in the rest of the project.
    for leaf in ("__init__.py", "limits.py"):
        assert not any(m.startswith("shared.") for m in imported_modules(ROOT / "shared" / "sandbox" / leaf)), leaf


def test_no_test_module_imports_another_test_module():
    """Shared helpers live in helper modules or a package's conftest.py, never in a `test_*.py` another one imports
    (pytest would collect the imported fixtures twice and the two modules' runs would depend on each other)."""
    offending = {}
    for path in modules_under("tests"):
        found = sorted(m for m in imported_modules(path) if m.startswith("tests.") and ".test_" in f".{m}")
        if found:
            offending[str(path.relative_to(ROOT))] = found
    assert offending == {}
