"""Every message from a customer: commands that work at any step, a mechanic's invite typed
in chat, a paid request's follow-up, else the intake's next step (bot.flows.intake_steps)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from bot.flows import aftercare, paid
from bot.flows.intake_steps import STEPS, ask_again, attach, begin, show_status
from bot.texts import text
from core.context import Context
from core.intake import (
    cancel_unpaid,
)
from core.mechanics import redeem_invite
from core.store.records import IntakeRecord

log = logging.getLogger("autodoctor.flows.customer")

# What people type for the commands that work at any step.
COMMANDS = {
    "help": "help", "?": "help", "menu": "help", "help me": "help",
    "status": "status",
    # On SMS "cancel" and "stop" are the carrier's opt-out keywords: "cancel request" there.
    "cancel": "cancel", "stop": "cancel", "cancel request": "cancel",
    "start over": "restart", "restart": "restart", "start": "restart", "new": "restart",
    "reset": "restart",
    "history": "history", "my sessions": "history",
}
_JOIN = re.compile(r"^\s*join\s+([A-Za-z0-9]{6,12})\s*$", re.IGNORECASE)


def _command(ctx: Context) -> str | None:
    action = ctx.inbound.action or ""
    if action.startswith("cmd:"):
        return COMMANDS.get(action[4:])
    said = ctx.text.strip().lower().lstrip("/").rstrip(".!")
    return COMMANDS.get(said)


async def handle(ctx: Context) -> None:
    """Entry point for every message from a customer."""
    if (ctx.inbound.action or "").startswith("accept:"):
        # A forged or stale mechanic payload from a customer: refuse, change nothing.
        log.warning("customer=%s sent mechanic payload %r; refused", ctx.identity.customer_id,
                    ctx.inbound.action)
        await ctx.say(text("not_a_mechanic"))
        ctx.toast = text("toast", outcome="not_offered")
        return
    join = _JOIN.match(ctx.text)
    if join is not None:
        # A mechanic's invite, typed (SMS "JOIN CODE") from this chat: link it to them.
        if await redeem_invite(ctx.uow, ctx.runtime, join.group(1), ctx.identity.channel,
                               ctx.identity.address, ctx.now) is None:
            await ctx.say(text("invite_invalid"))
        return
    intake = await _current_intake(ctx)
    command = _command(ctx)
    if command == "history":
        await aftercare.history(ctx)
        return
    if command is None and await aftercare.handle(ctx, session_ended=False):
        return
    if intake is not None and intake.status == "paid":
        if await paid.handle(ctx, intake, command):
            return
        intake = None  # starting over after the paid request closed
    if command is not None:
        await COMMAND_HANDLERS[command](ctx, intake)
        return
    if intake is None or ctx.conversation.step == "start":
        await begin(ctx)
        return
    if ctx.inbound.attachments and ctx.conversation.step != "photos":
        await attach(ctx, intake)
        if not ctx.text:
            return
    await STEPS.get(ctx.conversation.step, ask_again)(ctx, intake)


async def _current_intake(ctx: Context) -> IntakeRecord | None:
    intake = ctx.intake
    if intake is None or intake.status in ("cancelled", "expired"):
        return None
    return intake


# ------------------------------------------------------------------ commands


async def _help(ctx: Context, intake: IntakeRecord | None) -> None:
    await ctx.say(text("help"))
    if intake is not None:
        await ask_again(ctx, intake)


async def _drop(ctx: Context, intake: IntakeRecord) -> bool:
    """Cancel an unpaid intake; after commit its payment pages are closed at the provider."""
    expired = await cancel_unpaid(ctx.session, intake, ctx.now)
    if expired is None:
        return False
    payments = ctx.runtime.payments
    close = getattr(payments, "expire_checkout", None)
    if expired and close is not None:
        async def close_pages() -> None:
            for checkout in expired:
                await close(checkout)

        ctx.after_commit.append(close_pages)
    return True


async def _cancel(ctx: Context, intake: IntakeRecord | None) -> None:
    if intake is None or not await _drop(ctx, intake):
        await ctx.say(text("nothing_to_cancel"))
        return
    log.info("intake=%s cancelled by customer=%s", intake.id, intake.customer_id)
    ctx.conversation.update(intake_id=None, data={}, step="start")
    await ctx.say(text("cancelled"))


async def _restart(ctx: Context, intake: IntakeRecord | None) -> None:
    if intake is not None:
        await _drop(ctx, intake)
        await ctx.say(text("starting_over"))
    await begin(ctx)


COMMAND_HANDLERS: dict[str, Callable[[Context, IntakeRecord | None], Awaitable[None]]] = {
    "help": _help, "status": show_status, "cancel": _cancel, "restart": _restart,
}
