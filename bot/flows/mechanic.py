"""Messages from linked mechanics. Offers, accept and availability arrive with dispatch."""

from __future__ import annotations

from bot.texts import text
from core.engine import Context
from core.models import Mechanic


async def handle(ctx: Context) -> None:
    mechanic = await ctx.session.get(Mechanic, ctx.identity.mechanic_id)
    await ctx.say(text("mechanic_help", name=mechanic.name if mechanic else "there"))
