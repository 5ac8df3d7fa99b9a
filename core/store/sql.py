"""Multi-row INSERT and UPDATE statements of a fixed shape, for PostgreSQL and SQLite.

Pure: each function takes a table, column names and values and returns SQL text or the values
to bind; nothing here knows sessions, connections or flows.

PostgreSQL: every column's values travel as one JSON text, read back row by row by
`json_array_elements_text` (`json_array_elements` for a JSON column) and cast to the column's
type. The SQL is the same whatever the number of rows, so the server prepares it once, and the
values go as a dozen parameters instead of thousands (see bench/README.md, "column encoding").

SQLite: a multi-row `VALUES` list (statements cost no round trip there), each value turned by
its column type's own bind processor, as SQLAlchemy would.

UPDATEs write only the columns each row changed: every row carries a bit mask of its changed
columns, and a column keeps its stored value where its bit is not set. One statement serves
rows that changed different columns, and a column another transaction wrote meanwhile is
never overwritten with a value this one merely read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Dialect, Integer, String, Table
from sqlalchemy.dialects.postgresql.base import PGDialect

from core.models import UTCDateTime

# Bound values per SQLite statement: SQLite's smallest limit (999, before version 3.32).
SQLITE_MAX_PARAMS = 999
MASK = "_changed"  # the name of each row's changed-columns mask in an UPDATE

_PG = PGDialect()  # type: ignore[no-untyped-call]  # compiles the casts

Rows = Sequence[Sequence[Any]]  # rows of values, in the order of the names given with them


def _quoted(names: Sequence[str]) -> str:
    # Column names come from our own table definitions, never from input.
    return ", ".join(f'"{name}"' for name in names)


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _PgColumn:
    """How one column's values are read back from their JSON text on PostgreSQL."""

    source: str  # the set-returning function that reads the parameter's rows
    cast: str | None  # the cast of each value read (None: it comes typed already)
    aware: bool  # a timestamp: naive values are refused

    def value(self, alias: str, name: str) -> str:
        read = f'{alias}."{name}"'
        return read if self.cast is None else f"CAST({read} AS {self.cast})"


def _pg_column(table: Table, name: str, param: str) -> _PgColumn:
    type_ = table.c[name].type if name != MASK else Integer()
    if isinstance(type_, JSON):
        return _PgColumn(f"json_array_elements(CAST(:{param} AS json))", None, False)
    if not isinstance(type_, Integer | String | Boolean | UTCDateTime):
        raise TypeError(f"{table.name}.{name}: {type_!r} cannot travel as JSON text")
    return _PgColumn(f"json_array_elements_text(CAST(:{param} AS json))",
                     type_.compile(dialect=_PG), isinstance(type_, UTCDateTime))


def _pg_rows_from(table: Table, names: Sequence[str], prefix: str
                  ) -> tuple[str, dict[str, _PgColumn]]:
    columns = {name: _pg_column(table, name, prefix + name) for name in names}
    return "ROWS FROM (" + ", ".join(c.source for c in columns.values()) + ")", columns


def pg_insert_sql(table: Table, names: Sequence[str], *, prefix: str = "",
                  returning: Sequence[str] = (), conflict: Sequence[str] | None = None) -> str:
    """INSERT of any number of rows, the rows in the order given (so ids drawn by the
    statement from the table's sequence come in that order); parameters from pg_params."""
    source, columns = _pg_rows_from(table, names, prefix)
    values = ", ".join(columns[name].value("r", name) for name in names)
    sql = (f'INSERT INTO "{table.name}" ({_quoted(names)}) SELECT {values} FROM {source}'
           f" WITH ORDINALITY AS r({_quoted(names)}, _place) ORDER BY _place")
    if conflict is not None:
        sql += f" ON CONFLICT ({_quoted(conflict)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {_quoted(returning)}"
    return sql


def pg_update_sql(table: Table, names: Sequence[str], *, prefix: str = "") -> str:
    """UPDATE of any number of rows by id, each writing only the columns its mask names
    (bit i: names[i]); parameters from pg_params with ("id", MASK, *names)."""
    every = ("id", MASK, *names)
    source, columns = _pg_rows_from(table, every, prefix)
    mask = columns[MASK].value("u", MASK)
    sets = ", ".join(
        f'"{name}" = CASE WHEN {mask} & {1 << bit} <> 0 THEN {columns[name].value("u", name)}'
        f' ELSE t."{name}" END' for bit, name in enumerate(names))
    return (f'UPDATE "{table.name}" AS t SET {sets} FROM {source} AS u({_quoted(every)})'
            f' WHERE t."id" = {columns["id"].value("u", "id")}')


