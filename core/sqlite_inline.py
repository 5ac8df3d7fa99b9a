"""SQLite statements run on the event loop's own thread, with no thread hop per statement.

aiosqlite sends every call (execute, fetch, commit) to a worker thread and back. Each hop is
two thread wake-ups; where system calls are dear, as on these sandboxed machines, a hop costs
more CPU than the statement itself (measured: about 0.3 ms a hop against 0.06 ms for a
`SELECT 1` through SQLAlchemy).

A statement on a local WAL database takes microseconds and does not wait for other
connections, with two exceptions, both handled so that the loop never sleeps inside SQLite:

- Taking the write lock (`BEGIN IMMEDIATE`) while another process holds it: `core.db` sets
  a short busy timeout on these connections and retries BEGIN with `asyncio.sleep` between
  tries, up to the configured busy timeout.
- Checkpoints: SQLite's automatic checkpoint after a commit is PASSIVE (it never waits).

The connection object is aiosqlite's own (so SQLAlchemy's aiosqlite dialect drives it
unchanged), with its thread hop taken out. It relies on aiosqlite's `_execute` and
`_connection` (pinned in pyproject.toml; tests/test_db.py exercises both).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Any

import aiosqlite

# The longest any one statement may wait in SQLite's busy handler on these connections. Only
# a writer of another process can make a statement wait; BEGIN IMMEDIATE, the one that
# usually does, retries asynchronously instead (core.db).
INLINE_BUSY_TIMEOUT_MS = 20


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run directly, without its worker thread."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Generator[Any, None, InlineConnection]:
        return self._connect().__await__()

    def stop(self) -> None:  # type: ignore[override]
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def inline_creator(database: str, **kwargs: Any) -> Callable[[], Awaitable[InlineConnection]]:
    """An `async_creator` for create_async_engine: opens InlineConnections to `database`."""
    # Autocommit mode at the driver: SQLAlchemy's BEGIN (core.db) starts each transaction.
    connector = partial(sqlite3.connect, database, isolation_level=None,
                        check_same_thread=False, timeout=INLINE_BUSY_TIMEOUT_MS / 1000, **kwargs)

    async def create() -> InlineConnection:
        return await InlineConnection(connector)

    return create
