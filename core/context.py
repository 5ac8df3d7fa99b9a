"""What a flow sees while it handles one inbound message, and what came of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.dispatch import Taps
from core.messages import Button, Inbound, Link, Outbound
from core.outbox import Addressee, enqueue
from core.runtime import Runtime
from core.store.people import Person
from core.store.records import ConversationState, IdentityRow, IntakeRecord, MessageRow
from core.store.uow import UnitOfWork


@dataclass
class Context:
    """One inbound message inside its batch's transaction (`uow`)."""

    uow: UnitOfWork
    runtime: Runtime
    inbound: Inbound
    person: Person
    now: datetime
    # What accepts in this batch have read of each request tapped (several mechanics tap one
    # request at once): shared by the batch's messages.
    taps: Taps
    # The message's own transcript row (not yet written: a flow may add to it).
    inbound_row: MessageRow | None = None
    replies: list[Outbound] = field(default_factory=list)
    # The replies' transcript rows, in order (an open socket can send them as they are).
    reply_rows: list[MessageRow] = field(default_factory=list)
    # A short answer to a button tap ("Accepted", "Already taken"), shown as a toast.
    toast: str | None = None
    # Provider calls to make once the transaction has committed (close a payment page,
    # refund): made by the engine after the message, never inside the transaction.
    after_commit: list[Callable[[], Awaitable[object]]] = field(default_factory=list)

    @property
    def session(self) -> AsyncSession:
        return self.uow.session

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def text(self) -> str:
        return self.inbound.text

    @property
    def identity(self) -> IdentityRow:
        return self.person.identity

    @property
    def conversation(self) -> ConversationState:
        return self.person.conversation

    @property
    def intake(self) -> IntakeRecord | None:
        """The conversation's current intake."""
        intake = self.person.intake
        if intake is None or intake.id != self.conversation.intake_id:
            return None
        return intake

    async def say(self, text: str, buttons: Sequence[Button] = (), link: Link | None = None,
                  image: str | None = None) -> None:
        """Reply to the person who wrote, on the channel they wrote on."""
        out = Outbound(channel=self.identity.channel, address=self.identity.address, text=text,
                       buttons=tuple(buttons), link=link, image=image)
        message = await self.send(self.identity, out, conversation_id=self.conversation.id)
        if message is not None:
            self.replies.append(out)
            self.reply_rows.append(message)

    async def send(self, identity: Addressee, outbound: Outbound,
                   **kwargs: Any) -> MessageRow | None:
        """Queue a message to anyone (an offer, a relayed line); its transcript row, or None
        if already queued."""
        return await enqueue(self.uow, identity, outbound, self.now, **kwargs)


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
    # The sender was met with this message: nothing was written to them before it.
    first_contact: bool = False
