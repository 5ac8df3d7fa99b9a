"""A customer whose request is paid: status, cancel with refund, a new match after a no-show."""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from bot.flows import aftercare
from bot.texts import text
from core import dispatch
from core.context import Context
from core.messages import Button
from core.models import SessionRequest
from core.store.records import IntakeRecord
from core.sweeps import withdraw_offers

log = logging.getLogger("autodoctor.flows.paid")


async def handle(ctx: Context, intake: IntakeRecord, command: str | None) -> bool:
    """Answer a customer whose intake is paid; False when they start over after the request
    closed (the conversation has left the intake: the caller begins a new one)."""
    request = await ctx.session.scalar(select(SessionRequest).where(
        SessionRequest.intake_id == intake.id))
    if request is None:  # paid a moment ago; the request is being created
        await ctx.say(text("matching", plan=ctx.config.plan(intake.plan or "")))
        return True
    plan = ctx.config.plan(request.plan)
    action = ctx.inbound.action or ""
    if action == f"rematch:{request.ref}" or (
            ctx.text.strip().lower() in ("match me again", "rematch")
            and request.close_reason == "no_show"):
        await _rematch(ctx, request)
    elif command == "cancel":
        await _cancel(ctx, intake, request)
    elif command == "restart" and request.status in ("expired", "cancelled", "completed"):
        if request.status == "expired":
            intake.update(status="expired")
        ctx.conversation.update(intake_id=None)
        return False
    elif command == "help":
        await ctx.say(text("help"))
    elif request.status == "expired":
        await ctx.say(text("customer_expired", plan=plan))
    elif request.status == "cancelled" and request.close_reason == "no_show":
        await ctx.say(text("customer_no_show", plan=plan),
                      [Button(text("label", key="rematch"), f"rematch:{request.ref}")])
    elif request.status == "completed" and await aftercare.handle(ctx, session_ended=True):
        pass
    elif request.status == "completed":
        await ctx.say(text("session_over", plan=plan))
    elif request.status == "cancelled" and request.close_reason == "emergency":
        await ctx.say(text("emergency_customer", plan=plan, amount_cents=request.price_cents))
    elif request.status == "cancelled" and request.close_reason == dispatch.ADMIN_CANCELLED:
        await ctx.say(text("admin_cancelled_customer", plan=plan,
                           amount_cents=request.price_cents))
    elif request.status == "cancelled" and request.close_reason == "admin_cancelled_session":
        await ctx.say(text("session_cancelled_customer", plan=plan,
                           amount_cents=request.price_cents))
    elif request.status == "accepted":
        await ctx.say(text("matched_status", plan=plan))
    else:
        await ctx.say(text("matching", plan=plan))
    return True


async def _cancel(ctx: Context, intake: IntakeRecord, request: SessionRequest) -> None:
    if request.status == "accepted":
        await ctx.say(text("cannot_cancel_matched"))
        return
    cancelled = (await ctx.session.execute(
        update(SessionRequest)
        .where(SessionRequest.id == request.id,
               SessionRequest.status.in_(("pending", "unattended", "cancelled")),
               SessionRequest.close_reason.is_distinct_from("customer_cancelled"))
        .values(SessionRequest.closing("cancelled", "customer_cancelled", ctx.now))
        .returning(SessionRequest.id))).scalar_one_or_none()
    if cancelled is None:
        await ctx.say(text("nothing_to_cancel"))
        return
    await ctx.session.refresh(request)
    await withdraw_offers(ctx.uow, ctx.runtime, request, ctx.now)
    await ctx.say(text("customer_cancelled_paid", plan=ctx.config.plan(request.plan)))
    ctx.conversation.update(intake_id=None, step="start")
    log.info("request=%s cancelled by the customer before a match", request.ref)
    runtime, checkout_id = ctx.runtime, request.checkout_id

    async def refund() -> None:
        # After commit: a provider outage cannot undo the cancel; the sweep retries.
        from core.sweeps import refund_due

        if checkout_id is not None:
            await refund_due(runtime, runtime.clock.now())

    ctx.after_commit.append(refund)


async def _rematch(ctx: Context, request: SessionRequest) -> None:
    reopened = (await ctx.session.execute(
        update(SessionRequest)
        .where(SessionRequest.id == request.id, SessionRequest.status == "cancelled",
               SessionRequest.close_reason == "no_show")
        .values(status="pending", mechanic_id=None, closed_at=None, close_reason=None)
        .returning(SessionRequest.id))).scalar_one_or_none()
    if reopened is None:
        await ctx.say(text("matching", plan=ctx.config.plan(request.plan)))
        return
    await ctx.session.refresh(request)
    await ctx.say(text("rematching"))
    await dispatch.offer_request(ctx.uow, ctx.runtime, request, ctx.now)
