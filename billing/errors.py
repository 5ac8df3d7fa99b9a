"""Billing's exceptions: one root, messages that say what to do next."""

from __future__ import annotations


class BillingError(Exception):
    """Base for every error raised by billing."""


class ProviderUnavailable(BillingError):
    """The payment provider did not answer or failed on its side; retrying later is safe."""


class ProviderRejected(BillingError):
    """The payment provider refused the request (bad parameters, missing account, …)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # the provider's error code, e.g. "charge_already_refunded"


class CheckoutNotFound(BillingError):
    """No checkout has this reference."""


class NotRefundable(BillingError):
    """The checkout is in a state that cannot be refunded (never paid, for instance)."""
