"""The conversation engine: one inbound message in, state + transcript + outbox out, atomically."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    TextClause,
    bindparam,
    column,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from core import transcript
from core.config import Config
from core.db import is_transient
from core.messages import Button, Inbound, Link, Outbound, storable_text
from core.models import (
    Conversation,
    Customer,
    Identity,
    InboundEvent,
    Intake,
    Mechanic,
)
from core.outbox import enqueue
from core.runtime import Runtime
from core.sql import (
    Columns,
    as_loaded,
    dialect,
    dialect_insert,
    draw_ids,
    get_by_id,
    insert_ids,
    insert_ignore,
    rows_params,
    rows_source,
    transaction_scoped,
    write_before_commit,
    writes_for,
)
from core.transcript import MessageRow

log = logging.getLogger("autodoctor.engine")
T = TypeVar("T")
K = TypeVar("K")

# Far above any channel's own limit; beyond it text is cut so one message cannot bloat the
# database. Channels reject long text earlier with a clear error (the widget) or split it.
MAX_INBOUND_CHARS = 20_000
_NAME_CHARS = Customer.__table__.c.display_name.type.length  # as Identity's


def clean_text(raw: str) -> str:
    """Text as stored (core.messages.storable_text), length bounded."""
    return storable_text(raw)[:MAX_INBOUND_CHARS]


@dataclass(slots=True, eq=False)
class ConversationState:
    """One person's conversation row, as plain values. The flows change it; the engine
    writes the conversations a transaction handled back at its commit, in one statement (as
    ORM objects, loading and flushing them cost more than the rest of a message's handling in
    the database layer)."""

    id: int
    identity_id: int
    flow: str
    step: str
    data: dict[str, Any]
    intake_id: int | None
    version: int
    # Set as it is handled, for the write-back; not read with the row (nothing reads the
    # row's times: a timestamp costs the driver more to read than any other column).
    updated_at: datetime | None = None


_CONVERSATION = Conversation.__table__
_CONVERSATION_COLUMNS = tuple(_CONVERSATION.c[f.name] for f in fields(ConversationState)
                              if f.name != "updated_at")
_WRITTEN = ("flow", "step", "data", "intake_id", "version", "updated_at")
# The conversations handled in this transaction and not yet written back.
_HANDLED = "autodoctor.engine.handled_conversations"


def _write_conversations(session: Session) -> None:
    handled: list[ConversationState] | None = session.info.pop(_HANDLED, None)
    if handled:
        writes_for(session).update(_CONVERSATION, _WRITTEN,
                                   Columns.of(handled, ("id", *_WRITTEN)))


# At the commit only (nothing reads a conversation back in the transaction that handles it),
# after core.sql's new rows: a conversation may point at an intake made in the same one.
write_before_commit(_write_conversations)
transaction_scoped(_HANDLED)


@dataclass
class Context:
    """What a flow sees while handling one inbound message, inside its transaction."""

    session: AsyncSession
    runtime: Runtime
    inbound: Inbound
    identity: Identity
    conversation: ConversationState
    now: datetime
    replies: list[Outbound] = field(default_factory=list)
    # The replies' transcript rows, in order (an open socket can send them as they are).
    reply_rows: list[MessageRow] = field(default_factory=list)
    # A short answer to a button tap ("Accepted", "Already taken"), shown as a toast.
    toast: str | None = None
    # Work to do once the transaction has committed (e.g. a refund call to the provider).
    after_commit: list[Callable[[], Awaitable[object]]] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def text(self) -> str:
        return self.inbound.text

    async def say(self, text: str, buttons: Sequence[Button] = (), link: Link | None = None,
                  image: str | None = None) -> None:
        """Reply to the person who wrote, on the channel they wrote on."""
        out = Outbound(channel=self.identity.channel, address=self.identity.address, text=text,
                       buttons=tuple(buttons), link=link, image=image)
        message = await self.send(self.identity, out, conversation_id=self.conversation.id)
        if message is not None:
            self.replies.append(out)
            self.reply_rows.append(message)

    async def get(self, model: type[T], key: int | None) -> T | None:
        """A row by primary key. Without flushing first: an object changed in this
        transaction is in the session already and is returned as it is."""
        if key is None:
            return None
        return await get_by_id(self.session, model, key)

    async def send(self, identity: Identity, outbound: Outbound,
                   **kwargs: Any) -> MessageRow | None:
        """Queue a message to anyone (an offer, a relayed line); its transcript row, or None
        if already queued."""
        return await enqueue(self.session, identity, outbound, self.now, **kwargs)


Router = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Handled:
    """What came of one inbound message."""

    replies: list[Outbound]
    toast: str | None
    duplicate: bool = False
    # Who sent it (None for a duplicate): a first contact has just been created.
    identity_id: int | None = None
    # The replies' stored transcript rows (committed), in order.
    reply_rows: list[MessageRow] = field(default_factory=list)


class _Turns(Generic[K]):
    """One holder at a time per key, the others served in the order they came: what an
    asyncio.Lock per key would do, without making one for each message (most find nobody
    ahead of them, and cost a dictionary entry)."""

    def __init__(self) -> None:
        # Per key held: the turns of those waiting behind the holder (None: nobody waits).
        self._waiting: dict[K, deque[asyncio.Future[None]] | None] = {}

    def take_now(self, key: K) -> bool:
        """Take the turn if nobody holds it; False if the caller must wait()."""
        if key in self._waiting:
            return False
        self._waiting[key] = None
        return True

    async def wait(self, key: K) -> None:
        """After take_now() said no: wait for the turn behind whoever holds it and those
        already waiting."""
        queue = self._waiting[key]
        if queue is None:
            queue = self._waiting[key] = deque()
        turn = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self.give_back(key)  # handed over just as the caller was cancelled
            raise

    def give_back(self, key: K) -> None:
        """Hand the turn to the next still waiting, if any."""
        queue = self._waiting[key]
        while queue:
            turn = queue.popleft()
            if not turn.done():  # not given up (cancelled) while waiting
                turn.set_result(None)
                return
        del self._waiting[key]

    def __len__(self) -> int:
        """The keys held."""
        return len(self._waiting)


@dataclass
class _Waiting:
    inbound: Inbound
    done: asyncio.Future[Context | None]


class Engine:
    """Receives messages from every channel and runs them through the flows, in order.

    Messages that arrive while a transaction is under way wait for the next one (on
    PostgreSQL a second may run beside it: see SPARE_MIN_WAITING), which then handles all of
    them (up to max_batch) with one BEGIN, one lookup query, one flush and one COMMIT (group
    commit): per message, the round trips to the database are what cost most.
    Each message still sees the effects of those before it, as if handled alone. If anything
    in a batch fails, it is rolled back and its messages are handled one by one, so one bad
    message (or a race) costs the others nothing but time.
    """

    # Messages per transaction, on both databases. A statement costs about the same whatever
    # the batch's size (a round trip on PostgreSQL; SQLAlchemy's own work per statement on
    # both), so a larger batch saves more. (SQLite at 64 answered 200 saturating widget
    # customers 2-5 % slower than at 256.)
    MAX_BATCH = 256
    DRAIN_SECONDS = 10.0
    # A further transaction starts beside the one under way only when this many messages wait
    # for it, or when one has waited SPARE_AFTER seconds (the one under way is slow: a lock,
    # a slow server). A batch's statements cost about the same CPU whatever its size (130 us
    # each through SQLAlchemy and asyncpg), so two half batches cost more than one whole one;
    # at a few messages a transaction, that fixed cost was most of a message's.
    SPARE_MIN_WAITING = 32
    SPARE_AFTER = 0.02

    def __init__(self, runtime: Runtime, router: Router, *, max_batch: int | None = None,
                 workers: int | None = None) -> None:
        self.runtime = runtime
        self.router = router
        dialect = runtime.engine.dialect.name
        self.max_batch = max_batch or self.MAX_BATCH
        # Transactions under way at once. PostgreSQL: two, so one batch's round trips to the
        # server overlap the next batch's Python work (a batch never holds two messages of one
        # person, and one person's messages wait for each other). SQLite has one writer: one.
        self.workers = workers or (2 if dialect == "postgresql" else 1)
        # One person's messages are handled one after another in this process; across
        # processes the conversation row lock (PostgreSQL) or the write lock (SQLite) does it.
        self._turns: _Turns[tuple[str, str]] = _Turns()
        self._waiting: list[_Waiting] = []
        self._running: set[asyncio.Task[None]] = set()
        self._spare_timer: asyncio.TimerHandle | None = None
        # Per channel: the message counter and reply-time histogram (labelled once).
        self._metrics: dict[str, tuple[Any, Any]] = {}

    def _metrics_for(self, channel: str) -> tuple[Any, Any]:
        metrics = self.runtime.metrics
        pair = (metrics.messages_in.labels(channel), metrics.reply_seconds.labels(channel))
        self._metrics[channel] = pair
        return pair

    async def receive(self, inbound: Inbound) -> list[Outbound]:
        """Handle one message; returns the replies to its sender (already stored and queued)."""
        return (await self.handle(inbound)).replies

    async def handle(self, inbound: Inbound) -> Handled:
        """Like receive(), with the short answer for a button tap (a Telegram toast)."""
        text = clean_text(inbound.text)
        action = clean_text(inbound.action)[:255] if inbound.action else None
        if text != inbound.text or action != inbound.action:
            inbound = replace(inbound, text=text, action=action)
        started = time.perf_counter()
        key = (inbound.channel, inbound.address)
        if not self._turns.take_now(key):
            await self._turns.wait(key)
        try:
            ctx = await self._submit(inbound)
        finally:
            self._turns.give_back(key)
        if ctx is None:
            return Handled([], None, duplicate=True)
        for work in ctx.after_commit:
            try:
                await work()
            except Exception:
                log.exception("after-commit work failed channel=%s", inbound.channel)
        counted, timed = self._metrics.get(inbound.channel) or self._metrics_for(inbound.channel)
        counted.inc()
        timed.observe(time.perf_counter() - started)
        return Handled(ctx.replies, ctx.toast, identity_id=ctx.identity.id,
                       reply_rows=ctx.reply_rows)

    def _submit(self, inbound: Inbound) -> asyncio.Future[Context | None]:
        """Queue the message for a transaction; the future is its Context when committed."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(inbound, loop.create_future())
        self._waiting.append(waiting)
        # With no transaction under way, one starts at once. Beside one, another starts when
        # SPARE_MIN_WAITING messages wait, or after SPARE_AFTER; until then the message waits
        # for the batch after the one under way (whose worker takes what waits next).
        running = self._live_workers()
        if not running or (len(running) < self.workers
                           and len(self._waiting) >= self.SPARE_MIN_WAITING):
            self._start_worker()
        elif len(running) < self.workers and self._spare_timer is None:
            self._spare_timer = loop.call_later(self.SPARE_AFTER, self._spare_due)
        return waiting.done

    def _live_workers(self) -> set[asyncio.Task[None]]:
        # A finished worker is done before its callbacks run: count only the live ones (the
        # set is made anew only when one has finished, not for every message).
        for task in self._running:
            if task.done():
                self._running = {task for task in self._running if not task.done()}
                break
        return self._running

    def _start_worker(self) -> None:
        self._running.add(asyncio.create_task(self._work(), name="engine-batches"))

    def _spare_due(self) -> None:
        self._spare_timer = None
        if self._waiting and len(self._live_workers()) < self.workers:
            self._start_worker()

    async def _work(self) -> None:
        try:
            while self._waiting:
                batch = [w for w in self._waiting[:self.max_batch] if not w.done.done()]
                del self._waiting[:self.max_batch]
                if batch:
                    await self._run(batch)
        except asyncio.CancelledError:
            # Shutdown: what still waits is not handled (its callers are told).
            for waiting in self._waiting:
                waiting.done.cancel()
            self._waiting.clear()
            raise

    async def drain(self) -> bool:
        """Wait until every message handed in so far is handled (at shutdown, before the
        database goes away); False if that took longer than DRAIN_SECONDS."""
        if not self._running:
            return True
        _done, pending = await asyncio.wait(set(self._running), timeout=self.DRAIN_SECONDS)
        if pending:
            log.warning("%s messages still waiting at shutdown", len(self._waiting))
        return not pending

    async def _run(self, batch: list[_Waiting]) -> None:
        self.runtime.metrics.batch_messages.observe(len(batch))
        try:
            if len(batch) > 1:
                try:
                    contexts = await self._receive_batch([w.inbound for w in batch])
                except Exception as exc:  # noqa: BLE001 - each is tried again on its own
                    log.info("batch of %s rolled back (%s); handling them one by one",
                             len(batch), _describe(exc))
                else:
                    for waiting, ctx in zip(batch, contexts, strict=True):
                        _settle(waiting.done, ctx)
                    return
            for waiting in batch:
                try:
                    ctx = await self._receive_one(waiting.inbound)
                except Exception as exc:  # noqa: BLE001 - it is the caller's to report
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
                else:
                    _settle(waiting.done, ctx)
        except BaseException:
            for waiting in batch:
                waiting.done.cancel()
            raise

    async def _receive_one(self, inbound: Inbound) -> Context | None:
        """One message in its own transaction, tried again after a race with another process
        (first contact, lock timeout)."""
        for attempt in range(4):
            try:
                return (await self._receive_batch([inbound]))[0]
            except (IntegrityError, DBAPIError) as exc:
                if attempt == 3 or not _retryable(exc):
                    raise
                log.info("retrying channel=%s after %s", inbound.channel, _describe(exc))
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _receive_batch(self, inbounds: Sequence[Inbound]) -> list[Context | None]:
        """Messages in order in one transaction; None for a duplicate delivery."""
        async with self.runtime.sessions.begin() as session:
            people = await _known_people(session, inbounds)
            await _meet(session, inbounds, people, self.runtime.clock.now())
            return [await self._receive_in(session, inbound, people) for inbound in inbounds]

    async def _receive_in(self, session: AsyncSession, inbound: Inbound,
                          people: dict[tuple[str, str], Person]) -> Context | None:
        now = inbound.received_at or self.runtime.clock.now()
        if inbound.provider_id is not None:
            fresh = await insert_ignore(session, InboundEvent, {
                "provider": inbound.channel, "event_id": inbound.provider_id,
                "received_at": now}, ["provider", "event_id"])
            if fresh is None:
                log.info("duplicate channel=%s provider_id=%s ignored", inbound.channel,
                         inbound.provider_id)
                return None
        identity, conversation, _intake, _mechanic = people[(inbound.channel, inbound.address)]
        transcript.add(session, MessageRow(
            identity_id=identity.id, conversation_id=conversation.id, direction="in",
            channel=inbound.channel, text=inbound.text, action=inbound.action,
            body={"attachments": list(inbound.attachments)} if inbound.attachments else {},
            provider_id=inbound.provider_id, created_at=now))
        ctx = Context(session=session, runtime=self.runtime, inbound=inbound,
                      identity=identity, conversation=conversation, now=now)
        await self.router(ctx)
        conversation.version += 1
        conversation.updated_at = now
        session.sync_session.info.setdefault(_HANDLED, []).append(conversation)
        return ctx


