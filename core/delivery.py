"""The outbox dispatcher: claims due rows with a lease, sends them through their channel.

Per-chat order: only the oldest pending row of each chat can be claimed, so a message never
overtakes one still waiting to be retried. A row leased by a process that died is claimable
again once its lease runs out. Waiting rows are woken at once by the hub on commit.

Provider limits for the whole deployment: a channel given a role (`roles`, e.g. telegram →
"send:telegram") is sent only by the process holding that role (core.leadership), so its
limiter is the deployment's; the other processes leave that channel's rows alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import ColumnElement, func, select, update

from core.errors import PermanentFailure, RetryLater
from core.leadership import Leadership
from core.messages import Outbound
from core.models import Identity, Offer, OutboxItem
from core.ratelimit import ChannelLimiter
from core.runtime import Runtime

log = logging.getLogger("autodoctor.outbox")

MAX_ATTEMPTS = 12
BASE_BACKOFF = 1.0
MAX_BACKOFF = 300.0


class Sender(Protocol):
    """A channel's way out: returns the provider's message id."""

    async def send(self, outbound: Outbound) -> str | None: ...


@dataclass
class DeliveryStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with ±20% jitter, capped."""
    delay = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** max(0, attempts - 1))
    return float(delay * (0.8 + 0.4 * (rng or random).random()))


