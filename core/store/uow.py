"""The unit of work: one transaction, and everything it will write, in one place.

Services get a UnitOfWork. Its `session` is a plain SQLAlchemy AsyncSession, used as
documented by the cold paths (billing, dispatch, sweeps, the admin site). The rows the
conversation engine writes for every message are plain values recorded here instead (see
core.store.records): the intake and conversation changed, a new intake or checkout, the
transcript and its outbox rows. flush() writes them in one fixed order, visible in
`_write_pending`; commit() flushes, commits, and then wakes whoever waits for the new
messages, from one place.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Integer, String, Table, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.hub import Hub
from core.store import sql
from core.store.records import (
    MESSAGE_COLUMNS,
    OUTBOX_COLUMNS,
    CheckoutRecord,
    ConversationState,
    CustomerName,
    IdentityName,
    IntakeRecord,
    MessageRow,
    OutboxRow,
    Record,
    TermsAcceptanceRecord,
)

log = logging.getLogger("autodoctor.store")

R = TypeVar("R", bound=Record)

# Channels delivered straight from the transcript (an open socket, a terminal), not by a
# provider: their messages need no outbox row to be delivered.
TRANSCRIPT_CHANNELS = frozenset({"web", "console"})

# New rows, written whole, table by table in this order (a checkout points at its intake).
_NEW_ORDER: tuple[type[Record], ...] = (IntakeRecord, CheckoutRecord, TermsAcceptanceRecord)
# Loaded rows whose changed columns are written, one UPDATE per table.
_CHANGED_ORDER: tuple[type[Record], ...] = (IntakeRecord, ConversationState, CustomerName,
                                            IdentityName)


class IdPool:
    """PostgreSQL: ids for new rows known before the rows are written (a conversation points
    at the intake made with it), drawn from each table's own sequence BLOCK at a time for this
    process. Gaps, and two processes' rows interleaved: nothing orders these tables by id."""

    BLOCK = 256

    def __init__(self) -> None:
        self._free: dict[str, deque[int]] = {}

    async def take(self, session: AsyncSession, table: Table) -> int:
        free = self._free.setdefault(table.name, deque())
        if not free:
            free.extend((await session.execute(
                _draw_ids(), {"table": table.name, "count": self.BLOCK})).scalars())
        return free.popleft()


