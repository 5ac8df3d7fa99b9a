"""The whole domain's tables, SQLAlchemy 2 style; the database enforces the invariants."""

from core.models.base import NAMING_CONVENTION, Base, UTCDateTime, table
from core.models.messaging import AuditLog, InboundEvent, Message, OutboxItem, SmsDelivery
from core.models.money import Checkout, Extension, Payout, Refund
from core.models.people import (
    Admin,
    AdminLogin,
    Availability,
    Customer,
    Identity,
    Mechanic,
    MechanicInvite,
    TermsAcceptance,
)
from core.models.requests import Consultation, Conversation, File, Intake, Offer, SessionRequest

__all__ = ["NAMING_CONVENTION", "Admin", "AdminLogin", "AuditLog", "Availability", "Base",
           "Checkout", "Consultation", "Conversation", "Customer", "Extension", "File",
           "Identity", "InboundEvent", "Intake", "Mechanic", "MechanicInvite", "Message",
           "Offer", "OutboxItem", "Payout", "Refund", "SessionRequest", "SmsDelivery",
           "TermsAcceptance", "UTCDateTime", "table"]
