"""Small dialect-aware helpers the services share (SQLite and PostgreSQL)."""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache, lru_cache
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    Boolean,
    Engine,
    Enum,
    Integer,
    String,
    Table,
    bindparam,
    column,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, class_mapper
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.types import TypeDecorator

from core.models import UTCDateTime

T = TypeVar("T")


def dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """INSERT for this session's database, with its ON CONFLICT clauses."""
    return dialect_insert_for(dialect(session), table)


async def get_by_id(session: AsyncSession, model: type[T], key: int) -> T | None:
    """session.get() without flushing first, and without its cost when the row is loaded
    already: an object this transaction holds, not expired, is returned as it is (as
    session.get would: an object changed in this transaction is returned with its changes).
    Otherwise session.get loads it. (session.get costs about 17 µs even for an object in
    hand; the lookup here about 1 µs, on the engine's path for every message.)"""
    found = session.sync_session.identity_map.get(
        class_mapper(model).identity_key_from_primary_key((key,)))
    if found is not None and not instance_state(found).expired:
        return found  # type: ignore[no-any-return]
    with session.no_autoflush:
        return await session.get(model, key)


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


def insert_ids_sync(conn: Any, table: Table, rows: list[dict[str, Any]] | Columns) -> list[int]:
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


class Columns(dict[str, list[Any]]):
    """Rows given column by column (every list as long): what a multi-row INSERT on
    PostgreSQL binds anyway, without a dict per row first."""

    @classmethod
    def of(cls, rows: Sequence[Any], names: tuple[str, ...]) -> Columns:
        """The attributes `names` (two or more) of each of `rows` (objects), as columns."""
        if not rows:
            return cls({name: [] for name in names})
        values = zip(*map(attrgetter(*names), rows), strict=True)
        return cls(zip(names, map(list, values), strict=True))

    @classmethod
    def given(cls, rows: list[dict[str, Any]] | Columns,
              names: tuple[str, ...] | None = None) -> Columns:
        """`rows` as columns (`names` of them, or all): Columns as they are, dicts turned."""
        if isinstance(rows, Columns):
            return rows if names is None else cls({name: rows[name] for name in names})
        names = names if names is not None else tuple(rows[0]) if rows else ()
        if len(names) < 2 or not rows:
            return cls({name: [row[name] for row in rows] for name in names})
        # Turned in C (itemgetter, zip), not value by value in Python: the engine's group
        # commit writes back dozens of intakes of some fifteen columns each.
        values = zip(*map(itemgetter(*names), rows), strict=True)
        return cls(zip(names, map(list, values), strict=True))

    @property
    def count(self) -> int:
        return len(next(iter(self.values()), ()))

    def rows(self) -> list[dict[str, Any]]:
        names = tuple(self)
        return [dict(zip(names, values, strict=True))
                for values in zip(*self.values(), strict=True)]


def _has_rows(rows: list[dict[str, Any]] | Columns) -> bool:
    return bool(rows.count if isinstance(rows, Columns) else rows)


def bulk_insert_sync(conn: Any, table: Table, rows: list[dict[str, Any]] | Columns, *,
                     returning: tuple[str, ...] = (),
                     conflict: tuple[str, ...] | None = None) -> list[Any]:
    """INSERT many rows (all with the same keys; or Columns) in one statement, optionally ON
    CONFLICT (…) DO NOTHING; the RETURNING values (one column: scalars; more: rows), in the
    order the rows were inserted.

    PostgreSQL: INSERT … SELECT FROM unnest(one array per column) ORDER BY the row's place.
    Its SQL is the same whatever the number of rows, so the server prepares it once, and the
    values travel as a dozen arrays instead of thousands of parameters. (A VALUES list, as
    SQLAlchemy's executemany builds it, is a new statement for each count.) SQLite: a
    multi-row VALUES (its statements cost no round trip), see _sqlite_insert.
    """
    if not _has_rows(rows):
        return []
    if conn.dialect.name != "postgresql":
        return _sqlite_insert(conn, table, Columns.given(rows), returning, conflict)
    columns = Columns.given(rows)
    result = conn.execute(_unnest_insert(table, tuple(columns), returning, conflict),
                          _encoded(table, columns, ""))
    if not returning:
        return []
    return list(result.scalars() if len(returning) == 1 else result.all())


# Bound values per SQLite statement: SQLite's smallest limit (999, before version 3.32).
_SQLITE_MAX_PARAMS = 999


