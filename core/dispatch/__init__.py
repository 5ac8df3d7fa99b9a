"""Dispatch: offer paid requests to eligible mechanics, race-safe accept, release, assign, and
the admin queue's choices and cancel."""

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
    widen_due,
)
from core.dispatch.queue import ADMIN_CANCELLED, Candidate, cancel_unmatched, candidates

__all__ = ["ADMIN_CANCELLED", "CHANNEL_PREFERENCE", "OPEN_STATUSES", "AcceptResult", "Candidate",
           "Outcome", "Taps", "accept", "assign", "cancel_unmatched", "candidates",
           "customer_identity", "eligible_mechanics", "holds_job", "mark_unattended",
           "mechanic_identity", "notify_unattended", "offer_request", "release", "widen_due"]
