"""Small dialect-aware helpers the services share (SQLite and PostgreSQL)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import bindparam, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


def dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """INSERT for this session's database, with its ON CONFLICT clauses."""
    return (pg_insert if dialect(session) == "postgresql" else sqlite_insert)(table)


async def insert_ignore(session: AsyncSession, model: type[Any], values: dict[str, Any],
                        conflict: list[str]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the new id, or None if it already existed.

    Unlike add()+flush(), a conflict does not abort the surrounding transaction.
    """
    stmt = (dialect_insert(session, model).values(**values)
            .on_conflict_do_nothing(index_elements=conflict).returning(model.id))
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert_returning(session: AsyncSession, model: type[T], values: dict[str, Any],
                           conflict: list[str] | None = None) -> T | None:
    """INSERT … RETURNING the new row as a loaded ORM object, in one statement and without
    flushing the session's other pending changes first. With `conflict`, ON CONFLICT DO
    NOTHING: None if such a row already existed."""
    stmt = _insert_returning(dialect(session), model, tuple(sorted(values)),
                             tuple(conflict) if conflict is not None else None)
    with session.no_autoflush:
        return (await session.scalars(stmt, values)).one_or_none()


@lru_cache(maxsize=64)
def _insert_returning(dialect_name: str, model: type[Any], columns: tuple[str, ...],
                      conflict: tuple[str, ...] | None) -> Any:
    # Built once per shape, values bound at execution: hot paths skip building the statement.
    insert = pg_insert if dialect_name == "postgresql" else sqlite_insert
    stmt = insert(model).values({name: bindparam(name) for name in columns})
    if conflict is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    return stmt.returning(model)


async def insert_ids(session: AsyncSession, model: type[Any],
                     rows: list[dict[str, Any]]) -> list[int]:
    """A multi-row INSERT; the new ids, in the order of `rows`."""
    conn = await session.connection()
    return await conn.run_sync(lambda sync: insert_ids_sync(sync, model.__table__, rows))


def insert_ids_sync(conn: Any, table: Any, rows: list[dict[str, Any]]) -> list[int]:
    """insert_ids on a sync Connection (inside the session's flush hooks)."""
    if conn.dialect.name == "postgresql":
        # In parameter order, in one statement.
        return list(conn.execute(
            insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).scalars())
    # SQLite, under its write lock: a new rowid is the largest so far plus one, row after row
    # in VALUES order (insertmanyvalues sends them in order), so the ids sorted are in
    # parameter order. (Asking SQLAlchemy for that order here would cost a statement per row:
    # these tables have no sentinel column.)
    return sorted(conn.execute(insert(table).returning(table.c.id), rows).scalars())
