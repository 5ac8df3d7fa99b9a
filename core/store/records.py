"""The rows the conversation engine writes for every message, as plain values.

A loaded record is changed only through update(), which records the fields it set: the unit
of work writes those columns and nothing else. A new record is written whole, with whatever
it holds when written. Records are frozen so that a change cannot slip past update().
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Table

from core.models import (
    Checkout,
    Conversation,
    Customer,
    Identity,
    Intake,
    Message,
    OutboxItem,
    TermsAcceptance,
    table,
)

R = TypeVar("R", bound="Record")


@dataclass(frozen=True, slots=True, eq=False)
class Record:
    """A row as plain values, with the names of the columns changed since it was written."""

    TABLE: ClassVar[Table]
    id: int
    changed: set[str] = field(default_factory=set, init=False, repr=False)

    def update(self, **changes: Any) -> None:
        """Set these columns and record them as changed."""
        for name, value in changes.items():
            object.__setattr__(self, name, value)
        self.changed.update(changes)

    def values(self, names: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)

    @classmethod
    def of(cls: type[R], row: object) -> R:
        """A record with the values of an ORM object (or any row) of the same table."""
        return cls(*(getattr(row, name) for name in cls.columns()))

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The table's columns this record holds, in its field order."""
        return tuple(f.name for f in fields(cls) if f.name != "changed")


@dataclass(frozen=True, slots=True, eq=False)
class ConversationState(Record):
    """The bot's state with one person (see core.models.Conversation)."""

    TABLE: ClassVar[Table] = table(Conversation)

    identity_id: int
    flow: str
    step: str
    data: dict[str, Any]
    intake_id: int | None
    # Set when anything changed, for the write; not read with the row.
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True, eq=False)
class IntakeRecord(Record):
    """A customer's intake (see core.models.Intake)."""

    TABLE: ClassVar[Table] = table(Intake)

    customer_id: int
    channel: str
    status: str
    plan: str | None
    vin: str | None
    vehicle_year: int | None
    vehicle_make: str | None
    vehicle_model: str | None
    odometer: int | None
    odometer_unit: str | None
    problem: str | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None


@dataclass(frozen=True, slots=True, eq=False)
class CheckoutRecord(Record):
    """A payment link being made (see core.models.Checkout); once written, billing changes
    it through the ORM."""

    TABLE: ClassVar[Table] = table(Checkout)

    ref: str
    intake_id: int
    customer_id: int
    plan: str
    amount_cents: int
    currency: str
    provider: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    url: str | None = None
    provider_session_id: str | None = None
    payment_intent_id: str | None = None
    charge_id: str | None = None
    paid_at: datetime | None = None


@dataclass(frozen=True, slots=True, eq=False)
class CustomerName(Record):
    """The name a customer gave (see core.models.Customer): the column the intake changes."""

    TABLE: ClassVar[Table] = table(Customer)

    display_name: str | None


@dataclass(frozen=True, slots=True, eq=False)
class IdentityName(Record):
    """The name on one of a customer's chats (see core.models.Identity), which the other side
    of a session sees on their messages."""

    TABLE: ClassVar[Table] = table(Identity)

    display_name: str | None


@dataclass(frozen=True, slots=True, eq=False)
class TermsAcceptanceRecord(Record):
    """A customer accepting one version of the terms (see core.models.TermsAcceptance)."""

    TABLE: ClassVar[Table] = table(TermsAcceptance)

    customer_id: int
    identity_id: int | None
    version: str
    channel: str
    client_address: str | None
    accepted_at: datetime


@dataclass(frozen=True, slots=True)
class IdentityRow:
    """Who wrote: one address on one channel (see core.models.Identity), read-only here."""

    id: int
    channel: str
    address: str
    customer_id: int | None
    mechanic_id: int | None
    display_name: str | None


IDENTITY_COLUMNS = tuple(f.name for f in fields(IdentityRow))


@dataclass(slots=True, eq=False)
class MessageRow:
    """One transcript row (see core.models.Message); its id is set when it is written."""

    TABLE: ClassVar[Table] = table(Message)

    identity_id: int
    channel: str
    direction: str
    text: str
    created_at: datetime
    conversation_id: int | None = None
    consultation_id: int | None = None
    action: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    provider_id: str | None = None
    id: int | None = None


    def values(self) -> tuple[Any, ...]:
        """The written columns' values (MESSAGE_COLUMNS)."""
        return (self.identity_id, self.conversation_id, self.consultation_id, self.direction,
                self.channel, self.text, self.action, self.body, self.provider_id,
                self.created_at)


MESSAGE_COLUMNS = ("identity_id", "conversation_id", "consultation_id", "direction", "channel",
                   "text", "action", "body", "provider_id", "created_at")


@dataclass(slots=True, eq=False)
class OutboxRow:
    """A message for a provider to deliver (see core.models.OutboxItem), written with the
    id of its transcript row."""

    TABLE: ClassVar[Table] = table(OutboxItem)

    dedupe_key: str
    channel: str
    address: str
    identity_id: int | None
    payload: dict[str, Any]
    status: str
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None = None
    attempts: int = 0
    message_id: int | None = None


    def values(self) -> tuple[Any, ...]:
        """The written columns' values (OUTBOX_COLUMNS)."""
        return (self.dedupe_key, self.channel, self.address, self.identity_id, self.payload,
                self.status, self.next_attempt_at, self.created_at, self.sent_at, self.attempts,
                self.message_id)


OUTBOX_COLUMNS = ("dedupe_key", "channel", "address", "identity_id", "payload", "status",
                  "next_attempt_at", "created_at", "sent_at", "attempts", "message_id")
