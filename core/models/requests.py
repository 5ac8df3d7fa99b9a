"""The work: conversations, intakes and their files, paid requests, offers, consultations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
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

from core.models.base import BIG_ID, Base, created_column


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
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()


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
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = created_column()
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
    # Sent during a consultation: its two participants may open it.
    consultation_id: Mapped[int | None] = mapped_column(
        ForeignKey("consultations.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = created_column()


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
        # The sweep widening offers reads the few requests with a wave due.
        Index("ix_session_requests_next_wave_at", "next_wave_at",
              sqlite_where=text("next_wave_at IS NOT NULL"),
              postgresql_where=text("next_wave_at IS NOT NULL")),
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
    # When the offer widens to the next wave of mechanics (core.dispatch.waves); None once
    # accepted, closed, or nobody is left to offer it to.
    next_wave_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_column()

    @staticmethod
    def closing(status: str, reason: str, now: datetime) -> dict[str, Any]:
        """The columns of a request closed for good (completed, cancelled, expired), for an
        UPDATE's values: closed now for this reason, and no wave of offers to come."""
        return {"status": status, "closed_at": now, "close_reason": reason,
                "next_wave_at": None}


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
    outbox_id: Mapped[int | None] = mapped_column(
        BIG_ID, ForeignKey("outbox.id", ondelete="SET NULL"), index=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_column()
    answered_at: Mapped[datetime | None]


class Consultation(Base):
    """A session between a customer and a mechanic (named so to stay clear of DB sessions)."""

    __tablename__ = "consultations"
    __table_args__ = (
        CheckConstraint("status IN ('waiting', 'live', 'completed', 'cancelled')",
                        name="status"),
        CheckConstraint("rating IS NULL OR rating BETWEEN 1 AND 5", name="rating"),
        CheckConstraint("room_status IS NULL OR room_status IN ('pending', 'ready', 'closed')",
                        name="room_status"),
        # The same one-job rule, for sessions under way.
        Index("uq_consultations_one_active_per_mechanic", "mechanic_id", unique=True,
              sqlite_where=text("status IN ('waiting', 'live')"),
              postgresql_where=text("status IN ('waiting', 'live')")),
        Index("uq_consultations_one_active_per_request", "request_id", unique=True,
              sqlite_where=text("status IN ('waiting', 'live')"),
              postgresql_where=text("status IN ('waiting', 'live')")),
        # The sweep for sessions left waiting reads them by status, every few seconds.
        Index("ix_consultations_status", "status"),
        # The sweep opening and closing video rooms reads the few rooms not closed yet.
        Index("ix_consultations_room_open", "room_status",
              sqlite_where=text("room_status IN ('pending', 'ready')"),
              postgresql_where=text("room_status IN ('pending', 'ready')")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Indexed; one consultation under way per request (uq_..._one_active_per_request): a
    # request released or left by a no-show is matched again with a new consultation.
    request_id: Mapped[int] = mapped_column(
        ForeignKey("session_requests.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"),
                                             index=True)
    mechanic_id: Mapped[int] = mapped_column(ForeignKey("mechanics.id", ondelete="CASCADE"))
    # The two chats the session is relayed between, chosen at the match. Indexed: the engine
    # finds a sender's session under way through them, for every message.
    customer_identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL"), index=True)
    mechanic_identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL"), index=True)
    plan: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    # The LiveKit room of a video tier (core.video): None for a chat session; 'pending' until
    # LiveKit made it (retried by the sweep from room_retry_at), 'ready' once both were sent
    # their join links, 'closed' once deleted after the session.
    room_name: Mapped[str | None] = mapped_column(String(100), unique=True)
    room_status: Mapped[str | None] = mapped_column(String(16))
    room_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    room_retry_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ends_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(64))
    warned_minutes: Mapped[int | None] = mapped_column(Integer)
    # Time bought on top of the plan's (core.models.Extension: what it cost).
    extra_minutes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    mechanic_notes: Mapped[str | None] = mapped_column(Text)
    # Full Diagnostic's written report: findings, repairs (in priority order), cost range.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    rating: Mapped[int | None] = mapped_column(Integer)
    review: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_column()
