"""The layout rule import-linter cannot state: it takes no subpackage of an external package
(``sqlalchemy.dialects``) as a forbidden module. docs/decisions.md, "Layout and layers"."""

from __future__ import annotations

import ast
from pathlib import Path

import billingworker

DOMAIN = Path(billingworker.__file__).parent / "domain"


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_domain_imports_no_sqlalchemy_dialect():
    # Given every module of the domain
    modules = sorted(DOMAIN.rglob("*.py"))
    assert modules
    # When their imports are read
    offending = [f"{path.relative_to(DOMAIN)}: {name}" for path in modules for name in _imported_modules(path)
                 if name == "sqlalchemy.dialects" or name.startswith("sqlalchemy.dialects.")]
    # Then none names sqlalchemy.dialects: dialect-specific SQL lives in billingworker.store
    assert offending == []