def _sqlite_insert(conn: Any, table: Table, columns: Columns, returning: tuple[str, ...],
                   conflict: tuple[str, ...] | None) -> list[Any]:
    """SQLite: INSERT … VALUES (…), (…) … as the driver's SQL, each column's values turned
    by its type's own bind processor first (what SQLAlchemy's executemany does, without its
    per-statement and per-row machinery, which cost more than SQLite's work here)."""
    names = tuple(columns)
    processors = _sqlite_processors(table, names, conn.dialect)
    values = [list(map(process, columns[name])) if process is not None else columns[name]
              for name, process in zip(names, processors, strict=True)]
    rows = list(zip(*values, strict=True))
    per_statement = max(1, _SQLITE_MAX_PARAMS // len(names))
    returned: list[Any] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        sql = _sqlite_insert_sql(table, names, len(chunk), returning, conflict)
        result = conn.exec_driver_sql(sql, tuple(value for row in chunk for value in row))
        if returning:
            returned.extend(result.scalars() if len(returning) == 1 else result.all())
    return returned


@lru_cache(maxsize=64)
def _sqlite_processors(table: Table, names: tuple[str, ...], dialect: Any
                       ) -> tuple[Callable[[Any], Any] | None, ...]:
    return tuple(table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                 for name in names)


@lru_cache(maxsize=256)
def _sqlite_insert_sql(table: Table, names: tuple[str, ...], count: int,
                       returning: tuple[str, ...], conflict: tuple[str, ...] | None) -> str:
    # Column names come from our own table definitions, never from input.
    row = "(" + ", ".join("?" * len(names)) + ")"
    sql = (f'INSERT INTO "{table.name}" (' + ", ".join(f'"{name}"' for name in names)
           + ") VALUES " + ", ".join([row] * count))
    if conflict is not None:
        sql += " ON CONFLICT (" + ", ".join(f'"{name}"' for name in conflict) + ") DO NOTHING"
    if returning:
        sql += " RETURNING " + ", ".join(f'"{name}"' for name in returning)
    return sql


def dialect_insert_for(dialect_name: str, table: Any) -> Any:
    return (pg_insert if dialect_name == "postgresql" else sqlite_insert)(table)


@lru_cache(maxsize=64)
def _unnest_insert(table: Table, columns: tuple[str, ...], returning: tuple[str, ...],
                   conflict: tuple[str, ...] | None) -> Any:
    stmt = text(_insert_sql(table, columns, "", returning, conflict)).bindparams(
        *_binds(table, columns, ""))
    if returning:
        stmt = stmt.columns(*(table.c[name] for name in returning))
    return stmt


# The SQL of PostgreSQL's multi-row statements: each column's values as one parameter (named
# prefix + column), read back row by row. Column names come from our own table definitions,
# never from input.
#
# A column of a type below travels as one JSON array, as text, which the server turns into rows
# (json_array_elements_text; json_array_elements for a JSON column) and casts to the column's
# type, the same cast as the array's: asyncpg encodes an array element by element, each with
# isinstance checks against collections.abc, and SQLAlchemy's ARRAY runs the item type's
# processing per element first; orjson writes the whole column in one C call (measured with
# bench/engine_instructions.py: 19% fewer instructions per message through the engine, see
# bench/README.md). Other types travel as arrays (unnest), as before.

class _Column:
    """How one column's values travel in a multi-row statement on PostgreSQL."""

    def __init__(self, table: Table, name: str, prefix: str) -> None:
        type_ = table.c[name].type
        self.kind = _json_kind(type_)
        bind = prefix + name
        # The set-returning function that reads the column's rows, and the cast of each value
        # (None: the rows come typed already).
        self.cast: str | None = None
        if self.kind is None:
            self.bind = bindparam(bind, type_=ARRAY(type_))
            self.source = f"unnest(:{bind})"
        elif self.kind == "json":
            self.bind = bindparam(bind, type_=String())
            self.source = f"json_array_elements(CAST(:{bind} AS json))"
        else:
            self.bind = bindparam(bind, type_=String())
            self.source = f"json_array_elements_text(CAST(:{bind} AS json))"
            self.cast = type_.compile(dialect=_PG_DIALECT)

    def value(self, alias: str, name: str) -> str:
        read = f'{alias}."{name}"'
        return read if self.cast is None else f"CAST({read} AS {self.cast})"

    def encode(self, values: list[Any]) -> Any:
        if self.kind is None:
            return values
        if self.kind == "aware_time":
            for value in values:
                if value is not None and value.tzinfo is None:
                    raise ValueError("naive datetime given; use timezone-aware UTC (core.clock)")
        # JSON columns as to_json (core.db) writes them; None is JSON's null there, as the
        # JSON type binds it (SQL NULL elsewhere: json_array_elements_text reads null so).
        return orjson.dumps(values, default=_json_default,
                            option=orjson.OPT_NON_STR_KEYS).decode()


def _json_default(value: Any) -> Any:
    # orjson writes datetimes itself, but not a subclass's (a test clock's, a library's).
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} cannot be stored here")


