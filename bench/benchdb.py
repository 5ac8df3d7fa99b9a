"""A throwaway PostgreSQL database for a benchmark run (the scripts import this sibling)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


@contextlib.asynccontextmanager
async def pg_database(admin_url: str) -> AsyncIterator[str | None]:
    """A fresh database on the server of admin_url (None when unreachable); dropped after."""
    import asyncpg

    name = "bench_" + secrets.token_hex(4)
    try:
        conn = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"postgresql: skipped, {admin_url} unreachable ({type(exc).__name__}: {exc})")
        yield None
        return
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(admin_url)
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        with contextlib.suppress(Exception):
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close(timeout=5)


@contextlib.asynccontextmanager
async def database_url(db: str, admin_url: str, sqlite_file: Path) -> AsyncIterator[str | None]:
    """The URL a run uses: the SQLite file, or a throwaway PostgreSQL database (None when the
    server is unreachable)."""
    if db == "sqlite":
        yield f"sqlite+aiosqlite:///{sqlite_file}"
        return
    async with pg_database(admin_url) as url:
        yield url


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user and system) a process has used, from /proc (Linux); with
    `children`, those of its ended children too."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15 if children else 13]) / os.sysconf(
        "SC_CLK_TCK")


def postgres_seconds() -> float:
    """CPU seconds the local PostgreSQL server's processes have used (and their ended
    children's)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(pid), children=True)
    return total
