"""Offline test-mode checkout for local runs: /pay/{ref} on our own site, no real charge."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.errors import ConfigError
from core.models import Checkout


class OfflinePayments:
    provider = "offline"

    def __init__(self, config: Config) -> None:
        if config.environment == "production":
            raise ConfigError('the offline checkout cannot run with environment = "production"; '
                              "set STRIPE_SECRET_KEY")
        self._base = config.public_url.rstrip("/")

    async def create_checkout(self, session: AsyncSession, checkout: Checkout) -> str:
        return f"{self._base}/pay/{checkout.ref}"
