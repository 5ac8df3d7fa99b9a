"""Transcript rows kept as plain values and written in a few multi-row statements.

Every message in or out is a `messages` row (and, for a provider's channel, an `outbox` row
pointing at it). A busy transaction (the engine's group commit, a winner's accept closing 200
offers) writes hundreds of them; as ORM objects each costs far more than the row itself. So
they wait here, in the session, and go to the database together just before its next flush or
its commit: one INSERT for the messages (at a commit on PostgreSQL, a part of the commit's one
statement: core.sql.CombinedWrites), one for their outbox rows.

Keyed messages (offers, notices: queued at most once per dedupe_key) are written at once
instead, with what waits, because the caller must know whether each was queued: their outbox
rows go in after the messages, ON CONFLICT (dedupe_key) DO NOTHING, and the message of a key
already queued is deleted again (rare: a retry). One statement per table whatever the count.

A row's `id` is known once written. Code that reads the messages table in the transaction that
added them calls `write_pending` first. Inside a savepoint nothing waits: a rolled-back
savepoint must take its rows with it, so they are written at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from core.models import Message, OutboxItem
from core.sql import (
    Columns,
    bulk_insert_sync,
    insert_ids_sync,
    transaction_scoped,
    write_before_flush,
    writes_for,
)

_PENDING = "autodoctor.transcript.pending"
_IN_SAVEPOINT = "autodoctor.transcript.in_savepoint"


@dataclass(slots=True, eq=False)
class MessageRow:
    """One transcript row, as stored (the same attributes as core.models.Message)."""

    identity_id: int
    channel: str
    direction: str
    text: str
    created_at: datetime
    conversation_id: int | None = None
    consultation_id: int | None = None
    action: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    provider_id: str | None = None
    id: int | None = None  # set when written


# The columns a transcript row writes (all but the id).
_WRITTEN = ("identity_id", "conversation_id", "consultation_id", "direction", "channel", "text",
            "action", "body", "provider_id", "created_at")


@dataclass
class _Pending:
    messages: list[MessageRow] = field(default_factory=list)
    # Outbox rows to insert with their message's id.
    outbox: list[tuple[MessageRow, dict[str, Any]]] = field(default_factory=list)
    # Keyed outbox rows to insert with their message's id unless the key is queued already.
    keyed: list[tuple[MessageRow, dict[str, Any]]] = field(default_factory=list)


def add(session: AsyncSession | Session, row: MessageRow, *,
        outbox: dict[str, Any] | None = None) -> MessageRow:
    """Queue a transcript row (and its new outbox row's values) to be written before the
    session's next flush or its commit."""
    return _add(session, row, outbox=outbox)


async def add_keyed(session: AsyncSession,
                    rows: list[tuple[MessageRow, dict[str, Any]]]) -> dict[str, int]:
    """Write these messages now, each with its keyed outbox row (values with a dedupe_key),
    together with every row waiting. A key already queued keeps its row, and its message is not
    kept (its id stays None). Returns the outbox id of each key queued now."""
    for row, values in rows:
        _add(session, row, keyed=values)
    return await session.run_sync(_write)


def _add(session: AsyncSession | Session, row: MessageRow, *,
         outbox: dict[str, Any] | None = None, keyed: dict[str, Any] | None = None
         ) -> MessageRow:
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    pending: _Pending | None = sync.info.get(_PENDING)
    if pending is None:
        pending = sync.info[_PENDING] = _Pending()
    pending.messages.append(row)
    if outbox is not None:
        pending.outbox.append((row, outbox))
    elif keyed is not None:
        pending.keyed.append((row, keyed))
        return row  # written by add_keyed, with the rest
    nested = sync.get_nested_transaction()
    if nested is not None:
        # A savepoint rolled back must take the row with it: written now, and forgotten
        # (its id unset) if the savepoint is rolled back.
        _write(sync)
        sync.info.setdefault(_IN_SAVEPOINT, []).append((nested, row))
    return row


async def write_pending(session: AsyncSession) -> None:
    """Write the rows waiting in this session now (before reading them back)."""
    if session.sync_session.info.get(_PENDING):
        await session.run_sync(_write)


def _write(session: Session) -> dict[str, int]:
    pending: _Pending | None = session.info.pop(_PENDING, None)
    if pending is None or not pending.messages:
        return {}
    rows = pending.messages
    if not pending.keyed:
        # At a commit on PostgreSQL, a part of its one combined statement (core.sql.Writes).
        writes_for(session).insert(Message.__table__, Columns.of(rows, _WRITTEN),
                                   returning=("id",),
                                   then=lambda ids: _written(session, pending, ids))
        return {}
    # Keyed rows (add_keyed): written now, whatever the moment, for the caller to know which
    # keys were queued.
    nested = session.get_nested_transaction()
    conn = session.connection()
    _written(session, pending, insert_ids_sync(conn, Message.__table__,
                                               Columns.of(rows, _WRITTEN)))
    queued: dict[str, int] = dict(bulk_insert_sync(
        conn, OutboxItem.__table__,
        [{**values, "message_id": row.id} for row, values in pending.keyed],
        returning=("dedupe_key", "id"), conflict=("dedupe_key",)))
    unsent = [row for row, values in pending.keyed if values["dedupe_key"] not in queued]
    if unsent:
        conn.execute(delete(Message.__table__).where(
            Message.__table__.c.id.in_([row.id for row in unsent])))
        for row in unsent:
            row.id = None
    if nested is not None:
        session.info.setdefault(_IN_SAVEPOINT, []).extend(
            (nested, row) for row, values in pending.keyed if row.id is not None)
    return queued


def _written(session: Session, pending: _Pending, ids: list[int]) -> None:
    """The messages have their ids (in order): their outbox rows go in now."""
    for row, new_id in zip(pending.messages, ids, strict=True):
        row.id = new_id
    if pending.outbox:
        bulk_insert_sync(session.connection(), OutboxItem.__table__,
                         [{**values, "message_id": row.id} for row, values in pending.outbox])


def _unwritten(session: Session, previous: SessionTransaction) -> None:
    for savepoint, row in session.info.get(_IN_SAVEPOINT, ()):
        if savepoint is previous:
            row.id = None


write_before_flush(_write)
transaction_scoped(_PENDING, _IN_SAVEPOINT)  # after a rollback its waiting rows go with it
event.listen(Session, "after_soft_rollback", _unwritten)