class UnitOfWork:
    """One transaction's session and the plain-value rows it will write (module docstring)."""

    def __init__(self, session: AsyncSession, *, hub: Hub | None, ids: IdPool) -> None:
        self.session = session
        bind = session.bind
        assert isinstance(bind, AsyncEngine)
        self.dialect = bind.dialect
        self.is_postgresql = self.dialect.name == "postgresql"
        self._hub = hub
        self._ids = ids
        self._new: list[Record] = []
        self._tracked: list[Record] = []
        self._messages: list[tuple[MessageRow, OutboxRow | None]] = []
        # Who to wake after the commit, with their new rows (None: they read the database).
        self._woken: dict[int, list[MessageRow] | None] = {}
        self._outbox_due = False
        self._sqlite_next_id: dict[str, int] = {}
        # Run after the commit only (a metric of what committed; a rolled-back batch is
        # handled again and must not count twice).
        self._committed: list[Callable[[], None]] = []

    # --- what the transaction will write ------------------------------------------------------

    def track(self, record: R) -> R:
        """A row read in this transaction: the columns update() changes are written."""
        self._tracked.append(record)
        return record

    async def new_id(self, table: Table) -> int:
        """An id for a new row of `table`, before the row is written."""
        if self.is_postgresql:
            return await self._ids.take(self.session, table)
        # SQLite: counted on from the table's largest id. Writers hold the database's write
        # lock from their BEGIN IMMEDIATE (core.db), so nobody else inserts meanwhile; in this
        # transaction, rows of these tables are added only here.
        next_id = self._sqlite_next_id.get(table.name)
        if next_id is None:
            next_id = 1 + int((await self.session.execute(
                _max_id(table))).scalar_one())
        self._sqlite_next_id[table.name] = next_id + 1
        return next_id

    def add(self, record: R) -> R:
        """A new row (its id from new_id), written whole at the next flush."""
        self._new.append(record)
        return record

    def new_rows(self, kind: type[R]) -> list[R]:
        """The rows of this kind added and not yet written."""
        return [row for row in self._new if isinstance(row, kind)]

    def add_message(self, message: MessageRow, outbox: OutboxRow | None = None) -> None:
        """A transcript row (and, for a provider to deliver it, its outbox row), written at
        the next flush; whoever waits for the person's messages is woken after the commit."""
        self._messages.append((message, outbox))
        self._wake(message, outbox is not None)

    async def add_keyed(self, items: Sequence[tuple[MessageRow, OutboxRow]]) -> dict[str, int]:
        """Messages that are queued at most once per outbox dedupe_key, written now (the caller
        must know which were): a key already queued keeps its earlier row, and its message is
        dropped. Returns the outbox id of each key queued now."""
        if not items:
            return {}
        await self.flush()
        messages = [message for message, _outbox in items]
        await self._write_messages(messages)
        for message, outbox in items:
            outbox.message_id = message.id
        queued: dict[str, int] = {key: outbox_id for key, outbox_id in await self.insert_now(
            OutboxRow.TABLE, OUTBOX_COLUMNS, [o.values() for _m, o in items],
            returning=("dedupe_key", "id"), conflict=("dedupe_key",))}
        dropped = [message.id for message, outbox in items if outbox.dedupe_key not in queued]
        if dropped:
            table = MessageRow.TABLE
            await self.session.execute(table.delete().where(table.c.id.in_(dropped)))
        for message, outbox in items:
            if outbox.dedupe_key in queued:
                self._wake(message, outbox.status == "pending")
            else:
                message.id = None
        return queued

    async def add_keyed_outbox(self, rows: Sequence[OutboxRow]) -> dict[str, int]:
        """Outbox rows without a transcript row (an alert to an admin's own chat), queued at
        most once per dedupe_key, written now. Returns the outbox id of each key queued now."""
        if not rows:
            return {}
        await self.flush()
        queued = {key: outbox_id for key, outbox_id in await self.insert_now(
            OutboxRow.TABLE, OUTBOX_COLUMNS, [row.values() for row in rows],
            returning=("dedupe_key", "id"), conflict=("dedupe_key",))}
        self._outbox_due = self._outbox_due or bool(queued)
        return queued

    def after_commit(self, done: Callable[[], None]) -> None:
        """Call `done` once this transaction has committed (never if it rolls back)."""
        self._committed.append(done)

    def wake(self, identity_id: int) -> None:
        """After the commit, wake whoever waits for this person: they read the database."""
        self._woken[identity_id] = None

    def _wake(self, message: MessageRow, for_provider: bool) -> None:
        rows = self._woken.get(message.identity_id, [])
        if rows is not None:
            self._woken[message.identity_id] = [*rows, message]
        self._outbox_due = self._outbox_due or for_provider

    # --- writing ------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything pending now (before reading it back in this transaction)."""
        await self._write_pending()

    async def commit(self) -> None:
        """Write what is pending, commit, and wake who waits for the new messages."""
        await self._write_pending()
        await self.session.commit()
        if self._hub is not None and (self._woken or self._outbox_due):
            # Rows without an id were dropped (a key already queued): their readers re-read.
            rows = {identity: messages for identity, messages in self._woken.items()
                    if messages is not None and all(m.id is not None for m in messages)}
            self._hub.publish(self._woken, rows, outbox=self._outbox_due)
        for done in self._committed:
            done()

    async def _write_pending(self) -> None:
        """The one place that writes, in this order:

        1. the ORM session's own changes (cold paths: offers, audit entries, consultations),
           which never point at rows new in 2;
        2. new rows, whole, table by table (_NEW_ORDER);
        3. the changed columns of loaded rows, one UPDATE per table (_CHANGED_ORDER);
        4. transcript messages (which may point at anything above), their ids returned;
        5. the outbox rows of those messages.

        On PostgreSQL 2-4 go as the parts of one statement (one round trip); on SQLite, one
        after another."""
        await self.session.flush()
        parts: list[tuple[Table, tuple[str, ...], list[tuple[Any, ...]], str]] = []
        new, self._new = self._new, []
        for kind in _NEW_ORDER:
            rows = [row for row in new if type(row) is kind]
            if rows:
                names = kind.columns()
                parts.append((kind.TABLE, names, [row.values(names) for row in rows], "insert"))
        for row in new:
            row.changed.clear()
        self._tracked.extend(new)  # changed after this: written as loaded rows are
        for loaded in _CHANGED_ORDER:
            changed = [row for row in self._tracked if type(row) is loaded and row.changed]
            if changed:
                names = tuple(name for name in loaded.columns() if name != "id")
                parts.append((loaded.TABLE, names, [
                    (row.id, sql.changed_mask(names, row.changed),
                     *row.values(names)) for row in changed], "update"))
                for row in changed:
                    row.changed.clear()
        pending, self._messages = self._messages, []
        messages = [message for message, _outbox in pending]
        if self.is_postgresql and parts:
            await self._write_combined(parts, messages)
        else:
            for table, columns, values, statement in parts:
                await self._write_part(table, columns, values, statement)
            await self._write_messages(messages)
        outbox = [o for m, o in pending if o is not None]
        for message, outbox_row in pending:
            if outbox_row is not None:
                outbox_row.message_id = message.id
        if outbox:
            await self.insert_now(OutboxRow.TABLE, OUTBOX_COLUMNS, [o.values() for o in outbox])

    async def _write_part(self, table: Table, names: tuple[str, ...],
                          values: list[tuple[Any, ...]], kind: str) -> None:
        if kind == "insert":
            await self.insert_now(table, names, values)
        else:
            await self.update_now(table, names, values)

    async def _write_combined(self, parts: list[tuple[Table, tuple[str, ...],
                                                      list[tuple[Any, ...]], str]],
                              messages: list[MessageRow]) -> None:
        shapes: list[tuple[Table, tuple[str, ...], str]] = [
            (table, names, kind) for table, names, _values, kind in parts]
        params: dict[str, Any] = {}
        for place, (table, names, values, kind) in enumerate(parts):
            bound = names if kind == "insert" else ("id", sql.MASK, *names)
            params.update(sql.pg_params(table, bound, values, prefix=f"w{place}_"))
        if messages:
            shapes.append((MessageRow.TABLE, MESSAGE_COLUMNS, "insert_returning"))
            params.update(sql.pg_params(MessageRow.TABLE, MESSAGE_COLUMNS,
                                        [m.values() for m in messages],
                                        prefix=f"w{len(parts)}_"))
        ids = (await self.session.execute(_combined(tuple(shapes)), params)).scalars().all()
        if messages:
            _number(messages, ids)

    async def _write_messages(self, messages: list[MessageRow]) -> None:
        if messages:
            ids = await self.insert_now(MessageRow.TABLE, MESSAGE_COLUMNS,
                                        [m.values() for m in messages],
                                        returning=("id",))
            _number(messages, [row[0] for row in ids])

    async def insert_now(self, table: Table, names: tuple[str, ...],
                         rows: Sequence[Sequence[Any]], *, returning: tuple[str, ...] = (),
                         conflict: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
        """INSERT these rows in one statement (SQLite: one per SQLITE_MAX_PARAMS values) and
        return the RETURNING values, in the order inserted."""
        if not rows:
            return []
        if self.is_postgresql:
            result = await self.session.execute(
                _pg_insert(table, names, returning, conflict), sql.pg_params(table, names, rows))
            return [tuple(row) for row in result.all()] if returning else []
        returned: list[tuple[Any, ...]] = []
        conn = await self.session.connection()
        per = sql.sqlite_rows_per_insert(names)
        for start in range(0, len(rows), per):
            chunk = sql.sqlite_rows(table, names, rows[start:start + per], self.dialect)
            statement = sql.sqlite_insert_sql(table, names, len(chunk), returning=returning,
                                              conflict=conflict)
            result = await conn.exec_driver_sql(statement, tuple(v for row in chunk for v in row))
            if returning:
                returned.extend(tuple(row) for row in result.all())
        return returned

    async def update_now(self, table: Table, names: tuple[str, ...],
                         rows: Sequence[Sequence[Any]]) -> None:
        """UPDATE rows of (id, changed mask, *values of names) by id, each only in the columns
        its mask names."""
        if not rows:
            return
        if self.is_postgresql:
            await self.session.execute(_pg_update(table, names),
                                       sql.pg_params(table, ("id", sql.MASK, *names), rows))
            return
        conn = await self.session.connection()
        await conn.exec_driver_sql(sql.sqlite_update_sql(table, names), sql.sqlite_rows(
            table, ("id", sql.MASK, *names), rows, self.dialect))


def _number(messages: list[MessageRow], ids: Sequence[int]) -> None:
    # One statement draws its ids in the order it inserts the rows (PostgreSQL's sequence in
    # the statement's ORDER BY; SQLite's rowids in VALUES order), so sorted they are in the
    # order of the messages.
    for message, new_id in zip(messages, sorted(ids), strict=True):
        message.id = new_id


def _binds(table: Table, names: Sequence[str], prefix: str) -> list[Any]:
    return [bindparam(prefix + name, type_=String()) for name in names]


@lru_cache(maxsize=64)
def _pg_insert(table: Table, names: tuple[str, ...], returning: tuple[str, ...],
               conflict: tuple[str, ...] | None) -> TextClause:
    return text(sql.pg_insert_sql(table, names, returning=returning, conflict=conflict)
                ).bindparams(*_binds(table, names, ""))


@lru_cache(maxsize=64)
def _pg_update(table: Table, names: tuple[str, ...]) -> TextClause:
    return text(sql.pg_update_sql(table, names)).bindparams(
        *_binds(table, ("id", sql.MASK, *names), ""))


@lru_cache(maxsize=64)
def _combined(shapes: tuple[tuple[Table, tuple[str, ...], str], ...]) -> TextClause:
    # Built once per combination of parts (a few kinds of transaction).
    parts: list[str] = []
    binds: list[Any] = []
    returning: int | None = None
    for place, (table, names, kind) in enumerate(shapes):
        prefix = f"w{place}_"
        if kind == "update":
            parts.append(sql.pg_update_sql(table, names, prefix=prefix))
            binds += _binds(table, ("id", sql.MASK, *names), prefix)
            continue
        if kind == "insert_returning":
            returning = place
        parts.append(sql.pg_insert_sql(table, names, prefix=prefix,
                                       returning=("id",) if returning == place else ()))
        binds += _binds(table, names, prefix)
    return text(sql.pg_combined_sql(parts, returning)).bindparams(*binds)


@lru_cache(maxsize=1)
def _draw_ids() -> TextClause:
    return text(sql.pg_draw_ids_sql()).bindparams(bindparam("table", type_=String()),
                                                  bindparam("count", type_=Integer()))


@lru_cache(maxsize=16)
def _max_id(table: Table) -> TextClause:
    return text(sql.sqlite_max_id_sql(table))