def _settle(done: asyncio.Future[Context | None], ctx: Context | None) -> None:
    if not done.done():
        done.set_result(ctx)


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return type(orig).__name__ if orig is not None else f"{type(exc).__name__}: {exc}"


Person = tuple[Identity, ConversationState, Intake | None, Mechanic | None]


async def _known_people(session: AsyncSession,
                        inbounds: Sequence[Inbound]) -> dict[tuple[str, str], Person]:
    """The usual case in one query for any number of senders (PostgreSQL: after one that
    locks): identity, conversation (locked, in id order so concurrent batches cannot deadlock
    on each other) and current intake. The caller keeps the intakes referenced, so the
    session's identity map still holds them when the flow looks them up (no second query).
    Mechanics likewise."""
    keys = sorted({(inbound.channel, inbound.address) for inbound in inbounds})
    name = dialect(session)
    params = _identity_params(name, keys)
    if name == "postgresql":
        # The conversations are locked first, and read with their intakes by the next
        # statement. A statement that waits for a row lock gets that row as the other
        # transaction committed it, but the rows it joins to it as they were before: a
        # message that waited for a payment's transaction (which pays the intake and moves
        # the conversation on) would see the new step beside an unpaid intake, and could
        # cancel it. The next statement, its locks held, reads everything as committed.
        await session.execute(_lock_query(), params)
    rows = (await session.execute(_people_query(name), params)).all()
    return {(row[0].channel, row[0].address): (row[0], ConversationState(*row[3:]), row[1], row[2])
            for row in rows}