def _json_kind(type_: Any) -> str | None:
    """How a column's values read back from JSON: None for a type that travels as an array."""
    if isinstance(type_, UTCDateTime):
        return "aware_time"  # orjson writes RFC 3339 with the offset, as timestamptz reads it
    if type(type_) in (JSON, pg.JSON):
        return "json"
    if isinstance(type_, TypeDecorator | Enum):
        return None  # their own processing, per value
    if isinstance(type_, Integer | String | Boolean):
        return "scalar"
    return None


_PG_DIALECT = pg.dialect()


@lru_cache(maxsize=128)
def _columns(table: Table, names: tuple[str, ...], prefix: str) -> tuple[_Column, ...]:
    return tuple(_Column(table, name, prefix) for name in names)


def _encoded(table: Table, values: dict[str, list[Any]], prefix: str) -> dict[str, Any]:
    """The parameters of a multi-row statement on PostgreSQL for these columns' values."""
    names = tuple(values)
    return {prefix + name: column.encode(values[name])
            for name, column in zip(names, _columns(table, names, prefix), strict=True)}


def _rows_from(columns: tuple[_Column, ...]) -> str:
    return "ROWS FROM (" + ", ".join(column.source for column in columns) + ")"


def _insert_sql(table: Table, columns: tuple[str, ...], prefix: str,
                returning: tuple[str, ...] = (), conflict: tuple[str, ...] | None = None) -> str:
    names = ", ".join(f'"{name}"' for name in columns)
    sources = _columns(table, columns, prefix)
    values = ", ".join(source.value("rows", name)
                       for name, source in zip(columns, sources, strict=True))
    sql = (f'INSERT INTO "{table.name}" ({names}) SELECT {values} FROM {_rows_from(sources)}'
           f" WITH ORDINALITY AS rows({names}, _place) ORDER BY _place")
    if conflict is not None:
        sql += " ON CONFLICT (" + ", ".join(f'"{name}"' for name in conflict) + ") DO NOTHING"
    if returning:
        sql += " RETURNING " + ", ".join(f'"{name}"' for name in returning)
    return sql


def _update_sql(table: Table, columns: tuple[str, ...], prefix: str) -> str:
    names = ("id", *columns)
    sources = dict(zip(names, _columns(table, names, prefix), strict=True))
    return (f'UPDATE "{table.name}" AS t SET '
            + ", ".join(f'"{name}" = {sources[name].value("u", name)}' for name in columns)
            + f" FROM {_rows_from(tuple(sources.values()))} AS u("
            + ", ".join(f'"{name}"' for name in names) + ')'
            + f' WHERE t."id" = {sources["id"].value("u", "id")}')


def _binds(table: Table, columns: tuple[str, ...], prefix: str) -> list[Any]:
    return [column.bind for column in _columns(table, columns, prefix)]


def rows_source(table: Table, names: tuple[str, ...], prefix: str, alias: str
                ) -> tuple[str, dict[str, str], list[Any]]:
    """PostgreSQL, for a statement of one's own that reads many rows' values of these columns
    of `table` as the multi-row statements here bind them (rows_params): its FROM item
    (`ROWS FROM (…) AS alias(names)`), each column's value read from it (cast to the column's
    type), and the bind parameters to give the statement."""
    columns = _columns(table, names, prefix)
    source = (f"{_rows_from(columns)} AS {alias}("
              + ", ".join(f'"{name}"' for name in names) + ")")
    values = {name: column.value(alias, name)
              for name, column in zip(names, columns, strict=True)}
    return source, values, _binds(table, names, prefix)


def rows_params(table: Table, values: dict[str, list[Any]], prefix: str) -> dict[str, Any]:
    """The parameters for rows_source: the columns' values (equally long lists)."""
    return _encoded(table, values, prefix)


