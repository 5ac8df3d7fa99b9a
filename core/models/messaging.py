"""Messaging: the transcript, the outbox, provider event ids taken in, the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import BIG_ID, Base, UTCDateTime, big_id, created_column, utc_now


class Message(Base):
    """The transcript: every message in and out, on any channel."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="direction"),
        Index("ix_messages_identity_id_id", "identity_id", "id"),
    )

    id: Mapped[int] = big_id()
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
    created_at: Mapped[datetime] = created_column()


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

    id: Mapped[int] = big_id()
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(255))
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL"), index=True)
    # Indexed: a message deleted (a keyed notice already queued, core.transcript) sets this
    # to NULL, which without it read the whole outbox, once per message.
    message_id: Mapped[int | None] = mapped_column(
        BIG_ID, ForeignKey("messages.id", ondelete="SET NULL"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = created_column()
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()
    sent_at: Mapped[datetime | None]


class InboundEvent(Base):
    """A provider event id already taken in, so a redelivery is processed once."""

    __tablename__ = "inbound_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"),)

    id: Mapped[int] = big_id()
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = created_column()


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = big_id()
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, index=True)


class SmsDelivery(Base):
    """One message handed to the SMS provider (an outbox row may need several), and what the
    provider last said of it (queued, sent, delivered, undelivered, failed)."""

    __tablename__ = "sms_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The provider's message id (Twilio's MessageSid).
    sid: Mapped[str] = mapped_column(String(64), unique=True)
    # The outbox row it was sent for (its dedupe_key); NULL when a status came first.
    outbox_key: Mapped[str | None] = mapped_column(String(255), index=True)
    address: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[int | None] = mapped_column(Integer)
    segments: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()