@lru_cache(maxsize=4)
def _people_query(dialect_name: str) -> Select[Any]:
    # Built once: the keys are bound at execution (building and keying this statement anew
    # took longer than running it for a small batch).
    return _senders_locked(
        select(Identity, Intake, Mechanic, *_CONVERSATION_COLUMNS)
        .join(_CONVERSATION, _CONVERSATION.c.identity_id == Identity.id)
        .outerjoin(Intake, Intake.id == _CONVERSATION.c.intake_id)
        .outerjoin(Mechanic, Mechanic.id == Identity.mechanic_id), dialect_name)


@lru_cache(maxsize=1)
def _lock_query() -> Select[Any]:
    return _senders_locked(
        select(_CONVERSATION.c.id)
        .join(Identity, Identity.id == _CONVERSATION.c.identity_id), "postgresql")


def _senders_locked(query: Select[Any], dialect_name: str) -> Select[Any]:
    """The senders' rows of `query`, their conversations locked in id order."""
    return (query.where(_identity_in(dialect_name))
            .order_by(_CONVERSATION.c.id)
            .with_for_update(of=_CONVERSATION))


@lru_cache(maxsize=4)
def _identities_query(dialect_name: str) -> Select[Any]:
    return select(Identity).where(_identity_in(dialect_name))