def bulk_update_sync(conn: Any, table: Table, columns: tuple[str, ...],
                     rows: list[dict[str, Any]] | Columns) -> None:
    """UPDATE these rows (each an "id" and a value for every one of `columns`; or Columns) in
    one statement: on PostgreSQL, UPDATE … FROM unnest(one array per column), so the server
    runs one statement however many rows (an executemany is one execution per row, and the
    ORM issues one executemany per set of changed columns); elsewhere, an executemany."""
    if not _has_rows(rows):
        return
    if conn.dialect.name == "postgresql":
        conn.execute(_bulk_update(table, columns),
                     _encoded(table, Columns.given(rows, ("id", *columns)), ""))
        return
    # SQLite: the driver's executemany of one UPDATE, the values turned by their types' bind
    # processors first (as in _sqlite_insert).
    values = Columns.given(rows, (*columns, "id"))
    processors = _sqlite_processors(table, tuple(values), conn.dialect)
    turned = [list(map(process, column)) if process is not None else column
              for column, process in zip(values.values(), processors, strict=True)]
    conn.exec_driver_sql(_sqlite_update_sql(table, columns), list(zip(*turned, strict=True)))


@lru_cache(maxsize=16)
def _bulk_update(table: Table, columns: tuple[str, ...]) -> Any:
    return text(_update_sql(table, columns, "")).bindparams(
        *_binds(table, ("id", *columns), ""))


@lru_cache(maxsize=16)
def _sqlite_update_sql(table: Table, columns: tuple[str, ...]) -> str:
    return (f'UPDATE "{table.name}" SET ' + ", ".join(f'"{name}" = ?' for name in columns)
            + ' WHERE "id" = ?')


# --- new rows as ORM objects without a statement each -------------------------------------------

ID_BLOCK = 256
_NEXTVAL = text("SELECT nextval(pg_get_serial_sequence(:table, 'id'))"
                " FROM generate_series(1, :count)")
_free_ids: weakref.WeakKeyDictionary[Engine, dict[str, deque[int]]] = (
    weakref.WeakKeyDictionary())
_NEW_ROWS = "autodoctor.sql.new_rows"
_SQLITE_NEXT_IDS = "autodoctor.sql.sqlite_next_ids"
_NEW_IN_SAVEPOINT = "autodoctor.sql.new_in_savepoint"