class OutboxDispatcher:
    def __init__(self, runtime: Runtime, senders: Mapping[str, Sender],
                 limiters: Mapping[str, ChannelLimiter] | None = None, *,
                 lease_seconds: float = 60, batch: int = 100,
                 worker_id: str | None = None, leadership: Leadership | None = None,
                 roles: Mapping[str, str] | None = None) -> None:
        self.runtime = runtime
        self.senders = dict(senders)
        self.limiters = dict(limiters or {})
        # channel → the deployment-wide role a process must hold to send it (module docstring).
        self.roles = dict(roles or {})
        self.leadership = leadership
        if self.roles:
            if leadership is None:
                raise ValueError("roles need a Leadership to hold them")
            for role in self.roles.values():
                leadership.want(role)
        self.lease = timedelta(seconds=lease_seconds)
        self.batch = batch
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:12]}"
        # Set by hand_back() (the drain): claim nothing more, send nothing not yet started.
        self.handing_back = asyncio.Event()
        # run_forever's rounds, set once it has stopped (or was never started).
        self.stopped = asyncio.Event()
        self.stopped.set()
        # Deliveries still waiting for their turn (the rate limiter): cancelled by a drain.
        self._queued: set[asyncio.Task[None]] = set()

    def may_send(self, channel: str) -> bool:
        """Whether this process sends `channel` now: it needs no role, or the role is held."""
        role = self.roles.get(channel)
        return role is None or (self.leadership is not None and self.leadership.holds(role))

    def sending(self) -> list[str]:
        """The channels this process sends now."""
        return [channel for channel in self.senders if self.may_send(channel)]

    async def claim(self, now: datetime) -> list[OutboxItem]:
        """Lease the oldest due row of each chat (FOR UPDATE SKIP LOCKED on PostgreSQL)."""
        channels = self.sending()
        if not channels or self.handing_back.is_set():
            return []
        # The head of each chat: its oldest pending row (the partial index answers this).
        heads = (select(func.min(OutboxItem.id))
                 .where(OutboxItem.status == "pending", OutboxItem.channel.in_(channels))
                 .group_by(OutboxItem.channel, OutboxItem.address))
        due = (select(OutboxItem.id).where(
            OutboxItem.id.in_(heads), OutboxItem.next_attempt_at <= now,
            (OutboxItem.lease_until.is_(None)) | (OutboxItem.lease_until < now))
            .order_by(OutboxItem.id).limit(self.batch))
        async with self.runtime.sessions.begin() as session:
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            ids = (await session.scalars(due)).all()
            if not ids:
                return []
            rows = (await session.scalars(
                update(OutboxItem).where(OutboxItem.id.in_(ids))
                .values(lease_owner=self.worker_id, lease_until=now + self.lease)
                .returning(OutboxItem).execution_options(populate_existing=True))).all()
        return sorted(rows, key=lambda r: r.id)

    async def run_once(self, now: datetime | None = None) -> DeliveryStats:
        """Claim and deliver everything due now; chats in parallel, each chat in order."""
        now = now or self.runtime.clock.now()
        stats = DeliveryStats()
        rows = await self.claim(now)
        await asyncio.gather(*(self._deliver(row, stats) for row in rows))
        return stats

    async def _deliver(self, row: OutboxItem, stats: DeliveryStats) -> None:
        out = Outbound.from_body(row.channel, row.address, row.payload, row.dedupe_key)
        limiter = self.limiters.get(row.channel)
        if limiter is not None:
            task = asyncio.current_task()
            assert task is not None
            self._queued.add(task)
            try:
                await limiter.acquire(row.address)
            finally:
                self._queued.discard(task)
            if not self._lease_left(row):
                # Held back past its lease (a provider's long retry_after pauses the whole
                # channel): the row may be claimed again already, by this process or
                # another, and sending it here too would send it twice. Whoever claims it
                # next sends it.
                log.info("outbox=%s lease ran out while waiting to send: left to a new claim",
                         row.id)
                return
        if self.handing_back.is_set():
            return  # not sent: its lease is handed back (hand_back)
        if not self.may_send(row.channel):
            # The role went to another process while this row waited: that one sends it.
            await self._release(row)
            return
        try:
            provider_id = await self.senders[row.channel].send(out)
        except RetryLater as exc:
            await self._retry(row, exc, stats, limiter, "rate_limited"
                              if exc.retry_after is not None else "temporary")
            return
        except PermanentFailure as exc:
            await self._fail(row, str(exc), stats, unreachable=True, kind="permanent")
            return
        except Exception as exc:  # noqa: BLE001 - an unknown error is treated as temporary
            log.exception("outbox=%s channel=%s send raised", row.id, row.channel)
            await self._retry(row, RetryLater(repr(exc)), stats, limiter, "error")
            return
        now = self.runtime.clock.now()
        async with self.runtime.sessions.begin() as session:
            await session.execute(
                update(OutboxItem).where(OutboxItem.id == row.id,
                                         OutboxItem.lease_owner == self.worker_id)
                .values(status="sent", sent_at=now, provider_message_id=provider_id,
                        attempts=row.attempts + 1, lease_owner=None, lease_until=None))
            if provider_id:
                # The offer keeps the message id so "Taken by another mechanic" can edit it.
                await session.execute(update(Offer).where(Offer.outbox_id == row.id)
                                      .values(provider_message_id=provider_id))
        self.runtime.metrics.messages_out.labels(row.channel).inc()
        stats.sent += 1

    async def _give_back(self, *where: ColumnElement[bool]) -> int:
        """Release this process's leases on the pending rows `where` selects (all of them
        without it), so any process may claim them at once; returns how many."""
        async with self.runtime.sessions.begin() as session:
            return len((await session.execute(
                update(OutboxItem).where(OutboxItem.lease_owner == self.worker_id,
                                         OutboxItem.status == "pending", *where)
                .values(lease_owner=None, lease_until=None)
                .returning(OutboxItem.id))).all())

    async def _release(self, row: OutboxItem) -> None:
        try:
            await self._give_back(OutboxItem.id == row.id)
        except Exception:  # noqa: BLE001 - the lease runs out by itself
            log.warning("outbox=%s lease not handed back (runs out by itself)", row.id)
            return
        log.info("outbox=%s channel=%s no longer sent here: lease handed back", row.id,
                 row.channel)

    def _lease_left(self, row: OutboxItem) -> bool:
        """Whether enough of the row's lease is left to start sending it: a quarter of the
        lease, for the provider's answer to come back before anyone may claim it again."""
        if row.lease_until is None:
            return True
        return self.runtime.clock.now() < row.lease_until - self.lease / 4

    async def _retry(self, row: OutboxItem, exc: RetryLater, stats: DeliveryStats,
                     limiter: ChannelLimiter | None, kind: str) -> None:
        attempts = row.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            await self._fail(row, f"gave up after {attempts} attempts: {exc}", stats,
                             unreachable=False, kind="gave_up")
            return
        delay = exc.retry_after if exc.retry_after is not None else backoff(attempts)
        if exc.retry_after is not None and limiter is not None:
            # The provider said "slow down": hold back this chat and the whole channel.
            limiter.pause(row.address, exc.retry_after)
        now = self.runtime.clock.now()
        async with self.runtime.sessions.begin() as session:
            await session.execute(
                update(OutboxItem).where(OutboxItem.id == row.id)
                .values(attempts=attempts, next_attempt_at=now + timedelta(seconds=delay),
                        last_error=str(exc)[:1000], lease_owner=None, lease_until=None))
        self.runtime.metrics.delivery_failures.labels(row.channel, kind).inc()
        log.info("outbox=%s channel=%s retry in %.1fs (%s)", row.id, row.channel, delay, exc)
        stats.retried += 1

    async def _fail(self, row: OutboxItem, reason: str, stats: DeliveryStats, *,
                    unreachable: bool, kind: str) -> None:
        async with self.runtime.sessions.begin() as session:
            await session.execute(
                update(OutboxItem).where(OutboxItem.id == row.id)
                .values(status="failed", attempts=row.attempts + 1, last_error=reason[:1000],
                        lease_owner=None, lease_until=None))
            if unreachable:
                await session.execute(
                    update(Identity).where(Identity.channel == row.channel,
                                           Identity.address == row.address)
                    .values(reachable=False, unreachable_reason=reason[:255]))
        self.runtime.metrics.delivery_failures.labels(row.channel, kind).inc()
        log.warning("outbox=%s channel=%s failed: %s", row.id, row.channel, reason)
        stats.failed += 1

    async def hand_back(self, wait_seconds: float) -> int:
        """The drain: claim nothing more, let the sends already under way finish (for up to
        `wait_seconds`), and release the leases of the rows claimed and not sent, so another
        process sends them at once rather than after the lease runs out. Returns how many."""
        self.handing_back.set()
        for waiting in list(self._queued):
            waiting.cancel()
        self.runtime.hub.outbox_wakeup.set()
        try:
            async with asyncio.timeout(wait_seconds):
                await self.stopped.wait()
        except TimeoutError:
            log.warning("outbox: sends still under way after %.1fs; handing them back",
                        wait_seconds)
        released = await self._give_back()
        log.info("outbox: stopped claiming; %s claimed rows handed back", released)
        return released

    async def next_due_in(self, now: datetime) -> float | None:
        channels = self.sending()
        if not channels:
            return None
        async with self.runtime.readers() as session:
            due = await session.scalar(
                select(OutboxItem.next_attempt_at).where(
                    OutboxItem.status == "pending", OutboxItem.channel.in_(channels))
                .order_by(OutboxItem.next_attempt_at).limit(1))
        return None if due is None else max(0.0, (due - now).total_seconds())

    async def run_forever(self, idle_poll: float = 1.0) -> None:
        """Deliver until cancelled; wakes at once when the hub says rows were committed.

        Rows are claimed ahead: when no more than half a batch is still under way, the next
        batch is claimed while those are sent, so a rate-limited channel never waits on a
        claim query between batches. (A chat's next row is claimable only once the row
        before it is sent, so claiming ahead keeps each chat's order.)
        """
        wakeup = self.runtime.hub.outbox_wakeup
        task = asyncio.current_task()
        under_way: set[asyncio.Task[None]] = set()
        stats = DeliveryStats()
        self.stopped.clear()
        try:
            while not self.handing_back.is_set():
                wakeup.clear()
                wait: float | None = None
                try:
                    if len(under_way) <= self.batch // 2:
                        for row in await self.claim(self.runtime.clock.now()):
                            delivery = asyncio.create_task(self._deliver(row, stats))
                            under_way.add(delivery)
                            delivery.add_done_callback(under_way.discard)
                    if not under_way:
                        wait = await self.next_due_in(self.runtime.clock.now())
                except Exception:
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from None  # stopping: a query was cut off
                    log.exception("outbox dispatcher round failed")
                    wait = idle_poll
                # Polling also picks up rows committed by other processes.
                timeout = idle_poll if wait is None else min(wait, idle_poll)
                woken = asyncio.ensure_future(wakeup.wait())
                try:
                    await asyncio.wait({woken, *under_way}, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
            # Handing back: the sends under way finish (hand_back bounds the wait).
            await asyncio.gather(*under_way, return_exceptions=True)
        finally:
            for delivery in under_way:
                delivery.cancel()
            await asyncio.gather(*under_way, return_exceptions=True)
            self.stopped.set()
