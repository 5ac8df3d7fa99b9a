"""Persistence for the hot path: the unit of work, its plain-value rows and the pure SQL
builders of its multi-row statements."""

from core.store.records import (
    CheckoutRecord,
    ConversationState,
    CustomerName,
    IdentityName,
    IdentityRow,
    IntakeRecord,
    MessageRow,
    OutboxRow,
    TermsAcceptanceRecord,
)
from core.store.uow import TRANSCRIPT_CHANNELS, IdPool, UnitOfWork

__all__ = ["TRANSCRIPT_CHANNELS", "CheckoutRecord", "ConversationState", "CustomerName",
           "IdPool", "IdentityName", "IdentityRow", "IntakeRecord", "MessageRow", "OutboxRow",
           "TermsAcceptanceRecord", "UnitOfWork"]