def pg_params(table: Table, names: Sequence[str], rows: Rows, *, prefix: str = ""
              ) -> dict[str, str]:
    """Each column's values as one JSON text, named prefix + column."""
    params: dict[str, str] = {}
    for place, name in enumerate(names):
        column = _pg_column(table, name, prefix + name)
        values = [row[place] for row in rows]
        if column.aware and any(v is not None and v.tzinfo is None for v in values):
            raise ValueError("naive datetime given; use timezone-aware UTC (core.clock)")
        params[prefix + name] = orjson.dumps(values, default=_json_default,
                                             option=orjson.OPT_NON_STR_KEYS).decode()
    return params


def _json_default(value: Any) -> Any:
    # orjson writes datetimes itself, but not a subclass's (a test clock's, a library's).
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} cannot be stored here")


def pg_combined_sql(parts: Sequence[str], returning_part: int | None) -> str:
    """Several data-modifying statements as the parts of one (WITH w0 AS (…), w1 AS (…) …):
    one round trip. The parts all see the database as it was before the statement, not each
    other's rows, and foreign keys are checked at its end. `returning_part`: the part whose
    RETURNING "id" the statement returns."""
    ctes = ", ".join(f"w{place} AS ({sql})" for place, sql in enumerate(parts))
    last = f'SELECT "id" FROM w{returning_part}' if returning_part is not None else "SELECT 1"
    return f"WITH {ctes} {last}"


def pg_draw_ids_sql() -> str:
    """`count` new ids from a table's own sequence (parameters: table, count)."""
    return ("SELECT nextval(pg_get_serial_sequence(:table, 'id'))"
            " FROM generate_series(1, :count)")


# --- SQLite ---------------------------------------------------------------------------------


def sqlite_insert_sql(table: Table, names: Sequence[str], count: int, *,
                      returning: Sequence[str] = (),
                      conflict: Sequence[str] | None = None) -> str:
    """INSERT … VALUES with `count` rows of `?` parameters (sqlite_rows' values)."""
    row = "(" + ", ".join("?" * len(names)) + ")"
    sql = f'INSERT INTO "{table.name}" ({_quoted(names)}) VALUES ' + ", ".join([row] * count)
    if conflict is not None:
        sql += f" ON CONFLICT ({_quoted(conflict)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {_quoted(returning)}"
    return sql


def sqlite_rows_per_insert(names: Sequence[str]) -> int:
    """How many rows of these columns one SQLite INSERT may carry."""
    return max(1, SQLITE_MAX_PARAMS // len(names))


def sqlite_update_sql(table: Table, names: Sequence[str]) -> str:
    """UPDATE of one row by id writing only the columns its mask names (bit i: names[i]), for
    an executemany; parameters ?1 = id, ?2 = mask, then the columns' values."""
    sets = ", ".join(f'"{name}" = CASE WHEN ?2 & {1 << bit} THEN ?{bit + 3} ELSE "{name}" END'
                     for bit, name in enumerate(names))
    return f'UPDATE "{table.name}" SET {sets} WHERE "id" = ?1'


def sqlite_rows(table: Table, names: Sequence[str], rows: Rows,
                dialect: Dialect) -> list[tuple[Any, ...]]:
    """The rows' values as the driver takes them: each turned by its column type's bind
    processor (a timestamp into SQLite's text, a dict into JSON)."""
    processors = _sqlite_processors(table, tuple(names), dialect)
    return [tuple(value if process is None else process(value)
                  for process, value in zip(processors, row, strict=True))
            for row in rows]


@lru_cache(maxsize=64)
def _sqlite_processors(table: Table, names: tuple[str, ...], dialect: Dialect
                       ) -> tuple[Callable[[Any], Any] | None, ...]:
    return tuple(None if name in ("id", MASK)
                 else table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                 for name in names)


def sqlite_max_id_sql(table: Table) -> str:
    """The table's largest id (0 for none): SQLite's next rowid is one more."""
    return f'SELECT coalesce(max("id"), 0) FROM "{table.name}"'


def changed_mask(names: Sequence[str], changed: set[str] | frozenset[str]) -> int:
    """The UPDATE mask of the changed columns among `names` (bit i: names[i])."""
    return sum(1 << bit for bit, name in enumerate(names) if name in changed)
