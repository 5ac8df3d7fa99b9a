"""The conversation engine: one inbound message in, state + transcript + outbox out, atomically.

Messages are handled in batches (group commit), each batch in one unit of work
(core.store.uow): its senders are found or met (core.store.people), each message is stored
and run through the flows (a Router), and the unit of work writes what they changed and
commits, then wakes whoever waits for the replies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError

from core.context import Context, Handled, Router
from core.db import is_transient
from core.dispatch import Taps
from core.errors import RaceLost
from core.messages import Inbound, Outbound, storable_text
from core.models import InboundEvent, table
from core.runtime import Runtime
from core.shapes import FILE_ID, fits
from core.store.people import Contact, Key, Person, people_for
from core.store.records import MessageRow
from core.store.uow import UnitOfWork
from core.turns import KeyedFifoLock

log = logging.getLogger("autodoctor.engine")

# Far above any channel's own limit; beyond it text is cut so one message cannot bloat the
# database. Channels reject long text earlier with a clear error (the widget) or split it.
MAX_INBOUND_CHARS = 20_000


def clean_text(raw: str) -> str:
    """Text as stored (core.messages.storable_text), length bounded."""
    return storable_text(raw)[:MAX_INBOUND_CHARS]


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
    in a batch fails, it is rolled back: a message whose own handling failed is handled alone
    and the others together again; a failure at the commit has them handled one by one. So
    one bad message (or a race) costs the others nothing but time.
    """

    # Messages per transaction, on both databases. A statement costs about the same whatever
    # the batch's size (a round trip on PostgreSQL; SQLAlchemy's own work per statement on
    # both), so a larger batch saves more (bench/README.md, widget_throughput.py).
    MAX_BATCH = 256
    DRAIN_SECONDS = 10.0
    # A further transaction starts beside the one under way only when this many messages wait
    # for it, or when one has waited SPARE_AFTER seconds (the one under way is slow: a lock,
    # a slow server). A batch's statements cost about the same CPU whatever its size, so two
    # half batches cost more than one whole one.
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
        self._turns: KeyedFifoLock[Key] = KeyedFifoLock()
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
        attachments = tuple(a for a in inbound.attachments if fits(FILE_ID, a))
        provider_id = clean_text(inbound.provider_id)[:255] if inbound.provider_id else None
        if (text, action, attachments, provider_id) != (inbound.text, inbound.action,
                                                        inbound.attachments,
                                                        inbound.provider_id):
            # Nothing reaches a query that a column could not hold (PostgreSQL refuses a NUL).
            inbound = replace(inbound, text=text, action=action, attachments=attachments,
                              provider_id=provider_id)
        started = time.perf_counter()
        key = (inbound.channel, inbound.address)
        if not self._turns.take_now(key):
            await self._turns.wait(key)
        try:
            ctx = await self._submit(inbound)
        finally:
            self._turns.release(key)
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
                       reply_rows=ctx.reply_rows, first_contact=ctx.person.new)

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
            await self._run_batch(batch)
        except BaseException:
            for waiting in batch:
                waiting.done.cancel()
            raise

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        """The batch in one transaction. A message whose own handling fails is handled
        alone (its error goes to its sender) and the others together again; a failure that
        belongs to no one message (at the commit) has them handled one by one."""
        remaining = batch
        while len(remaining) > 1:
            try:
                contexts = await self._receive_batch([w.inbound for w in remaining])
            except _MessageFailed as failed:
                log.info("batch of %s rolled back: message %s failed (%s); the others again",
                         len(remaining), failed.index, _describe(failed.cause))
                await self._alone(remaining[failed.index])
                remaining = remaining[:failed.index] + remaining[failed.index + 1:]
                continue
            except Exception as exc:  # noqa: BLE001 - each is tried again on its own
                log.info("batch of %s rolled back (%s); handling them one by one",
                         len(remaining), _describe(exc))
                break
            for waiting, ctx in zip(remaining, contexts, strict=True):
                _settle(waiting.done, ctx)
            return
        for waiting in remaining:
            await self._alone(waiting)

    async def _alone(self, waiting: _Waiting) -> None:
        try:
            ctx = await self._receive_one(waiting.inbound)
        except Exception as exc:  # noqa: BLE001 - it is the caller's to report
            if not waiting.done.done():
                waiting.done.set_exception(exc)
        else:
            _settle(waiting.done, ctx)

    async def _receive_one(self, inbound: Inbound) -> Context | None:
        """One message in its own transaction, tried again after a race with another process
        (first contact, lock timeout)."""
        for attempt in range(4):
            try:
                return (await self._receive_batch([inbound]))[0]
            except (RaceLost, DBAPIError) as exc:
                if attempt == 3 or not _retryable(exc):
                    raise
                log.info("retrying channel=%s after %s", inbound.channel, _describe(exc))
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _receive_batch(self, inbounds: Sequence[Inbound]) -> list[Context | None]:
        """Messages in order in one transaction; None for a duplicate delivery."""
        now = self.runtime.clock.now()
        taps = Taps()
        async with self.runtime.transaction() as uow:
            people = await people_for(uow, [
                Contact(i.channel, i.address, i.display_name, i.received_at) for i in inbounds],
                now)
            first = await _first_deliveries(uow, inbounds, now)
            contexts: list[Context | None] = []
            for index, inbound in enumerate(inbounds):
                if inbound.provider_id is not None and \
                        (inbound.channel, inbound.provider_id) not in first:
                    log.info("duplicate channel=%s provider_id=%s ignored", inbound.channel,
                             inbound.provider_id)
                    contexts.append(None)
                    continue
                try:
                    contexts.append(await self._receive_in(uow, inbound, people, taps))
                except Exception as exc:
                    if len(inbounds) == 1:
                        raise
                    raise _MessageFailed(index, exc) from exc
            return contexts

    async def _receive_in(self, uow: UnitOfWork, inbound: Inbound, people: dict[Key, Person],
                          taps: Taps) -> Context | None:
        now = inbound.received_at or self.runtime.clock.now()
        person = people[(inbound.channel, inbound.address)]
        row = MessageRow(
            identity_id=person.identity.id, conversation_id=person.conversation.id,
            direction="in", channel=inbound.channel, text=inbound.text, action=inbound.action,
            body={"attachments": list(inbound.attachments)} if inbound.attachments else {},
            provider_id=inbound.provider_id, created_at=now)
        uow.add_message(row)
        ctx = Context(uow=uow, runtime=self.runtime, inbound=inbound, person=person, now=now,
                      taps=taps, inbound_row=row)
        await self.router(ctx)
        person.conversation.update(updated_at=now)
        return ctx