def _identity_in(dialect_name: str) -> ColumnElement[bool]:
    """(channel, address) among the keys bound by _identity_params, found through the unique
    index on the two, whatever the number of keys and the size of the table. The keys are one
    bound value (PostgreSQL: two arrays; SQLite: a JSON list of pairs), so the SQL is the same
    for any batch: the server parses and plans it once per connection, not once per batch
    size (PostgreSQL took milliseconds to plan a list of 400 parameters). SQLite's planner
    scanned the whole conversations table for `(channel, address) IN (VALUES ...)`: a
    batch's query took longer the more people had ever written."""
    if dialect_name == "postgresql":
        pairs = func.unnest(bindparam("channels", type_=ARRAY(String)),
                            bindparam("addresses", type_=ARRAY(String))
                            ).table_valued("channel", "address").render_derived()
        keys = select(pairs.c.channel, pairs.c.address)
    else:
        pair = func.json_each(bindparam("keys", type_=String)).table_valued("value")
        keys = select(func.json_extract(pair.c.value, "$[0]"),
                      func.json_extract(pair.c.value, "$[1]"))
    return tuple_(Identity.channel, Identity.address).in_(keys)


def _identity_params(dialect_name: str, keys: list[tuple[str, str]]) -> dict[str, Any]:
    if dialect_name == "postgresql":
        return {"channels": [k[0] for k in keys], "addresses": [k[1] for k in keys]}
    return {"keys": json.dumps(keys)}


