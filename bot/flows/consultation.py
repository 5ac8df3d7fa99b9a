"""A consultation under way: what either side writes goes to the other; a few bot commands
(help, status, end, more time, emergency, release) are answered here and not relayed."""

from __future__ import annotations

import logging
from datetime import datetime

from bot.flows import mechanic
from bot.texts import text
from core import dispatch
from core.consultations import cancel_for_emergency, complete, first_name
from core.context import Context
from core.messages import Button, Link
from core.models import Consultation
from core.relay import offer_extension, relay
from core.room_sweep import rooms_after_commit
from core.sweeps import payouts_due, refund_due

log = logging.getLogger("autodoctor.flows.consultation")

END_WORDS = {"end", "end session", "finish", "stop session", "done talking"}
MORE_TIME = {"more time", "extend", "add time", "extension"}
EMERGENCY = {"emergency", "cancel session"}


def _said(ctx: Context) -> str:
    return ctx.text.strip().lower().lstrip("/").rstrip(".!")


def _minutes_left(consultation: Consultation, now: datetime) -> int:
    if consultation.ends_at is None:
        return 0
    return max(0, int((consultation.ends_at - now).total_seconds() + 59) // 60)


async def handle(ctx: Context) -> None:
    """Entry point for a message from either side of a consultation under way."""
    consultation = ctx.person.consultation
    assert consultation is not None
    is_customer = ctx.identity.id == consultation.customer_identity_id
    action = ctx.inbound.action or ""
    said = _said(ctx)
    if action:
        await _button(ctx, consultation, is_customer, action)
    elif said in ("help", "?", "menu", "help me"):
        await ctx.say(text("session_help", is_customer=is_customer))
    elif said == "status":
        await ctx.say(text("session_status", consultation=consultation,
                           minutes_left=_minutes_left(consultation, ctx.now),
                           plan=ctx.config.plan(consultation.plan)))
    elif said in END_WORDS:
        await _end(ctx, consultation, is_customer, confirmed=not is_customer)
    elif is_customer and said in ("cancel", "cancel request"):
        await ctx.say(text("cannot_cancel_matched"))
    elif is_customer and said in MORE_TIME:
        await _more_time(ctx, consultation)
    elif not is_customer and said in EMERGENCY:
        await _emergency(ctx, consultation)
    elif not is_customer and said == "release" and consultation.status == "waiting":
        released = await dispatch.release(ctx.uow, ctx.runtime, consultation.mechanic_id,
                                          ctx.now)
        rooms_after_commit(ctx.runtime, ctx.after_commit)  # its room goes with it
        await ctx.say(text("released", ref=released.ref) if released
                      else text("nothing_to_release"))
    else:
        await _relay(ctx, consultation, is_customer)


async def _relay(ctx: Context, consultation: Consultation, is_customer: bool) -> None:
    if ctx.inbound_row is not None:
        ctx.inbound_row.consultation_id = consultation.id
    if is_customer:
        name = first_name(ctx.identity.display_name, "Customer")
    else:
        name = first_name(ctx.person.mechanic.name if ctx.person.mechanic else None, "Mechanic")
    result = await relay(ctx.uow, ctx.runtime, consultation, ctx.identity.id, name,
                         ctx.person.other_side, ctx.text, ctx.inbound.attachments, ctx.now)
    if result.refused_files:
        await ctx.say(text("attachment_refused"))
    if not result.delivered:
        await ctx.say(text("other_side_unreachable"))


async def _button(ctx: Context, consultation: Consultation, is_customer: bool,
                  action: str) -> None:
    """A button tap: it must name this session (a stale or forged one changes nothing)."""
    kind, _, rest = action.partition(":")
    if kind == "accept" and not is_customer:
        await mechanic.handle(ctx)  # another offer's tap: answered as any accept is
        return
    target, _, option = rest.partition(":")
    if kind not in ("end", "extend", "keep") or target != str(consultation.id):
        await ctx.say(text("not_in_session"))
        return
    if kind == "keep":
        await ctx.say(text("keep_talking"))
    elif kind == "end":
        await _end(ctx, consultation, is_customer, confirmed=option == "confirm"
                   or not is_customer)
    elif is_customer:
        await _more_time(ctx, consultation)
    else:
        await ctx.say(text("not_in_session"))


async def _end(ctx: Context, consultation: Consultation, is_customer: bool, *,
               confirmed: bool) -> None:
    if not confirmed:
        await ctx.say(text("end_confirm"), [
            Button(text("label", key="end_now"), f"end:{consultation.id}:confirm"),
            Button(text("label", key="keep_talking"), f"keep:{consultation.id}")])
        return
    reason = "customer_ended" if is_customer else "mechanic_ended"
    await complete(ctx.uow, ctx.runtime, consultation.id, reason, ctx.now)
    _send_payout_after(ctx)
    rooms_after_commit(ctx.runtime, ctx.after_commit)


async def _more_time(ctx: Context, consultation: Consultation) -> None:
    extension = ctx.config.extensions
    try:
        checkout = await offer_extension(ctx.uow, ctx.runtime, consultation, ctx.now)
    except Exception:
        log.exception("consultation=%s extension link could not be made", consultation.id)
        await ctx.say(text("payment_unavailable"))
        return
    assert checkout.url is not None
    await ctx.say(text("extension_link", minutes=extension.minutes),
                  link=Link(text("label", key="extend", minutes=extension.minutes),
                            checkout.url))


async def _emergency(ctx: Context, consultation: Consultation) -> None:
    if not await cancel_for_emergency(ctx.uow, ctx.runtime, consultation, ctx.now):
        await ctx.say(text("nothing_to_release"))
        return
    runtime = ctx.runtime

    async def refund() -> None:
        # After the commit: a provider outage cannot undo the cancel; the sweep retries.
        await refund_due(runtime, runtime.clock.now())

    ctx.after_commit.append(refund)
    rooms_after_commit(ctx.runtime, ctx.after_commit)


def _send_payout_after(ctx: Context) -> None:
    runtime = ctx.runtime

    async def pay() -> None:
        await payouts_due(runtime, runtime.clock.now())

    ctx.after_commit.append(pay)
