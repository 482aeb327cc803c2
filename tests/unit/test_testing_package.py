"""``embedforge.testing`` holds helpers for tests and benchmarks only: the product never imports it."""

from __future__ import annotations

import ast


def _imported_modules(path, package_parts: list[str]):
    """Every module an ``import`` / ``from ... import`` in ``path`` names, relative imports made absolute
    (``from .. import testing`` in ``embedforge/serving/x.py`` gives ``embedforge.testing``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package_parts[: len(package_parts) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def test_no_product_module_imports_embedforge_testing(repo_root):
    package = repo_root / "platform" / "embedforge"
    assert (package / "testing" / "__init__.py").is_file()
    offenders = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel.parts[0] == "testing":
            continue
        parts = ["embedforge", *rel.parts[:-1]]  # the package the module sits in
        for module in _imported_modules(path, parts):
            if module == "embedforge.testing" or module.startswith("embedforge.testing."):
                offenders.append(f"{rel.as_posix()} imports {module}")
    assert offenders == []