async def _meet(session: AsyncSession, inbounds: Sequence[Inbound],
                people: dict[tuple[str, str], Person], now: datetime) -> None:
    """Add the senders without a conversation to `people`: first contacts become customers,
    and each gets a conversation, all of them in a few multi-row statements (a batch of new
    widget visitors costs what one costs). Someone created by another process meanwhile
    raises IntegrityError, and the engine's retry finds them."""
    missing = {(i.channel, i.address): i for i in inbounds if (i.channel, i.address) not in people}
    if not missing:
        return
    name = dialect(session)
    if name == "postgresql":
        met = await _first_contacts(session, list(missing.values()), now)
        people.update(met)
        missing = {key: inbound for key, inbound in missing.items() if key not in met}
        if not missing:
            return
    with session.no_autoflush:  # nothing pending in this session can be one of them
        found = {(x.channel, x.address): x for x in (await session.scalars(
            _identities_query(name), _identity_params(name, sorted(missing)))).all()}
        new = [inbound for key, inbound in missing.items() if key not in found]
        found.update({(x.channel, x.address): x for x in await _new_customers(session, new, now)})
        # Usually none has a conversation yet (someone linked outside the bot, say on the web
        # console, or just created); one made meanwhile by another process is read and locked.
        identities = [found[key] for key in missing]
        made = (await session.execute(
            dialect_insert(session, _CONVERSATION)
            .on_conflict_do_nothing(index_elements=["identity_id"])
            .returning(*_CONVERSATION_COLUMNS),
            [{"identity_id": x.id, "flow": "customer" if x.mechanic_id is None else "mechanic",
              "step": "start", "data": {}, "version": 0, "created_at": now, "updated_at": now}
             for x in identities])).all()
        conversations = {row.identity_id: ConversationState(*row) for row in made}
    for key, identity in zip(missing, identities, strict=True):
        conversation = conversations.get(identity.id)
        if conversation is None:
            row = (await session.execute(
                select(*_CONVERSATION_COLUMNS)
                .where(_CONVERSATION.c.identity_id == identity.id).with_for_update())).one()
            conversation = ConversationState(*row)
        people[key] = (identity, conversation, None, None)


