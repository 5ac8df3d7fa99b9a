"""Test helpers: drive the bot the way its users do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from core.engine import Engine
from core.messages import Inbound, Outbound


class Chat:
    """One person talking to the bot through the engine (like Rasa's CollectingOutputChannel)."""

    def __init__(self, engine: Engine, channel: str = "console", address: str = "tester") -> None:
        self.engine, self.channel, self.address = engine, channel, address
        self.received: list[Outbound] = []

    async def send(self, text: str = "", *, action: str | None = None,
                   attachments: tuple[str, ...] = (), provider_id: str | None = None
                   ) -> list[Outbound]:
        replies = await self.engine.receive(Inbound(
            channel=self.channel, address=self.address, text=text, action=action,
            attachments=attachments, provider_id=provider_id))
        self.received.extend(replies)
        return replies

    async def tap(self, label_part: str) -> list[Outbound]:
        """Tap the button whose label contains label_part on the last message that had one."""
        for message in reversed(self.received):
            for button in message.buttons:
                if label_part.lower() in button.label.lower():
                    return await self.send(action=button.payload)
        raise AssertionError(f"no button {label_part!r} in {self.received[-1:]}")

    @property
    def last(self) -> str:
        return self.received[-1].text if self.received else ""


def joined(replies: list[Outbound]) -> str:
    return "\n".join(r.text for r in replies)


@contextmanager
def _listening(engine: AsyncEngine, name: str,
               pick: Callable[..., Any]) -> Iterator[list[Any]]:
    seen: list[Any] = []

    def on_event(*args: Any) -> None:
        seen.append(pick(*args))

    event.listen(engine.sync_engine, name, on_event)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, name, on_event)


def recording_statements(engine: AsyncEngine) -> Any:
    """`with recording_statements(engine) as statements:` the SQL run meanwhile, in order."""
    return _listening(engine, "before_cursor_execute",
                      lambda conn, cursor, statement, *rest: statement)


def recording_executions(engine: AsyncEngine) -> Any:
    """`with recording_executions(engine) as runs:` (SQL, parameters) of each statement run
    meanwhile, in order."""
    return _listening(engine, "before_cursor_execute",
                      lambda conn, cursor, statement, parameters, *rest: (statement, parameters))


def counting_commits(engine: AsyncEngine) -> Any:
    """`with counting_commits(engine) as commits:` one entry per COMMIT meanwhile."""
    return _listening(engine, "commit", lambda conn: conn)


# Tables as big as the staff, not as the business: a scan of them is no cost that grows.
SMALL = ("mechanics", "admins")


async def scans(engine: AsyncEngine, runs: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(statement, plan line) for every scan of a growing table among `runs`' SELECTs, UPDATEs
    and DELETEs (a DELETE's plan includes the foreign keys' ON DELETE actions on the tables
    that point at it). Not INSERTs: their plans list the look-ups of rows pointing at the
    new one, which SQLite runs only while a foreign key stands violated mid-statement."""
    found = []
    async with engine.connect() as conn:
        for sql, params in runs:
            if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
                continue
            for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params):
                line = row[-1]
                table = line.split()[1] if line.startswith("SCAN ") else None
                if table is not None and table not in SMALL and "CONSTANT" not in line \
                        and "VIRTUAL TABLE" not in line:
                    found.append((" ".join(sql.split())[:2000], line))
    return found


async def pay_offline(client: Any, path: str) -> Any:
    """Pay on the offline test-mode page as a browser does: open it, post its form (with the
    form's token)."""
    import re

    page = await client.get(path)
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.text())
    return await client.post(path, data={"csrf": found.group(1) if found else ""})
