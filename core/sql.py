"""Small dialect-aware helpers the services share (SQLite and PostgreSQL)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


def dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """INSERT for this session's database, with its ON CONFLICT clauses."""
    return dialect_insert_for(dialect(session), table)


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


def insert_ids_sync(conn: Any, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """insert_ids on a sync Connection (inside the session's flush hooks).

    One statement draws its ids in the order it inserts the rows: PostgreSQL's identity
    sequence in the unnest's ORDER BY; SQLite, under its write lock, the largest rowid plus one,
    row after row in VALUES order. So the ids sorted are in the order of `rows`. (Asking
    SQLAlchemy for that order would cost SQLite a statement per row: these tables have no
    sentinel column.)
    """
    return sorted(bulk_insert_sync(conn, table, rows, returning=("id",)))


async def bulk_insert(session: AsyncSession, table: Table, rows: list[dict[str, Any]], *,
                      returning: tuple[str, ...] = (),
                      conflict: tuple[str, ...] | None = None) -> list[Any]:
    """bulk_insert_sync on the session's connection."""
    conn = await session.connection()
    return await conn.run_sync(lambda sync: bulk_insert_sync(
        sync, table, rows, returning=returning, conflict=conflict))


def bulk_insert_sync(conn: Any, table: Table, rows: list[dict[str, Any]], *,
                     returning: tuple[str, ...] = (),
                     conflict: tuple[str, ...] | None = None) -> list[Any]:
    """INSERT many rows (all with the same keys) in one statement, optionally ON CONFLICT (…)
    DO NOTHING; the RETURNING values (one column: scalars; more: rows), in the order the rows
    were inserted.

    PostgreSQL: INSERT … SELECT FROM unnest(one array per column) ORDER BY the row's place.
    Its SQL is the same whatever the number of rows, so the server prepares it once, and the
    values travel as a dozen arrays instead of thousands of parameters. (A VALUES list, as
    SQLAlchemy's executemany builds it, is a new statement for each count.) SQLite:
    SQLAlchemy's multi-row VALUES (its statements cost no round trip).
    """
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        columns = tuple(rows[0])
        stmt = _unnest_insert(table, columns, returning, conflict)
        params: Any = {name: [row[name] for row in rows] for name in columns}
    else:
        stmt = dialect_insert_for(conn.dialect.name, table)
        if conflict is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
        if returning:
            stmt = stmt.returning(*(table.c[name] for name in returning))
        params = rows
    result = conn.execute(stmt, params)
    if not returning:
        return []
    return list(result.scalars() if len(returning) == 1 else result.all())


def dialect_insert_for(dialect_name: str, table: Any) -> Any:
    return (pg_insert if dialect_name == "postgresql" else sqlite_insert)(table)


@lru_cache(maxsize=64)
def _unnest_insert(table: Table, columns: tuple[str, ...], returning: tuple[str, ...],
                   conflict: tuple[str, ...] | None) -> Any:
    # Column names come from our own table definitions, never from input.
    names = ", ".join(f'"{name}"' for name in columns)
    sql = (f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM unnest('
           + ", ".join(f":{name}" for name in columns)
           + f") WITH ORDINALITY AS rows({names}, _place) ORDER BY _place")
    if conflict is not None:
        sql += " ON CONFLICT (" + ", ".join(f'"{name}"' for name in conflict) + ") DO NOTHING"
    if returning:
        sql += " RETURNING " + ", ".join(f'"{name}"' for name in returning)
    stmt = text(sql).bindparams(*(bindparam(name, type_=ARRAY(table.c[name].type))
                                  for name in columns))
    if returning:
        stmt = stmt.columns(*(table.c[name] for name in returning))
    return stmt
