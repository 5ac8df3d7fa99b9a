"""What every service needs at hand, built once by the composition root (bot.app)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from core.clock import Clock, SystemClock
from core.config import Config
from core.db import Sessionmaker, create_readonly_sessionmaker, create_sessionmaker
from core.hub import Hub
from core.messages import Button
from core.metrics import Metrics
from core.payments import PaymentPort, PayoutPort, RefundPort
from core.store.uow import IdPool, UnitOfWork
from core.video import RoomPort


@dataclass
class Runtime:
    config: Config
    engine: AsyncEngine
    sessions: Sessionmaker
    # For reads only (no writes are flushed): on SQLite they never wait for writers.
    readers: Sessionmaker
    payments: PaymentPort
    # Renders a named text (bot.texts.text): core services write messages without owning them.
    texts: Callable[..., str]
    clock: Clock = field(default_factory=SystemClock)
    # Refunds go through billing; None where no payment provider can refund (logged).
    refund: RefundPort | None = None
    # Payouts go through billing; None where no payment provider can pay (logged).
    payout: PayoutPort | None = None
    # Video rooms go through rooms/ (LiveKit); None when LiveKit is not configured: the video
    # tiers then run as chat sessions.
    rooms: RoomPort | None = None
    metrics: Metrics = field(default_factory=Metrics)
    hub: Hub = field(default_factory=Hub)
    ids: IdPool = field(default_factory=IdPool)
    # The first words to a new person and the choices offered (bot.flows), for a channel that
    # greets a visitor before they have a record (the widget).
    greeting: Callable[[], tuple[str, tuple[Button, ...]]] | None = None

    @classmethod
    def build(cls, config: Config, engine: AsyncEngine, payments: PaymentPort,
              texts: Callable[..., str], clock: Clock | None = None,
              refund: RefundPort | None = None, payout: PayoutPort | None = None,
              rooms: RoomPort | None = None) -> Runtime:
        return cls(config=config, engine=engine, sessions=create_sessionmaker(engine),
                   readers=create_readonly_sessionmaker(engine),
                   payments=payments, texts=texts, clock=clock or SystemClock(), refund=refund,
                   payout=payout, rooms=rooms)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        async with self.sessions() as session:
            uow = UnitOfWork(session, hub=self.hub, ids=self.ids)
            try:
                yield uow
                await uow.commit()
            except BaseException:
                await session.rollback()
                raise
