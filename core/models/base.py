"""The declarative base, the naming convention and the UTC timestamp type every table uses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer, MetaData, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL (timestamptz) and SQLite (naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC (core.clock)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # SQLite: the text straight from the value and back in one step each (what the two above
    # and SQLite's DATETIME processors make of it, in about half the time: every row the
    # engine writes or reads has a timestamp or two). The format is SQLite DATETIME's own,
    # microseconds always written, so stored values compare as text in time order.

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use timezone-aware UTC (core.clock)")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return process

    def result_processor(self, dialect: Dialect, coltype: object
                         ) -> Callable[[Any], Any] | None:
        if dialect.driver == "asyncpg":
            # asyncpg reads timestamptz in its binary form, microseconds since 2000 UTC, into
            # an aware datetime in UTC already, whatever the session's time zone: nothing to
            # do per value (a Python call for each of some six timestamps a message reads).
            return None
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        return process


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


def table(model: type[Base]) -> Table:
    """The Table a mapped class is mapped to (typed as one, for Core statements)."""
    mapped = model.__table__
    assert isinstance(mapped, Table)
    return mapped


# Ids of tables that grow without bound (the transcript, the outbox, provider events, the
# audit log): 64-bit. On SQLite an INTEGER primary key is 64-bit already, and only that type
# makes it the rowid (numbered by SQLite).
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def big_id() -> Mapped[int]:
    """A 64-bit primary key."""
    return mapped_column(BIG_ID, primary_key=True)


def created_column() -> Mapped[datetime]:
    """A creation time, set by the database layer when the code gives none."""
    return mapped_column(UTCDateTime(), default=utc_now)
