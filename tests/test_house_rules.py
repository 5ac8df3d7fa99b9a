"""House rules a reviewer would otherwise check by hand (see the persistence issue): core/ uses
no library's private API and hangs no listener on SQLAlchemy's global classes, no module keeps
state in session.info, and no module grows past what one can read in a sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "bot", "channels", "billing", "rooms", "admin_web")
MAX_LINES = 400
# SQLAlchemy's classes whose listeners would change every session, engine or pool of the
# process (an engine's or a pool's own instance is fine).
GLOBAL_TARGETS = {"Session", "AsyncSession", "sessionmaker", "async_sessionmaker", "Mapper",
                  "Engine", "Connection", "Pool", "Query"}


def _modules(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def test_core_uses_no_private_attribute_of_anything_but_itself() -> None:
    found = []
    for path in _modules("core"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    found.append(f"{_where(path, node)} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("core"):
                found += [f"{_where(path, node)} import {alias.name} from {node.module}"
                          for alias in node.names if alias.name.startswith("_")]
    assert found == [], "\n".join(found)


def test_nothing_listens_on_sqlalchemys_global_classes() -> None:
    found = []
    for path in _modules(*PACKAGES):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("listen", "listens_for") and node.args:
                target = node.args[0]
                name = target.id if isinstance(target, ast.Name) else \
                    target.attr if isinstance(target, ast.Attribute) else None
                if name in GLOBAL_TARGETS:
                    found.append(f"{_where(path, node)} listens on {name}")
    assert found == [], "\n".join(found)


def test_no_module_keeps_state_in_session_info() -> None:
    found = []
    for path in _modules(*PACKAGES):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr == "info" \
                    and "session" in ast.unparse(node.value).lower():
                found.append(f"{_where(path, node)} {ast.unparse(node)}")
    assert found == [], "\n".join(found)


def test_no_module_is_longer_than_one_sitting() -> None:
    long = [f"{path.relative_to(ROOT)}: {count} lines" for path in _modules(*PACKAGES)
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert long == [], "\n".join(long)


# Markdown links, and paths in backticks that start like a path: what the docs point a reader at.
_LINK = re.compile(r"\]\(([^)\s]+)\)"
                   r"|`(\.{1,2}/[^`\s]+|[\w.-]+/[\w./-]+\.(?:md|py|toml|j2|html|js))`")


def test_the_docs_point_only_at_files_in_the_repository() -> None:
    """A fresh clone has nothing beside it: the README and the docs must stand alone."""
    found = []
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench/README.md"]
    assert (ROOT / "docs/ARCHITECTURE.md") in docs
    for doc in docs:
        for match in _LINK.finditer(doc.read_text(encoding="utf-8")):
            target = (match.group(1) or match.group(2)).split("#")[0]
            if not target or "://" in target or target.startswith(("mailto:", "/")):
                continue
            resolved = (doc.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not (
                    resolved.exists() or (ROOT / target).exists()):
                found.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not found, found
