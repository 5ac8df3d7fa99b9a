"""Video fixtures: the LiveKit stand-in, and a runtime (and app) with LiveKit pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import refunds_for
from billing.offline import OfflinePayments
from billing.payouts import payouts_for
from bot.texts import text as render_text
from core.clock import ManualClock
from core.config import Config, with_changes
from core.runtime import Runtime
from rooms.livekit import LiveKitRooms
from tests.standins.livekit_api import LiveKitStandin


@pytest.fixture
async def livekit_api() -> AsyncIterator[LiveKitStandin]:
    async with LiveKitStandin() as standin:
        yield standin


@pytest.fixture
def video_config(config: Config, livekit_api: LiveKitStandin) -> Config:
    """The shipped config with LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET set."""
    return with_changes(config, secrets={"livekit_url": livekit_api.url,
                                         "livekit_api_key": livekit_api.api_key,
                                         "livekit_api_secret": livekit_api.api_secret})


@pytest.fixture
def video_runtime(video_config: Config, engine: AsyncEngine, clock: ManualClock) -> Runtime:
    payments = OfflinePayments(video_config)
    return Runtime.build(video_config, engine, payments, render_text, clock,
                         refund=refunds_for(payments), payout=payouts_for(payments),
                         rooms=LiveKitRooms(video_config))
