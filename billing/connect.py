"""Stripe Connect for mechanics: an Express account, its onboarding link, its status."""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import BillingError
from core.config import Config
from core.models import Mechanic

log = logging.getLogger("autodoctor.billing")


class ConnectPort(Protocol):
    async def create_connected_account(self, mechanic: Mechanic) -> str: ...

    async def onboarding_link(self, account_id: str, *, refresh_url: str,
                              return_url: str) -> str: ...


def onboarding_urls(config: Config) -> tuple[str, str]:
    """Where Stripe sends the mechanic back: (refresh_url, return_url)."""
    base = config.public_url.rstrip("/")
    return f"{base}/connect/refresh", f"{base}/connect/done"


async def start_onboarding(session: AsyncSession, connect: ConnectPort, config: Config,
                           mechanic_id: int) -> str:
    """The mechanic's Stripe onboarding link, creating their account the first time."""
    mechanic = await session.scalar(
        select(Mechanic).where(Mechanic.id == mechanic_id).with_for_update()
        .execution_options(populate_existing=True))
    if mechanic is None:
        raise BillingError(f"no mechanic {mechanic_id}")
    if mechanic.stripe_account_id is None:
        mechanic.stripe_account_id = await connect.create_connected_account(mechanic)
        await session.flush()
    refresh_url, return_url = onboarding_urls(config)
    return await connect.onboarding_link(mechanic.stripe_account_id, refresh_url=refresh_url,
                                         return_url=return_url)


async def account_updated(session: AsyncSession, account_id: str, *, charges_enabled: bool,
                          payouts_enabled: bool) -> Mechanic | None:
    """Stripe's view of a connected account changed: keep the mechanic's flags in step."""
    if not account_id:
        return None
    mechanic = await session.scalar(
        select(Mechanic).where(Mechanic.stripe_account_id == account_id).with_for_update()
        .execution_options(populate_existing=True))
    if mechanic is None:
        log.warning("stripe account=%s updated but belongs to no mechanic", account_id)
        return None
    mechanic.charges_enabled = charges_enabled
    mechanic.payouts_enabled = payouts_enabled
    log.info("mechanic=%s stripe account charges=%s payouts=%s", mechanic.id,
             charges_enabled, payouts_enabled)
    return mechanic