async def _first_deliveries(uow: UnitOfWork, inbounds: Sequence[Inbound],
                            now: datetime) -> set[tuple[str, str]]:
    """Records the providers' ids of these messages, in one statement; the (channel, id)
    pairs seen for the first time (the others are redeliveries)."""
    rows = [(i.channel, i.provider_id, i.received_at or now) for i in inbounds
            if i.provider_id is not None]
    if not rows:
        return set()
    return {(channel, event_id) for channel, event_id in await uow.insert_now(
        table(InboundEvent), ("provider", "event_id", "received_at"), rows,
        returning=("provider", "event_id"), conflict=("provider", "event_id"))}


class _MessageFailed(Exception):
    """The handling of one message of a batch failed (the batch is rolled back)."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"message {index}: {cause!r}")
        self.index, self.cause = index, cause


def _settle(done: asyncio.Future[Context | None], ctx: Context | None) -> None:
    if not done.done():
        done.set_result(ctx)


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return type(orig).__name__ if orig is not None else f"{type(exc).__name__}: {exc}"


def _retryable(exc: Exception) -> bool:
    # A first contact met by two processes at once; a lock timeout or deadlock; a pooled
    # connection found dead (the database restarted): the retry takes a fresh one.
    if isinstance(exc, RaceLost):
        return True
    assert isinstance(exc, DBAPIError)
    return isinstance(exc, IntegrityError) or is_transient(exc) or exc.connection_invalidated
