"""Money: checkouts, refunds and mechanics' payouts, in integer cents."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, created_column


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
    created_at: Mapped[datetime] = created_column()
    expires_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]


class Extension(Base):
    """More time bought during a consultation, paid through its own checkout."""

    __tablename__ = "extensions"
    __table_args__ = (
        CheckConstraint("minutes > 0 AND amount_cents > 0", name="positive"),
        CheckConstraint("status IN ('open', 'paid', 'late')", name="status"),
        # The refund sweep looks for extensions paid too late, every few seconds.
        Index("ix_extensions_status", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    consultation_id: Mapped[int] = mapped_column(
        ForeignKey("consultations.id", ondelete="CASCADE"), index=True)
    checkout_id: Mapped[int] = mapped_column(ForeignKey("checkouts.id", ondelete="CASCADE"),
                                             unique=True)
    minutes: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = created_column()
    paid_at: Mapped[datetime | None]


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
    created_at: Mapped[datetime] = created_column()
    completed_at: Mapped[datetime | None]


class Payout(Base):
    """The mechanic's share of one consultation, paid by a Stripe Connect transfer."""

    __tablename__ = "payouts"
    __table_args__ = (
        CheckConstraint("amount_cents >= 0 AND fee_cents >= 0", name="amounts"),
        CheckConstraint("status IN ('pending', 'paid', 'failed')", name="status"),
        # The payout sweep looks for pending payouts, every few seconds.
        Index("ix_payouts_status", "status"),
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
    created_at: Mapped[datetime] = created_column()
    paid_at: Mapped[datetime | None]
