"""Prometheus metrics, one registry per app so tests and processes never share counters.

Counters and histograms are counted where things happen; the gauges of what is in the
database (the outbox's depth and age per channel, live consultations) are read when
/metrics is scraped (`read_gauges`), so every process reports the whole deployment's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Consultation, OutboxItem

# Payment to accept: seconds to two hours (a request expires after two hours by default).
ACCEPT_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "autodoctor_http_requests", "HTTP requests served",
            ["method", "route", "status"], registry=self.registry)
        self.messages_in = Counter(
            "autodoctor_messages_in", "Messages received from people", ["channel"],
            registry=self.registry)
        self.messages_out = Counter(
            "autodoctor_messages_out", "Messages delivered to people", ["channel"],
            registry=self.registry)
        self.reply_seconds = Histogram(
            "autodoctor_reply_seconds", "Time from a message in to its replies committed",
            ["channel"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        # Group commit (core.engine): how many messages each transaction handled.
        self.batch_messages = Histogram(
            "autodoctor_engine_batch_messages", "Messages handled per engine transaction",
            registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.invite_failures = Counter(
            "autodoctor_invite_failures", "Mechanic invite codes refused (typos or guessing)",
            registry=self.registry)
        self.db_up = Gauge("autodoctor_db_up", "1 when the database answered the last check",
                           registry=self.registry)
        # core.delivery: reason is rate_limited (a 429 with retry_after), temporary (5xx,
        # timeout), error (an unexpected exception), permanent (address unreachable) or
        # gave_up (too many attempts). The first three are retried.
        self.delivery_failures = Counter(
            "autodoctor_delivery_failures", "Failed attempts to deliver a message",
            ["channel", "reason"], registry=self.registry)
        # core.sweeps: rows each kind of sweep changed (unattended, expired, no_show, ...).
        self.sweep_rows = Counter(
            "autodoctor_sweep_rows", "Rows changed by the timeout sweeps", ["kind"],
            registry=self.registry)
        self.accept_seconds = Histogram(
            "autodoctor_accept_seconds", "Time from a request's payment to its acceptance",
            registry=self.registry, buckets=ACCEPT_BUCKETS)
        self.draining = Gauge("autodoctor_draining", "1 while this process drains (SIGTERM)",
                              registry=self.registry)
        # core.leadership: 1 for each deployment-wide role ("send:telegram") this process holds.
        self.roles_held = Gauge(
            "autodoctor_roles_held", "Deployment-wide roles this process holds (1: held)",
            ["role"], registry=self.registry)
        # Read at scrape time (read_gauges).
        self.outbox_depth = Gauge(
            "autodoctor_outbox_depth", "Messages waiting in the outbox", ["channel"],
            registry=self.registry)
        self.outbox_oldest_due = Gauge(
            "autodoctor_outbox_oldest_due_seconds",
            "Age of the oldest outbox message due to be sent now (0: none)", ["channel"],
            registry=self.registry)
        self.consultations_live = Gauge(
            "autodoctor_consultations_live", "Consultations under way now",
            registry=self.registry)

    async def read_gauges(self, session: AsyncSession, now: datetime,
                          channels: Iterable[str] = ()) -> None:
        """The database's gauges, as of now: the outbox per channel in one query (every
        channel in `channels` is reported, 0 when it has nothing waiting), and the live
        consultations in another."""
        due = case((OutboxItem.next_attempt_at <= now, OutboxItem.created_at))
        rows = (await session.execute(
            select(OutboxItem.channel, func.count(), func.min(due))
            .where(OutboxItem.status == "pending").group_by(OutboxItem.channel))).all()
        live = await session.scalar(select(func.count()).select_from(Consultation)
                                    .where(Consultation.status == "live"))
        # No await from here on: a scrape never sees another's half-set gauges.
        self.outbox_depth.clear()
        self.outbox_oldest_due.clear()
        for channel in channels:
            self.outbox_depth.labels(channel).set(0)
            self.outbox_oldest_due.labels(channel).set(0)
        for channel, depth, oldest in rows:
            self.outbox_depth.labels(channel).set(depth)
            self.outbox_oldest_due.labels(channel).set(
                0 if oldest is None else max(0.0, (now - oldest).total_seconds()))
        self.consultations_live.set(live or 0)
