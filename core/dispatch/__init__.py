"""Dispatch: offer paid requests to eligible mechanics, race-safe accept, release, assign."""

from core.dispatch.accept import AcceptResult, Outcome, Taps, accept, assign, release
from core.dispatch.offers import (
    CHANNEL_PREFERENCE,
    OPEN_STATUSES,
    customer_identity,
    eligible_mechanics,
    holds_job,
    mark_unattended,
    mechanic_identity,
    notify_unattended,
    offer_request,
)

__all__ = ["CHANNEL_PREFERENCE", "OPEN_STATUSES", "AcceptResult", "Outcome", "Taps", "accept",
           "assign", "customer_identity", "eligible_mechanics", "holds_job", "mark_unattended",
           "mechanic_identity", "notify_unattended", "offer_request", "release"]
