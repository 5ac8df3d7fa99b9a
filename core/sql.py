"""Small dialect-aware helpers the services share (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


def dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def insert_ignore(session: AsyncSession, model: type[Any], values: dict[str, Any],
                        conflict: list[str]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the new id, or None if it already existed.

    Unlike add()+flush(), a conflict does not abort the surrounding transaction.
    """
    insert = pg_insert if dialect(session) == "postgresql" else sqlite_insert
    stmt = (insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
            .returning(model.id))
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert_returning(session: AsyncSession, model: type[T], values: dict[str, Any],
                           conflict: list[str] | None = None) -> T | None:
    """INSERT … RETURNING the new row as a loaded ORM object, in one statement and without
    flushing the session's other pending changes first. With `conflict`, ON CONFLICT DO
    NOTHING: None if such a row already existed."""
    insert = pg_insert if dialect(session) == "postgresql" else sqlite_insert
    stmt = insert(model).values(**values)
    if conflict is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=conflict)
    with session.no_autoflush:
        return (await session.scalars(stmt.returning(model))).one_or_none()
