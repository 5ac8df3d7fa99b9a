"""Prometheus metrics, one registry per app so tests and processes never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