async def add_new(session: AsyncSession, model: type[T], values: dict[str, Any]) -> T:
    """A new row as a persistent ORM object whose id is known at once, for a hot path that
    would otherwise pay a statement (a round trip) per row.

    The id comes, on PostgreSQL, from the table's sequence, drawn ahead ID_BLOCK at a time per
    engine (gaps, and two processes' rows interleaved: nothing here orders by id); on SQLite,
    from a count on from the table's largest id (_next_sqlite_id). The row is INSERTed just
    before the session's next flush or its commit, in one statement with the other new rows
    of its table, ahead of the flush's own statements (which may point at it). `values` are
    the columns to set, the others are NULL (column defaults do not apply). A change made to
    the object before its row is written goes in with the row; after, it is an UPDATE, as
    usual."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    if dialect(session) == "postgresql":
        (new_id,) = await draw_ids(session, table, 1)
    else:
        new_id = await _next_sqlite_id(session, table)
    row = as_loaded(session, model,
                    {**{column.key: None for column in table.columns}, **values, "id": new_id})
    sync = session.sync_session
    # The object itself (held until written: the session holds a clean one only weakly).
    sync.info.setdefault(_NEW_ROWS, {}).setdefault(table, []).append(row)
    nested = sync.get_nested_transaction()
    if nested is not None:
        # A savepoint rolled back must take the row with it: written now, and the object
        # dropped from the session if it is rolled back (as the flush's own new objects are:
        # SQLite may give its id to the next row).
        await session.run_sync(_write_new_rows)
        sync.info.setdefault(_NEW_IN_SAVEPOINT, []).append((nested, row))
    return row


async def draw_ids(session: AsyncSession, table: Table, count: int) -> list[int]:
    """PostgreSQL: `count` new ids for rows of `table`, from its sequence, drawn ahead ID_BLOCK
    at a time per engine (add_new's, and for rows a statement of one's own inserts)."""
    free = _free_ids.setdefault(session.get_bind(), {}).setdefault(table.name, deque())
    if len(free) < count:
        # Not a flush first: the sequence does not read the session's rows, and a flush
        # mid-transaction would write what waits for the commit's one statement.
        with session.no_autoflush:
            free.extend((await session.execute(
                _NEXTVAL, {"table": table.name, "count": max(ID_BLOCK, count)})).scalars())
    return [free.popleft() for _ in range(count)]


@cache
def _mapper(model: type[Any]) -> Any:
    return class_mapper(model)


def as_transient(model: type[T], values: dict[str, Any]) -> T:
    """A new ORM object, in no session, with these attribute values put straight into its
    dict (the constructor sets each through the ORM's attribute events, which only an object
    in a session needs): for handing to code that reads it, before its row is made."""
    mapper = _mapper(model)
    row = mapper.class_manager.new_instance()
    instance_state(row).dict.update(values)
    return row


def as_loaded(session: AsyncSession, model: type[T], values: dict[str, Any]) -> T:
    """An ORM object for a row with these values (every column), persistent in the session
    as if just loaded: nothing expired, to load later, or pending. The values go straight into
    the instance's dict, as a query's loading does, not attribute by attribute. The session
    holds it only weakly, as any clean object.

    Put in the session's identity map as a query's loading does (sqlalchemy.orm.loading), not
    by make_transient_to_detached and Session.add: their bookkeeping (the unloaded attributes
    to expire, each relationship's cascade, the attach events) took some ten times as long as
    the loading of a row, for what a loaded row does not need. Nothing here listens for
    attach or load events."""
    sync = session.sync_session
    mapper = _mapper(model)
    key = mapper.identity_key_from_primary_key(
        [values[column.key] for column in mapper.primary_key])
    if key in sync.identity_map:
        raise InvalidRequestError(f"{model.__name__} {key[1]} is in the session already")
    sync._autobegin_t()  # noqa: SLF001 - as Session.add does
    row = mapper.class_manager.new_instance()
    state = instance_state(row)
    state.dict.update(values)
    state.key = key
    state.session_id = sync.hash_key
    sync.identity_map._add_unpresent(state, key)  # noqa: SLF001
    return row


@event.listens_for(Session, "after_soft_rollback")
def _unwrite_new_rows(session: Session, previous: SessionTransaction) -> None:
    for savepoint, row in session.info.get(_NEW_IN_SAVEPOINT, ()):
        if savepoint is previous and row in session:
            session.expunge(row)


async def _next_sqlite_id(session: AsyncSession, table: Table) -> int:
    """SQLite: the id the row will have, counted on from the table's largest in this
    transaction. Writers hold the database's write lock from their BEGIN IMMEDIATE (core.db),
    so no other connection inserts meanwhile, and in this one every other INSERT into the
    table comes after the rows drawn for (the flush writes them first, then forgets the count:
    the next draw reads the largest id again)."""
    counts: dict[str, int] = session.sync_session.info.setdefault(_SQLITE_NEXT_IDS, {})
    if table.name not in counts:
        with session.no_autoflush:
            counts[table.name] = 1 + (await session.execute(
                _max_id(table))).scalar_one()
    new_id = counts[table.name]
    counts[table.name] = new_id + 1
    return new_id


@lru_cache(maxsize=16)
def _max_id(table: Table) -> Any:
    return select(func.coalesce(func.max(table.c.id), 0))


def _write_new_rows(session: Session) -> None:
    pending: dict[Table, list[Any]] | None = session.info.pop(_NEW_ROWS, None)
    session.info.pop(_SQLITE_NEXT_IDS, None)  # what is written next may take the next ids
    if pending:
        writes = writes_for(session)
        for table, rows in pending.items():
            states = [instance_state(row) for row in rows]
            dicts = [state.dict for state in states]
            # The objects as they are now: a change made since add_new goes in with the row,
            # which is then clean (no UPDATE after it; in one combined statement at the
            # commit, an UPDATE would not even see the row).
            names = tuple(column.key for column in table.columns)
            writes.insert(table, Columns({name: [values.get(name) for values in dicts]
                                          for name in names}))
            _mark_written(session, states, changed=False)


def _mark_written(session: Session, states: list[InstanceState[Any]], *,
                  changed: bool = True) -> None:
    """As the flush does for what it wrote (Session._register_persistent): committed, clean,
    out of the modified set; rows `changed` (not new) known to the transaction as changed in
    it, so that a savepoint rolled back expires them."""
    InstanceState._commit_all_states(  # noqa: SLF001
        [(state, state.dict) for state in states], session.identity_map)
    if changed:
        session._register_altered(states)  # noqa: SLF001


# --- the commit's writes in one statement ---------------------------------------------------

_COMBINED = "autodoctor.sql.combined_writes"


class Writes:
    """Where the writers (write_before_flush, write_before_commit) send their multi-row
    INSERTs and UPDATEs: run at once, on the session's connection."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def insert(self, table: Table, rows: list[dict[str, Any]] | Columns, *,
               returning: tuple[str, ...] = (),
               then: Callable[[list[Any]], object] | None = None) -> None:
        """bulk_insert_sync; `then` gets what it returned (ids: sorted, see insert_ids_sync)."""
        result = bulk_insert_sync(self.session.connection(), table, rows, returning=returning)
        if then is not None:
            then(sorted(result) if returning == ("id",) else result)

    def update(self, table: Table, columns: tuple[str, ...],
               rows: list[dict[str, Any]] | Columns) -> None:
        bulk_update_sync(self.session.connection(), table, columns, rows)


