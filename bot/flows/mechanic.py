"""Messages from linked mechanics: accept offers, availability, status, release."""

from __future__ import annotations

import logging

from billing.connect import start_onboarding
from billing.errors import BillingError
from bot.texts import text
from core import dispatch
from core.aftercare import awaiting_notes, earnings, mechanic_history, take_notes
from core.availability import (
    AvailabilityError,
    parse_schedule,
    schedule_of,
    set_schedule,
    set_timezone,
)
from core.context import Context
from core.dispatch import Outcome
from core.messages import Link
from core.models import Mechanic
from core.room_sweep import rooms_after_commit

log = logging.getLogger("autodoctor.flows.mechanic")

AVAILABLE = {"available", "online", "on", "start"}
AWAY = {"away", "offline", "off", "pause"}


def _ref(raw: str) -> str:
    """'R-4821', 'r-4821' or just '4821' (as typed in an SMS reply) → 'R-4821'."""
    raw = raw.strip().upper()
    return f"R-{raw}" if raw.isdigit() else raw


async def handle(ctx: Context) -> None:
    mechanic = ctx.person.mechanic
    assert mechanic is not None
    action = ctx.inbound.action or ""
    said = ctx.text.strip().lower().lstrip("/")
    if action.startswith("accept:"):
        await _accept(ctx, mechanic, _ref(action.split(":", 1)[1]))
    elif said.startswith("accept ") and len(said.split()) == 2:
        await _accept(ctx, mechanic, _ref(said.split()[1]))
    elif said in AVAILABLE:
        mechanic.is_available = True
        await ctx.say(text("mechanic_available"))
    elif said in AWAY:
        mechanic.is_available = False
        await ctx.say(text("mechanic_away"))
    elif said == "status":
        job = await dispatch.holds_job(ctx.session, mechanic.id)
        await ctx.say(text("mechanic_status", mechanic=mechanic, job=job))
    elif said == "hours" or said.startswith("hours "):
        await _hours(ctx, mechanic, ctx.text.strip()[5:].strip())
    elif said.startswith("timezone ") or said.startswith("tz "):
        try:
            set_timezone(mechanic, ctx.text.strip().split(None, 1)[1])
        except AvailabilityError as exc:
            await ctx.say(str(exc))
            return
        await ctx.say(text("schedule", windows=await schedule_of(ctx.session, mechanic.id),
                           timezone=mechanic.timezone))
    elif said in ("payout", "payouts", "get paid", "bank"):
        await _payout_setup(ctx, mechanic)
    elif said == "release":
        released = await dispatch.release(ctx.uow, ctx.runtime, mechanic.id, ctx.now)
        await ctx.say(text("released", ref=released.ref) if released
                      else text("nothing_to_release"))
    elif said == "history":
        await _history(ctx, mechanic)
    elif said in ("earnings", "money"):
        await ctx.say(text("earnings", e=await earnings(ctx.session, mechanic.id)))
    elif not action and ctx.text.strip() and await _notes(ctx, mechanic):
        return
    else:
        await ctx.say(text("mechanic_help", name=mechanic.name) + "\n"
                      + text("mechanic_commands"))


async def _notes(ctx: Context, mechanic: Mechanic) -> bool:
    """Free text after a session that still needs notes: they are the notes (or the next part
    of a Full Diagnostic report). False if no session waits for them."""
    consultation = await awaiting_notes(ctx.session, mechanic.id, ctx.now)
    if consultation is None:
        return False
    missing = await take_notes(ctx.uow, ctx.runtime, consultation, ctx.text, ctx.now)
    await ctx.say(text("report_ask", part=missing) if missing else text("notes_sent"))
    return True


async def _history(ctx: Context, mechanic: Mechanic) -> None:
    sessions = [{"consultation": s.consultation, "ref": s.ref,
                 "plan": ctx.config.plan(s.consultation.plan).name}
                for s in await mechanic_history(ctx.session, mechanic.id)]
    await ctx.say(text("mechanic_history", sessions=sessions))


async def _accept(ctx: Context, mechanic: Mechanic, ref: str) -> None:
    result = await dispatch.accept(ctx.uow, ctx.runtime, ref, mechanic.id, ctx.now,
                                   identity_id=ctx.identity.id, taps=ctx.taps)
    outcome = result.outcome
    ctx.toast = text("toast", outcome=outcome.value)
    if outcome is Outcome.ACCEPTED:
        # A video tier's room: made by LiveKit once this has committed.
        rooms_after_commit(ctx.runtime, ctx.after_commit)
    if outcome is Outcome.ACCEPTED or result.told:
        # Accepted: the details message was queued by dispatch. Taken a moment ago: the offer
        # message's closing edit ("taken by another mechanic"), on its way to this chat, is
        # the answer, with the toast; a reply would say it twice (two SMS, two bubbles).
        return
    replies = {
        Outcome.ALREADY_YOURS: text("accept_already_yours", ref=ref),
        Outcome.TAKEN: text("accept_taken", ref=ref),
        Outcome.CLOSED: text("accept_closed", ref=ref),
        Outcome.BUSY: text("accept_busy"),
        Outcome.NOT_OFFERED: text("accept_not_offered"),
        Outcome.NOT_FOUND: text("accept_not_offered"),
    }
    await ctx.say(replies[outcome])


async def _payout_setup(ctx: Context, mechanic: Mechanic) -> None:
    if mechanic.payouts_enabled:
        await ctx.say(text("payout_ready"))
        return
    if ctx.runtime.payments.provider != "stripe":
        # The offline checkout has no payout accounts: nothing failed, there is nothing to set
        # up here, and the mechanic is told so rather than "try again in a minute".
        await ctx.say(text("payouts_not_set_up"))
        return
    try:
        url = await start_onboarding(ctx.session, ctx.runtime.payments,  # type: ignore[arg-type]
                                     ctx.config, mechanic.id)
    except BillingError:
        log.exception("mechanic=%s payout onboarding link failed", mechanic.id)
        await ctx.say(text("payout_unavailable"))
        return
    await ctx.say(text("payout_setup"), link=Link(text("label", key="payout_setup"), url))


async def _hours(ctx: Context, mechanic: Mechanic, spec: str) -> None:
    if spec:
        try:
            await set_schedule(ctx.session, mechanic.id, parse_schedule(spec))
        except AvailabilityError as exc:
            await ctx.say(str(exc))
            return
    await ctx.session.flush()
    await ctx.say(text("schedule", windows=await schedule_of(ctx.session, mechanic.id),
                       timezone=mechanic.timezone))
