"""Offline test-mode checkout for local runs: /pay/{ref} on our own site, no real charge."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import ProviderRejected
from billing.refunds import ProviderRefund
from core.config import Config
from core.errors import ConfigError
from core.models import Checkout, Mechanic, Payout
from core.store.records import CheckoutRecord


class OfflinePayments:
    provider = "offline"

    def __init__(self, config: Config) -> None:
        if config.environment == "production":
            raise ConfigError('the offline checkout cannot run with environment = "production"; '
                              "set STRIPE_SECRET_KEY")
        self._base = config.public_url.rstrip("/")

    async def create_checkout(self, session: AsyncSession, checkout: CheckoutRecord) -> str:
        return f"{self._base}/pay/{checkout.ref}"

    async def expire_checkout(self, checkout: Checkout) -> bool:
        # The /pay page reads the checkout's status, so nothing else needs closing.
        return checkout.status == "open"

    async def refund(self, checkout: Checkout, *, reason: str) -> ProviderRefund:
        # No money moved, so the refund is complete at once.
        return ProviderRefund(id=None, status="succeeded")

    async def charge_for_payment(self, payment_intent_id: str) -> str | None:
        return None

    async def transfer(self, payout: Payout, *, destination: str,
                       source_transaction: str | None, transfer_group: str | None) -> str:
        return f"offline_tr_{payout.id}"

    async def create_connected_account(self, mechanic: Mechanic) -> str:
        raise ProviderRejected("payout accounts need Stripe: set STRIPE_SECRET_KEY")

    async def onboarding_link(self, account_id: str, *, refresh_url: str,
                              return_url: str) -> str:
        raise ProviderRejected("payout accounts need Stripe: set STRIPE_SECRET_KEY")