class CombinedWrites(Writes):
    """PostgreSQL, at the commit: the writers' statements become the parts of one
    (WITH w0 AS (INSERT …), w1 AS (UPDATE …) … SELECT what one part returns): one round trip
    and one execution for what was four or five. The parts see the database as it was before
    the statement, not each other's rows; foreign keys are checked at its end. So an UPDATE
    part must not touch a row an INSERT part adds (new rows go in as they are, clean: see
    _write_new_rows), and a table is updated by one part at most. One part may return rows
    (the transcript's new ids); `then` callbacks run after the statement, in order."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.parts: list[tuple[Any, ...]] = []
        self.params: dict[str, Any] = {}
        self.thens: list[tuple[Callable[[list[Any]], object], bool]] = []
        self.returning = False
        self.updated: set[str] = set()

    def insert(self, table: Table, rows: list[dict[str, Any]] | Columns, *,
               returning: tuple[str, ...] = (),
               then: Callable[[list[Any]], object] | None = None) -> None:
        if returning and (self.returning or returning != ("id",)):
            super().insert(table, rows, returning=returning, then=then)  # only one returns
            return
        columns = Columns.given(rows)
        if not columns.count:
            if then is not None:
                then([])
            return
        self._add(("insert", table, tuple(columns), bool(returning)), table, columns)
        if returning:
            self.returning = True
        if then is not None:
            self.thens.append((then, bool(returning)))

    def update(self, table: Table, columns: tuple[str, ...],
               rows: list[dict[str, Any]] | Columns) -> None:
        if table.name in self.updated:  # one UPDATE of a table per statement
            super().update(table, columns, rows)
            return
        values = Columns.given(rows, ("id", *columns))
        if not values.count:
            return
        self.updated.add(table.name)
        self._add(("update", table, columns, False), table, values)

    def _add(self, part: tuple[Any, ...], table: Table, values: dict[str, list[Any]]) -> None:
        place = len(self.parts)
        self.parts.append(part)
        self.params.update(_encoded(table, values, f"w{place}_"))

    def run(self) -> None:
        if not self.parts:
            return
        result = self.session.connection().execute(_combined(tuple(self.parts)), self.params)
        returned = sorted(result.scalars()) if self.returning else []
        for then, returns in self.thens:
            then(returned if returns else [])


@lru_cache(maxsize=64)
def _combined(parts: tuple[tuple[Any, ...], ...]) -> Any:
    # Built once per combination of parts (a few kinds of transaction).
    ctes: list[str] = []
    binds: list[Any] = []
    returned = "SELECT 1"
    for place, (kind, table, columns, returning) in enumerate(parts):
        prefix = f"w{place}_"
        if kind == "insert":
            sql = _insert_sql(table, columns, prefix, ("id",) if returning else ())
            if returning:
                returned = f'SELECT "id" FROM w{place}'
            bound = columns
        else:
            sql = _update_sql(table, columns, prefix)
            bound = ("id", *columns)
        ctes.append(f"w{place} AS ({sql})")
        binds.extend(_binds(table, bound, prefix))
    stmt = text("WITH " + ", ".join(ctes) + " " + returned).bindparams(*binds)
    return stmt.columns(column("id", Integer)) if returned != "SELECT 1" else stmt


def writes_for(session: Session) -> Writes:
    """The writes of this moment: combined into one statement at a commit on PostgreSQL,
    at once otherwise."""
    combined = session.info.get(_COMBINED)
    return combined if combined is not None else Writes(session)


# --- what one transaction keeps in session.info ----------------------------------------------

_TRANSACTION_KEYS: set[str] = set()


def transaction_scoped(*keys: str) -> None:
    """These session.info keys hold what one transaction gathered (rows to write, people to
    wake, taps seen): dropped when it ends, committed or rolled back."""
    _TRANSACTION_KEYS.update(keys)


def write_before_flush(write: Callable[[Session], object]) -> None:
    """Run `write` just before each flush and each commit, outside a savepoint (inside one,
    the caller writes at once: a savepoint rolled back must take its rows along). Writers run
    in the order they were registered."""
    _writers.append((write, True))


def write_before_commit(write: Callable[[Session], object]) -> None:
    """Like write_before_flush, but only at the commit: for rows nothing reads back in the
    transaction that changes them, written once however often it flushes."""
    _writers.append((write, False))


# Each writer, and whether it runs before flushes too.
_writers: list[tuple[Callable[[Session], object], bool]] = []


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, *_args: object) -> None:
    _write_waiting(session, committing=False)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _write_waiting(session, committing=True)


def _write_waiting(session: Session, *, committing: bool) -> None:
    if session.in_nested_transaction():
        return
    if not (committing and session.get_bind().dialect.name == "postgresql"):
        for write, at_flush in _writers:
            if at_flush or committing:
                write(session)
        return
    combined = session.info[_COMBINED] = CombinedWrites(session)
    try:
        for write, _at_flush in _writers:
            write(session)
    finally:
        del session.info[_COMBINED]
    combined.run()


@event.listens_for(Session, "after_transaction_end")
def _end_of_transaction(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        for key in _TRANSACTION_KEYS:
            session.info.pop(key, None)


# --- changed ORM objects written in one statement ---------------------------------------------

# Per model: the columns written, in order, and as a set (checked against each object's dict).
_TOGETHER: dict[type[Any], tuple[tuple[str, ...], frozenset[str]]] = {}


def write_changes_together(model: type[Any]) -> None:
    """On PostgreSQL, the objects of `model` changed in a transaction are written, just before
    each flush and at the commit, in one statement (bulk_update_sync: every column but the
    id), instead of by the ORM's flush (per object its unit-of-work bookkeeping, and per set of
    changed columns a statement, which the server runs once per row). They are then marked
    clean as the flush marks what it wrote. For tables the hot paths change on many rows per
    transaction (the engine's group commit changes dozens of intakes), with no relationships,
    version counters or onupdate defaults (the flush's work that is left out). An object
    with an attribute expired or not loaded, or marked for deletion, is left to the flush."""
    mapper = class_mapper(model)
    if mapper.relationships or mapper.version_id_col is not None:
        raise TypeError(f"{model.__name__}: relationships or versioning need the ORM's flush")
    columns = tuple(prop.key for prop in mapper.column_attrs if prop.key != "id")
    table: Table = model.__table__  # type: ignore[attr-defined]
    if any(table.c[key].onupdate is not None or table.c[key].server_onupdate is not None
           for key in columns):
        raise TypeError(f"{model.__name__}: onupdate defaults need the ORM's flush")
    _TOGETHER[model] = columns, frozenset(columns)


def _write_changes(session: Session) -> None:
    # The identity map's set of modified states (what session.dirty filters, object by
    # object, through attribute history); a row changed and changed back is written anyway.
    modified = session.identity_map._modified  # noqa: SLF001
    if not modified or not _TOGETHER or session.get_bind().dialect.name != "postgresql":
        return
    deleted = session._deleted  # noqa: SLF001
    for model, (columns, loaded) in _TOGETHER.items():
        states = [state for state in modified
                  if state.class_ is model and state.committed_state and state.key is not None
                  and not state.expired_attributes and state not in deleted
                  and state.dict.keys() >= loaded]
        if states:
            writes_for(session).update(model.__table__,  # type: ignore[attr-defined]
                                       columns, [state.dict for state in states])
            _mark_written(session, states)


# Registered before core.transcript's (which imports this module): rows written here come
# first, so transcript rows may point at them; changed rows next (a change may point at a
# new row).
write_before_flush(_write_new_rows)
write_before_flush(_write_changes)
transaction_scoped(_NEW_ROWS, _SQLITE_NEXT_IDS, _NEW_IN_SAVEPOINT)
