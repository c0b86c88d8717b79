"""The architecture, checked: layers import only downward, and SQL stays in the stores.

`libs/common` is a house of floors, each a sub-package: `core` at the bottom, then `domain`,
`adapters`, `persistence`, `usecases` (shared by several services), `messaging` and `tools`
on top. A module may import its own floor and the floors below, never above; services sit
above every floor.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from libs.common.domain.orders import Order
from libs.common.persistence.db import Q

ROOT = Path(__file__).resolve().parents[2]
COMMON = ROOT / "libs" / "common"
FLOORS = ["core", "domain", "adapters", "persistence", "usecases", "messaging", "tools"]
# Named queries may be run only by these modules, each the owner of its tables.
STORE_MODULES_MAX = 6


def code_files() -> list[Path]:
    """Every Python module of the product (not tests, not simulators)."""
    return sorted(
        p
        for base in (ROOT / "libs", ROOT / "services")
        for p in base.rglob("*.py")
        if "migrations" not in p.parts
    )


def imported_modules(path: Path) -> list[str]:
    """The absolute module names a file imports (`from x import y` counts x and x.y)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def floor_of(module: str) -> int | None:
    """The floor index of a libs.common module name, or None outside libs.common."""
    parts = module.split(".")
    if parts[:2] != ["libs", "common"] or len(parts) < 3:
        return None
    return FLOORS.index(parts[2]) if parts[2] in FLOORS else None


def test_every_common_module_lives_on_a_floor() -> None:
    loose = [p.name for p in COMMON.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    assert sorted(d.name for d in COMMON.iterdir() if (d / "__init__.py").exists()) == sorted(
        FLOORS
    )


def test_imports_point_only_downward() -> None:
    upward = []
    for path in COMMON.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = floor_of(module)
        if own is None:
            continue
        for name in imported_modules(path):
            if name.startswith("services"):
                upward.append(f"{module} -> {name}")
            target = floor_of(name)
            if target is not None and target > own:
                upward.append(f"{module} -> {name}")
    assert upward == []


def modules_running_named_queries() -> set[str]:
    """Files that read a named query (`Q.<name>`)."""
    found = set()
    for path in code_files():
        if re.search(r"\bQ\.[a-z_]+\b", path.read_text()):
            found.add(str(path.relative_to(ROOT)))
    return found


def test_named_queries_run_only_in_the_stores() -> None:
    modules = modules_running_named_queries()
    assert all(m.startswith("libs/common/persistence/") for m in modules), sorted(modules)
    assert len(modules) <= STORE_MODULES_MAX, sorted(modules)


def test_every_named_query_is_used() -> None:
    text = "\n".join(p.read_text() for p in code_files())
    unused = [name for name in Q.names() if not re.search(rf"\bQ\.{name}\b", text)]
    assert unused == []


def test_no_sql_outside_the_stores() -> None:
    """Inline SQL strings belong to the stores too (the simulators and tests may probe)."""
    statement = re.compile(r"[\"'](SELECT|INSERT INTO|UPDATE|DELETE FROM) ", re.IGNORECASE)
    offenders = [
        str(p.relative_to(ROOT))
        for p in code_files()
        if "persistence" not in p.parts and statement.search(p.read_text())
    ]
    assert offenders == []


def test_no_order_column_is_read_by_string_key_outside_the_store() -> None:
    columns = {f.name for f in dataclasses.fields(Order)}
    offenders = []
    for path in code_files():
        if "persistence" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and node.slice.value in columns
                and isinstance(node.value, ast.Name)
                and node.value.id in {"order", "row", "earlier", "o", "r", "rec", "record"}
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_no_database_record_leaves_persistence() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in code_files()
        if "persistence" not in p.parts and "asyncpg.Record" in p.read_text()
    ]
    assert offenders == []


def test_nothing_points_outside_the_repository() -> None:
    """Code and docs cite the repository's own files, never a seed or ../shared."""
    pattern = re.compile(r"\.\./shared|\bthe seed\b|\bseed\b", re.IGNORECASE)
    texts = [*code_files(), ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    offenders = [str(p.relative_to(ROOT)) for p in texts if pattern.search(p.read_text())]
    assert offenders == []
