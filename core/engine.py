"""The conversation engine: one inbound message in, state + transcript + outbox out, atomically."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.db import is_transient
from core.messages import Button, Inbound, Link, Outbound
from core.models import Conversation, Customer, Identity, InboundEvent, Intake, Message
from core.outbox import enqueue
from core.runtime import Runtime
from core.sql import insert_ignore

log = logging.getLogger("autodoctor.engine")

# Far above any channel's own limit; beyond it text is cut so one message cannot bloat the
# database. Channels reject long text earlier with a clear error (the widget) or split it.
MAX_INBOUND_CHARS = 20_000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(raw: str) -> str:
    """Text as stored: control characters (NUL included) removed, length bounded."""
    return _CONTROL.sub("", raw)[:MAX_INBOUND_CHARS]


@dataclass
class Context:
    """What a flow sees while handling one inbound message, inside its transaction."""

    session: AsyncSession
    runtime: Runtime
    inbound: Inbound
    identity: Identity
    conversation: Conversation
    now: datetime
    replies: list[Outbound] = field(default_factory=list)
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
        if await self.send(self.identity, out, conversation_id=self.conversation.id):
            self.replies.append(out)

    async def send(self, identity: Identity, outbound: Outbound, **kwargs: Any) -> bool:
        """Queue a message to anyone (an offer, a relayed line); False if already queued."""
        message = await enqueue(self.session, identity, outbound, self.now, **kwargs)
        return message is not None


Router = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Handled:
    """What came of one inbound message."""

    replies: list[Outbound]
    toast: str | None
    duplicate: bool = False


class Engine:
    """Receives messages from every channel and runs them through the flows, in order."""

    def __init__(self, runtime: Runtime, router: Router) -> None:
        self.runtime = runtime
        self.router = router
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def _person_lock(self, key: tuple[str, str]) -> AsyncIterator[None]:
        # One person's messages are handled strictly one after another in this process;
        # across processes the conversation row lock (PostgreSQL) or the write lock (SQLite)
        # does the same.
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def receive(self, inbound: Inbound) -> list[Outbound]:
        """Handle one message; returns the replies to its sender (already stored and queued)."""
        return (await self.handle(inbound)).replies

    async def handle(self, inbound: Inbound) -> Handled:
        """Like receive(), with the short answer for a button tap (a Telegram toast)."""
        inbound = replace(inbound, text=clean_text(inbound.text),
                          action=clean_text(inbound.action)[:255] if inbound.action else None)
        started = time.perf_counter()
        async with self._person_lock((inbound.channel, inbound.address)):
            for attempt in range(4):
                try:
                    ctx = await self._receive_once(inbound)
                    break
                except (IntegrityError, DBAPIError) as exc:
                    # A race with another process (first contact, lock timeout): try again.
                    if attempt == 3 or not _retryable(exc):
                        raise
                    log.info("retrying channel=%s after %s", inbound.channel,
                             type(exc.orig).__name__ if exc.orig else exc)
                    await asyncio.sleep(0.05 * (attempt + 1))
        if ctx is None:
            return Handled([], None, duplicate=True)
        for work in ctx.after_commit:
            try:
                await work()
            except Exception:
                log.exception("after-commit work failed channel=%s", inbound.channel)
        metrics = self.runtime.metrics
        metrics.messages_in.labels(inbound.channel).inc()
        metrics.reply_seconds.labels(inbound.channel).observe(time.perf_counter() - started)
        return Handled(ctx.replies, ctx.toast)

    async def _receive_once(self, inbound: Inbound) -> Context | None:
        """One attempt in one transaction; None for a duplicate delivery."""
        now = inbound.received_at or self.runtime.clock.now()
        async with self.runtime.sessions.begin() as session:
            if inbound.provider_id is not None:
                fresh = await insert_ignore(session, InboundEvent, {
                    "provider": inbound.channel, "event_id": inbound.provider_id,
                    "received_at": now}, ["provider", "event_id"])
                if fresh is None:
                    log.info("duplicate channel=%s provider_id=%s ignored", inbound.channel,
                             inbound.provider_id)
                    return None
            found = await _known_person(session, inbound)
            if found is None:
                identity = await resolve_identity(session, inbound, now)
                conversation = await load_conversation(session, identity, now)
            else:
                identity, conversation = found
            session.add(Message(
                identity_id=identity.id, conversation_id=conversation.id, direction="in",
                channel=inbound.channel, text=inbound.text, action=inbound.action,
                body={"attachments": list(inbound.attachments)} if inbound.attachments else {},
                provider_id=inbound.provider_id, created_at=now))
            ctx = Context(session=session, runtime=self.runtime, inbound=inbound,
                          identity=identity, conversation=conversation, now=now)
            await self.router(ctx)
            conversation.version += 1
            conversation.updated_at = now
        return ctx


async def _known_person(session: AsyncSession,
                        inbound: Inbound) -> tuple[Identity, Conversation] | None:
    """The usual case in one query: identity, its conversation (locked) and current intake
    (loaded into the session, so the flow's lookup costs nothing)."""
    row = (await session.execute(
        select(Identity, Conversation, Intake)
        .join(Conversation, Conversation.identity_id == Identity.id)
        .outerjoin(Intake, Intake.id == Conversation.intake_id)
        .where(Identity.channel == inbound.channel, Identity.address == inbound.address)
        .with_for_update(of=Conversation))).first()
    return None if row is None else (row[0], row[1])


def _retryable(exc: DBAPIError) -> bool:
    # IntegrityError too: two processes creating the same person's first rows at once.
    return isinstance(exc, IntegrityError) or is_transient(exc)


async def resolve_identity(session: AsyncSession, inbound: Inbound, now: datetime) -> Identity:
    """The identity for (channel, address); a first contact becomes a new customer."""
    query = select(Identity).where(Identity.channel == inbound.channel,
                                   Identity.address == inbound.address)
    identity = await session.scalar(query)
    if identity is not None:
        return identity
    customer = Customer(display_name=inbound.display_name, created_at=now)
    session.add(customer)
    await session.flush()
    await insert_ignore(session, Identity, {
        "channel": inbound.channel, "address": inbound.address, "customer_id": customer.id,
        "display_name": inbound.display_name, "created_at": now}, ["channel", "address"])
    identity = await session.scalar(query)
    if identity is None or identity.customer_id != customer.id:
        # Another process created it first; the retry will find theirs.
        raise IntegrityError("identity created concurrently", None, Exception("race"))
    log.info("new customer=%s channel=%s", customer.id, inbound.channel)
    return identity


async def load_conversation(session: AsyncSession, identity: Identity,
                            now: datetime) -> Conversation:
    """The identity's conversation, locked for this transaction (created on first contact)."""
    query = select(Conversation).where(Conversation.identity_id == identity.id).with_for_update()
    conversation = await session.scalar(query)
    if conversation is None:
        flow = "mechanic" if identity.mechanic_id is not None else "customer"
        await insert_ignore(session, Conversation, {
            "identity_id": identity.id, "flow": flow, "step": "start", "data": {},
            "version": 0, "created_at": now, "updated_at": now}, ["identity_id"])
        conversation = await session.scalar(query)
        assert conversation is not None
    return conversation
