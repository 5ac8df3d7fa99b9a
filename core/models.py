"""The whole domain's tables, SQLAlchemy 2 style; the database enforces the invariants."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL (timestamptz) and SQLite (naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC (core.clock)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # SQLite: the text straight from the value and back in one step each (what the two above
    # and SQLite's DATETIME processors make of it, in about half the time: every row the
    # engine writes or reads has a timestamp or two). The format is SQLite DATETIME's own,
    # microseconds always written, so stored values compare as text in time order.

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use timezone-aware UTC (core.clock)")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return process

    def result_processor(self, dialect: Dialect, coltype: object
                         ) -> Callable[[Any], Any] | None:
        if dialect.driver == "asyncpg":
            # asyncpg reads timestamptz in its binary form, microseconds since 2000 UTC, into
            # an aware datetime in UTC already, whatever the session's time zone: nothing to
            # do per value (a Python call for each of some six timestamps a message reads).
            return None
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        return process


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=_now)


# ---------------------------------------------------------------- people


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()


class Mechanic(Base):
    __tablename__ = "mechanics"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(32))
    is_senior: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # "available" / "away" said in chat; available by default right after linking.
    is_available: Mapped[bool] = mapped_column(Boolean, default=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    stripe_account_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    charges_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    payouts_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _created()


class MechanicInvite(Base):
    __tablename__ = "mechanic_invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    mechanic_id: Mapped[int] = mapped_column(ForeignKey("mechanics.id", ondelete="CASCADE"),
                                             index=True)
    created_at: Mapped[datetime] = _created()
    used_at: Mapped[datetime | None]
    used_by_identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL"))


class Availability(Base):
    """A weekly window in the mechanic's own timezone, minutes from midnight."""

    __tablename__ = "availability"
    __table_args__ = (
        CheckConstraint("weekday BETWEEN 0 AND 6", name="weekday"),
        CheckConstraint("start_minute >= 0 AND end_minute <= 1440 AND start_minute < end_minute",
                        name="window"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mechanic_id: Mapped[int] = mapped_column(ForeignKey("mechanics.id", ondelete="CASCADE"),
                                             index=True)
    weekday: Mapped[int] = mapped_column(Integer)
    start_minute: Mapped[int] = mapped_column(Integer)
    end_minute: Mapped[int] = mapped_column(Integer)


class Admin(Base):
    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # Where unattended-request alerts go, e.g. ("telegram", "12345").
    notify_channel: Mapped[str | None] = mapped_column(String(16))
    notify_address: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _created()


class Identity(Base):
    """One address on one channel (a Telegram chat, a phone number, a widget visitor)."""

    __tablename__ = "identities"
    __table_args__ = (
        UniqueConstraint("channel", "address"),
        CheckConstraint("customer_id IS NOT NULL OR mechanic_id IS NOT NULL", name="owner"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    mechanic_id: Mapped[int | None] = mapped_column(
        ForeignKey("mechanics.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)
    unreachable_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()


# ---------------------------------------------------------------- conversations and intake


class Conversation(Base):
    """The bot's state with one identity, kept in the database so restarts lose nothing."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"),
                                             unique=True)
    flow: Mapped[str] = mapped_column(String(32), default="customer")
    step: Mapped[str] = mapped_column(String(32), default="start")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    intake_id: Mapped[int | None] = mapped_column(ForeignKey("intakes.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class Intake(Base):
    __tablename__ = "intakes"
    __table_args__ = (
        CheckConstraint(
            "status IN ('draft', 'awaiting_payment', 'paid', 'cancelled', 'expired')",
            name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"),
                                             index=True)
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24), default="draft")
    plan: Mapped[str | None] = mapped_column(String(32))
    vin: Mapped[str | None] = mapped_column(String(17))
    vehicle_year: Mapped[int | None] = mapped_column(Integer)
    vehicle_make: Mapped[str | None] = mapped_column(String(100))
    vehicle_model: Mapped[str | None] = mapped_column(String(100))
    odometer: Mapped[int | None] = mapped_column(Integer)
    odometer_unit: Mapped[str | None] = mapped_column(String(2))
    problem: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()
    submitted_at: Mapped[datetime | None]


class File(Base):
    """An uploaded file, stored content-addressed (by SHA-256) under the data directory."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    original_name: Mapped[str | None] = mapped_column(String(255))
    uploaded_by_identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL"))
    intake_id: Mapped[int | None] = mapped_column(ForeignKey("intakes.id", ondelete="SET NULL"),
                                                  index=True)
    created_at: Mapped[datetime] = _created()


# ---------------------------------------------------------------- money


class Checkout(Base):
    __tablename__ = "checkouts"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint("status IN ('open', 'paid', 'expired', 'failed', 'refunded')",
                        name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)
    intake_id: Mapped[int] = mapped_column(ForeignKey("intakes.id", ondelete="CASCADE"),
                                           index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    plan: Mapped[str] = mapped_column(String(32))
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    provider: Mapped[str] = mapped_column(String(16))
    provider_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    url: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    # Indexed: Stripe's refund events name the payment intent and the charge, not our ref.
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    charge_id: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]


class SessionRequest(Base):
    """A paid request waiting for, or matched with, a mechanic."""

    __tablename__ = "session_requests"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'unattended', 'accepted', 'expired', 'cancelled', "
            "'completed')", name="status"),
        CheckConstraint("status <> 'accepted' OR mechanic_id IS NOT NULL",
                        name="accepted_has_mechanic"),
        # A mechanic holds at most one accepted request: two taps on two servers cannot win.
        Index("uq_session_requests_one_job_per_mechanic", "mechanic_id", unique=True,
              sqlite_where=text("status = 'accepted'"),
              postgresql_where=text("status = 'accepted'")),
        Index("ix_session_requests_status_paid_at", "status", "paid_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(16), unique=True)
    intake_id: Mapped[int] = mapped_column(ForeignKey("intakes.id", ondelete="CASCADE"),
                                           unique=True)
    checkout_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkouts.id", ondelete="SET NULL"), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"),
                                             index=True)
    plan: Mapped[str] = mapped_column(String(32))
    price_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    mechanic_id: Mapped[int | None] = mapped_column(
        ForeignKey("mechanics.id", ondelete="SET NULL"), index=True)
    paid_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    unattended_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    close_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created()


class Offer(Base):
    """One mechanic a request was offered to, with the provider's message id once sent."""

    __tablename__ = "offers"
    __table_args__ = (
        UniqueConstraint("request_id", "mechanic_id"),
        CheckConstraint("status IN ('offered', 'accepted', 'taken', 'withdrawn', 'declined')",
                        name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("session_requests.id", ondelete="CASCADE"), index=True)
    mechanic_id: Mapped[int] = mapped_column(ForeignKey("mechanics.id", ondelete="CASCADE"),
                                             index=True)
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="offered")
    # Indexed: a sent offer's message id is recorded by its outbox row (and the row's
    # deletion sets this to NULL), which without it read every offer ever made.
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"),
                                                  index=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()
    answered_at: Mapped[datetime | None]


class Consultation(Base):
    """A session between a customer and a mechanic (named so to stay clear of DB sessions)."""

    __tablename__ = "consultations"
    __table_args__ = (
        CheckConstraint("status IN ('waiting', 'live', 'completed', 'cancelled')",
                        name="status"),
        CheckConstraint("rating IS NULL OR rating BETWEEN 1 AND 5", name="rating"),
        # The same one-job rule, for sessions under way.
        Index("uq_consultations_one_active_per_mechanic", "mechanic_id", unique=True,
              sqlite_where=text("status IN ('waiting', 'live')"),
              postgresql_where=text("status IN ('waiting', 'live')")),
        # The sweep for sessions left waiting reads them by status, every few seconds.
        Index("ix_consultations_status", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("session_requests.id", ondelete="CASCADE"), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"),
                                             index=True)
    mechanic_id: Mapped[int] = mapped_column(ForeignKey("mechanics.id", ondelete="CASCADE"))
    plan: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    room_name: Mapped[str | None] = mapped_column(String(100), unique=True)
    started_at: Mapped[datetime | None]
    ends_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(64))
    warned_minutes: Mapped[int | None] = mapped_column(Integer)
    mechanic_notes: Mapped[str | None] = mapped_column(Text)
    rating: Mapped[int | None] = mapped_column(Integer)
    review: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    checkout_id: Mapped[int] = mapped_column(ForeignKey("checkouts.id", ondelete="CASCADE"),
                                             unique=True)
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("session_requests.id", ondelete="SET NULL"))
    amount_cents: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    provider_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = _created()
    completed_at: Mapped[datetime | None]


class Payout(Base):
    """The mechanic's share of one consultation, paid by a Stripe Connect transfer."""

    __tablename__ = "payouts"
    __table_args__ = (
        CheckConstraint("amount_cents >= 0 AND fee_cents >= 0", name="amounts"),
        CheckConstraint("status IN ('pending', 'paid', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    consultation_id: Mapped[int] = mapped_column(
        ForeignKey("consultations.id", ondelete="CASCADE"), unique=True)
    mechanic_id: Mapped[int] = mapped_column(ForeignKey("mechanics.id", ondelete="CASCADE"),
                                             index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    fee_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    transfer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    failure: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    paid_at: Mapped[datetime | None]


# ---------------------------------------------------------------- messaging


class Message(Base):
    """The transcript: every message in and out, on any channel."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="direction"),
        Index("ix_messages_identity_id_id", "identity_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"))
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"))
    consultation_id: Mapped[int | None] = mapped_column(
        ForeignKey("consultations.id", ondelete="SET NULL"), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    channel: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    action: Mapped[str | None] = mapped_column(String(255))
    # Outbound rendering (buttons, link, image, edit_of) and inbound attachments.
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    provider_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()


class OutboxItem(Base):
    """A message to a person, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        # The dispatcher claims the oldest pending row of each chat: keep that lookup small.
        Index("ix_outbox_pending_chat", "channel", "address", "id",
              sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(255))
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL"), index=True)
    # Indexed: a message deleted (a keyed notice already queued, core.transcript) sets this
    # to NULL, which without it read the whole outbox, once per message.
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = _created()
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    sent_at: Mapped[datetime | None]


class InboundEvent(Base):
    """A provider event id already taken in, so a redelivery is processed once."""

    __tablename__ = "inbound_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = _created()


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now, index=True)
