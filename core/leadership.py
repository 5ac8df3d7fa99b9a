"""One holder per name across the deployment ("send:telegram", "poll:telegram").

A role is a PostgreSQL session-level advisory lock, held on one dedicated connection for as
long as this process holds the role. Every `retry_seconds` the process checks that the
connection still answers (if not, it gives up every role and reconnects) and tries to take
the roles it wants and does not hold. When a holder dies, its connection closes and
PostgreSQL releases its locks, so another process takes over within `retry_seconds` (plus the
time the server takes to see the connection gone: at once for a killed process, whose socket
the kernel closes; up to TCP keepalive for a host that vanishes). A drain releases the roles
at once (`release`). No consensus of our own: PostgreSQL decides.

On SQLite (one process by design) every role is held from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.metrics import Metrics

log = logging.getLogger("autodoctor.leadership")

# The lock's key: the role's name within the schema, so deployments (and tests) sharing one
# PostgreSQL database in different schemas never hold each other's roles.
TRY_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended(current_schema() || ':' || :name,"
                " 0))")


@dataclass
class Role:
    held: asyncio.Event = field(default_factory=asyncio.Event)
    free: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.free.set()


class Leadership:
    """The deployment-wide roles this process wants, and which of them it holds now."""

    def __init__(self, engine: AsyncEngine, *, retry_seconds: float = 2.0,
                 metrics: Metrics | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.retry_seconds = retry_seconds
        self.metrics = metrics
        self.on_change = on_change
        # SQLite: one process by design, so this one holds every role.
        self.single = engine.dialect.name != "postgresql"
        self.roles: dict[str, Role] = {}
        self.released = False
        # A check and a release never use the connection at once.
        self._lock = asyncio.Lock()
        # The connection holding the locks, and its server process id (for logs and tests).
        self.connection: AsyncConnection | None = None
        self.backend_pid: int | None = None

    def want(self, name: str) -> None:
        """Ask for a role (before `check` or `run_forever` take it)."""
        if name not in self.roles:
            self.roles[name] = Role()
            if self.metrics is not None:
                self.metrics.roles_held.labels(name).set(0)
            if self.single:
                self._set(name, True)

    def holds(self, name: str) -> bool:
        role = self.roles.get(name)
        return role is not None and role.held.is_set()

    @property
    def held(self) -> list[str]:
        return sorted(name for name in self.roles if self.holds(name))

    async def wait_held(self, name: str) -> None:
        await self.roles[name].held.wait()

    async def wait_lost(self, name: str) -> None:
        await self.roles[name].free.wait()

    async def check(self) -> None:
        """One round: is the held connection alive (else give everything up), then try to take
        each role wanted and not held."""
        if self.single or not self.roles:
            return
        async with self._lock:
            if self.released:
                return
            try:
                if self.connection is None:
                    self.connection = await self.engine.connect()
                    await self.connection.execution_options(isolation_level="AUTOCOMMIT")
                    self.backend_pid = await self.connection.scalar(
                        text("SELECT pg_backend_pid()"))
                else:
                    await self.connection.execute(text("SELECT 1"))
                for name in self.roles:
                    if not self.holds(name) and await self.connection.scalar(
                            TRY_LOCK, {"name": name}):
                        self._set(name, True)
            except Exception as exc:  # noqa: BLE001 - a lost connection loses the roles
                if self.held:
                    log.warning("leadership connection lost (%s): giving up %s",
                                type(exc).__name__, ", ".join(self.held))
                await self._drop()

    async def run_forever(self) -> None:
        """Check every `retry_seconds` until released or cancelled."""
        while not self.released:
            await self.check()
            await asyncio.sleep(self.retry_seconds)

    async def release(self) -> None:
        """Give up every role now (drain, shutdown), so another process takes them at once."""
        self.released = True
        if not self.single:
            async with self._lock:
                await self._drop()

    async def _drop(self) -> None:
        """Close the connection: PostgreSQL releases every lock it held."""
        conn, self.connection, self.backend_pid = self.connection, None, None
        for name in self.roles:
            self._set(name, False)
        if conn is not None:
            with contextlib.suppress(Exception):
                # Never back into the pool: it would keep the locks.
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    def _set(self, name: str, held: bool) -> None:
        role = self.roles[name]
        if role.held.is_set() == held:
            return
        if held:
            role.free.clear()
            role.held.set()
        else:
            role.held.clear()
            role.free.set()
        log.info("role %s %s (pid %s)", name, "taken" if held else "given up",
                 self.backend_pid if held else "-")
        if self.metrics is not None:
            self.metrics.roles_held.labels(name).set(1 if held else 0)
        if self.on_change is not None:
            self.on_change()