async def _first_contacts(session: AsyncSession, inbounds: Sequence[Inbound],
                          now: datetime) -> dict[tuple[str, str], Person]:
    """PostgreSQL: senders seen for the first time become customers, with their identities
    and conversations, in one statement (the ids drawn ahead, see core.sql.draw_ids), instead
    of a lookup and three INSERTs: per round trip, SQLAlchemy, the driver and the system calls
    cost some 0.3 ms of CPU here, and most batches bring a few new widget visitors. A sender
    who has an identity already (linked as a mechanic, say, or made meanwhile by another
    process) is skipped by the statement and left out of what is returned, for _meet's
    general path; the customer drawn for them is not inserted."""
    names = _stored_names(inbounds)
    created = [i.received_at or now for i in inbounds]
    identity_ids = await draw_ids(session, _IDENTITY, len(inbounds))
    customer_ids = await draw_ids(session, Customer.__table__, len(inbounds))
    params = rows_params(_IDENTITY, {
        "id": identity_ids, "customer_id": customer_ids,
        "channel": [i.channel for i in inbounds], "address": [i.address for i in inbounds],
        "display_name": names, "created_at": created}, "k_")
    with session.no_autoflush:  # nothing pending in this session can be one of them
        made = {row.identity_id: row.id for row in await session.execute(
            _first_contacts_statement(), {**params, "now": now})}
    people: dict[tuple[str, str], Person] = {}
    for inbound, identity_id, customer_id, name, at in zip(
            inbounds, identity_ids, customer_ids, names, created, strict=True):
        conversation_id = made.get(identity_id)
        if conversation_id is None:
            continue
        identity = as_loaded(session, Identity, {
            **_NO_VALUES, "id": identity_id, "channel": inbound.channel,
            "address": inbound.address, "customer_id": customer_id, "display_name": name,
            "reachable": True, "created_at": at})
        people[(inbound.channel, inbound.address)] = (identity, ConversationState(
            conversation_id, identity_id, "customer", "start", {}, None, 0), None, None)
    if people:
        _log_new_customers([p[0].customer_id for p in people.values()],
                           [key[0] for key in people])
    return people


_IDENTITY = Identity.__table__
_NO_VALUES = {column.key: None for column in _IDENTITY.columns}


