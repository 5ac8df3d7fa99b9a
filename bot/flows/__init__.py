"""The conversation flows; route() picks one for each message by who sent it."""

from __future__ import annotations

from bot.flows import consultation, customer, keywords, mechanic
from core.context import Context


async def route(ctx: Context) -> None:
    if (ctx.inbound.action or "").startswith("keyword:") and await keywords.handle(ctx):
        return
    if ctx.person.consultation is not None:
        await consultation.handle(ctx)
    elif ctx.identity.mechanic_id is not None:
        await mechanic.handle(ctx)
    else:
        await customer.handle(ctx)
