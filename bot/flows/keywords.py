"""Carrier keywords (SMS): STOP opts the number out, START opts it back in, HELP says who we
are and how to stop. The channel turns the keyword into a `keyword:<kind>` action; only a
channel whose carrier has such keywords is taken at its word."""

from __future__ import annotations

import logging
from dataclasses import replace

from sqlalchemy import select, update

from bot.texts import text
from core.context import Context
from core.models import Identity

log = logging.getLogger("autodoctor.flows.keywords")

KEYWORD_CHANNELS = frozenset({"sms"})
OPTED_OUT = "opted out (replied STOP)"


async def handle(ctx: Context) -> bool:
    """Answers a keyword; False when the message is to be handled as what it says ("yes"
    or "start" from a number that never opted out)."""
    kind = (ctx.inbound.action or "").removeprefix("keyword:")
    if ctx.identity.channel not in KEYWORD_CHANNELS:
        ctx.inbound = replace(ctx.inbound, action=None)
        return False
    if kind == "stop":
        await _reachable(ctx, False)
        log.info("identity=%s opted out", ctx.identity.id)
        return True  # the carrier confirms; nothing more may be sent
    if kind == "help":
        await ctx.say(text("sms_help", mechanic=ctx.identity.mechanic_id is not None))
        return True
    reachable = await ctx.session.scalar(select(Identity.reachable).where(
        Identity.id == ctx.identity.id))
    if kind == "start" and reachable is False:
        await _reachable(ctx, True)
        log.info("identity=%s opted back in", ctx.identity.id)
        await ctx.say(text("opted_in"))
        return True
    ctx.inbound = replace(ctx.inbound, action=None)
    return False


async def _reachable(ctx: Context, reachable: bool) -> None:
    await ctx.session.execute(update(Identity).where(Identity.id == ctx.identity.id).values(
        reachable=reachable, unreachable_reason=None if reachable else OPTED_OUT))