@lru_cache(maxsize=1)
def _first_contacts_statement() -> TextClause:
    # The identities first, skipping any that exist; then a customer and a conversation for
    # each identity made (foreign keys are checked at the end of the statement).
    names = ("id", "customer_id", "channel", "address", "display_name", "created_at")
    source, value, binds = rows_source(_IDENTITY, names, "k_", "k")
    sql = (
        f"WITH i AS (INSERT INTO identities ({', '.join(names)}, reachable)"
        f" SELECT {', '.join(value[name] for name in names)}, true FROM {source}"
        " ON CONFLICT (channel, address) DO NOTHING"
        " RETURNING id, customer_id, display_name, created_at),"
        " c AS (INSERT INTO customers (id, display_name, created_at)"
        " SELECT customer_id, display_name, created_at FROM i)"
        " INSERT INTO conversations (identity_id, flow, step, data, version, created_at,"
        " updated_at) SELECT id, 'customer', 'start', CAST('{}' AS json), 0, :now, :now FROM i"
        " RETURNING id, identity_id")
    return text(sql).bindparams(
        *binds, bindparam("now", type_=_CONVERSATION.c.created_at.type)
    ).columns(column("id", Integer), column("identity_id", Integer))


async def _new_customers(session: AsyncSession, inbounds: Sequence[Inbound],
                         now: datetime) -> list[Identity]:
    """First contacts become customers, with their identities, in two multi-row statements.
    An identity another process created meanwhile raises IntegrityError: the retry finds it."""
    if not inbounds:
        return []
    names = _stored_names(inbounds)
    customer_ids = await insert_ids(session, Customer, [
        {"display_name": name, "created_at": i.received_at or now}
        for i, name in zip(inbounds, names, strict=True)])
    with session.no_autoflush:
        created = list((await session.scalars(
            dialect_insert(session, Identity)
            .on_conflict_do_nothing(index_elements=["channel", "address"]).returning(Identity),
            [{"channel": i.channel, "address": i.address, "customer_id": customer_id,
              "display_name": name, "created_at": i.received_at or now}
             for i, customer_id, name in zip(inbounds, customer_ids, names, strict=True)])).all())
    if len(created) < len(inbounds):
        raise IntegrityError("identity created concurrently", None, Exception("race"))
    _log_new_customers(customer_ids, [i.channel for i in inbounds])
    return created


def _stored_names(inbounds: Sequence[Inbound]) -> list[str | None]:
    """The senders' names as stored: where a first contact's customer and identity are made
    (the engine's batches, resolve_person), cleaned and cut to the column."""
    return [storable_text(i.display_name)[:_NAME_CHARS] if i.display_name else None
            for i in inbounds]


def _log_new_customers(customer_ids: Sequence[int | None], channels: Sequence[str]) -> None:
    log.info("new customers=%s channels=%s", ",".join(map(str, customer_ids)),
             ",".join(sorted(set(channels))))


def _retryable(exc: DBAPIError) -> bool:
    # IntegrityError too: two processes creating the same person's first rows at once; and a
    # pooled connection found dead (the database restarted): the retry takes a fresh one.
    return isinstance(exc, IntegrityError) or is_transient(exc) or exc.connection_invalidated


async def resolve_identity(session: AsyncSession, inbound: Inbound, now: datetime) -> Identity:
    """The identity for (channel, address); a first contact becomes a new customer."""
    return (await resolve_person(session, inbound, now))[0]


async def resolve_person(session: AsyncSession, inbound: Inbound,
                         now: datetime) -> tuple[Identity, Conversation | None]:
    """The identity for (channel, address); a first contact becomes a new customer, and its
    new conversation comes back too (None for someone known). For one sender outside the
    engine (an upload before its message); the engine meets a batch's senders at once."""
    # Nothing pending in this session can be this identity, so the lookup need not flush
    # others' changes first.
    with session.no_autoflush:
        identity = await session.scalar(select(Identity).where(
            Identity.channel == inbound.channel, Identity.address == inbound.address))
    if identity is not None:
        return identity, None
    (identity,) = await _new_customers(session, [inbound], now)
    # Nobody else can see this identity yet: its conversation is written with the rest.
    conversation = Conversation(identity_id=identity.id, flow="customer", step="start",
                                data={}, version=0, created_at=now, updated_at=now)
    session.add(conversation)
    return identity, conversation
