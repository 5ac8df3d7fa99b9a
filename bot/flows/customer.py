"""The customer intake: tier → vehicle → mileage → problem → photos → summary → payment link."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from functools import cache, lru_cache
from typing import Any

from bot.choices import match_choice
from bot.flows import paid
from bot.texts import text
from core.config import Plan
from core.context import Context
from core.intake import (
    MIN_PROBLEM_WORDS,
    attach_files,
    cancel_unpaid,
    count_files,
    parse_odometer,
    parse_vehicle,
    problem_is_described,
    start_intake,
)
from core.mechanics import redeem_invite
from core.messages import Button, Link
from core.models import Checkout
from core.payments import checkout_for
from core.store.records import CheckoutRecord, IntakeRecord
from core.vin import VinError
from core.vin import validate as validate_vin

log = logging.getLogger("autodoctor.flows.customer")

Step = Callable[[Context, IntakeRecord], Awaitable[None]]

# What people type for the commands that work at any step.
COMMANDS = {
    "help": "help", "?": "help", "menu": "help",
    "status": "status",
    "cancel": "cancel", "stop": "cancel",
    "start over": "restart", "restart": "restart", "start": "restart", "new": "restart",
    "reset": "restart",
}
_JOIN = re.compile(r"^\s*join\s+([A-Za-z0-9]{6,12})\s*$", re.IGNORECASE)
DONE_WORDS = {"done", "skip", "no", "none", "next", "continue", "that's all", "thats all"}


def _command(ctx: Context) -> str | None:
    action = ctx.inbound.action or ""
    if action.startswith("cmd:"):
        return COMMANDS.get(action[4:])
    said = ctx.text.strip().lower().lstrip("/").rstrip(".!")
    return COMMANDS.get(said)


@cache
def _label(key: str) -> str:
    # A button's label depends on nothing but its key (one language so far): rendered once.
    return text("label", key=key)


@cache
def _buttons(*buttons: tuple[str, str]) -> tuple[Button, ...]:
    """Buttons of (label key, payload): made once (they are immutable), not per message."""
    return tuple(Button(_label(key), payload) for key, payload in buttons)


def _said(ctx: Context) -> str:
    """What the person chose: a button payload, or what they typed."""
    return ctx.inbound.action or ctx.text


def _set(ctx: Context, **changes: Any) -> None:
    # JSON columns are not tracked in place: assign a new dict.
    ctx.conversation.update(data={**ctx.conversation.data, **changes})


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
    if intake is not None and intake.status == "paid":
        if await paid.handle(ctx, intake, command):
            return
        intake = None  # starting over after the paid request closed
    if command is not None:
        await COMMAND_HANDLERS[command](ctx, intake)
        return
    if intake is None or ctx.conversation.step == "start":
        await _begin(ctx)
        return
    if ctx.inbound.attachments and ctx.conversation.step != "photos":
        await _attach(ctx, intake)
        if not ctx.text:
            return
    await STEPS.get(ctx.conversation.step, _ask_again)(ctx, intake)


async def _current_intake(ctx: Context) -> IntakeRecord | None:
    intake = ctx.intake
    if intake is None or intake.status in ("cancelled", "expired"):
        return None
    return intake


def _go(ctx: Context, step: str) -> None:
    ctx.conversation.update(step=step)


# ------------------------------------------------------------------ commands


async def _help(ctx: Context, intake: IntakeRecord | None) -> None:
    await ctx.say(text("help"))
    if intake is not None:
        await _ask_again(ctx, intake)


async def _status(ctx: Context, intake: IntakeRecord | None) -> None:
    plan = ctx.config.plans.get(intake.plan) if intake and intake.plan else None
    await ctx.say(text("status", intake=intake, plan=plan,
                       step=_STEP_NAMES.get(ctx.conversation.step, ctx.conversation.step)))
    if intake is not None and intake.status == "awaiting_payment":
        await _remind_payment(ctx, intake)


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
    await _begin(ctx)


COMMAND_HANDLERS: dict[str, Callable[[Context, IntakeRecord | None], Awaitable[None]]] = {
    "help": _help, "status": _status, "cancel": _cancel, "restart": _restart,
}


# ------------------------------------------------------------------ steps


def _plan_buttons(ctx: Context) -> tuple[Button, ...]:
    return _buttons_for_plans(tuple(ctx.config.plans.items()))


@lru_cache(maxsize=16)
def _buttons_for_plans(plans: tuple[tuple[str, Plan], ...]) -> tuple[Button, ...]:
    """A configuration's plan buttons, made once (plans are frozen: their values are the key)."""
    return tuple(Button(text("plan_label", plan=plan), f"plan:{code}") for code, plan in plans)


async def _begin(ctx: Context) -> None:
    intake = await start_intake(ctx.uow, ctx.identity.customer_id or 0, ctx.identity.channel,
                                ctx.now)
    ctx.person.intake = intake
    # "files": how many are attached to this intake, kept as they are attached (a new intake
    # has none), so the summary needs no count query.
    ctx.conversation.update(intake_id=intake.id, data={"files": 0}, step="plan")
    await ctx.say(text("greeting") + "\n" + text("plan_choice", plans=ctx.config.plans),
                  _plan_buttons(ctx))


async def _step_plan(ctx: Context, intake: IntakeRecord) -> None:
    choice = match_choice(_said(ctx), _plan_buttons(ctx))
    if choice is None:
        await ctx.say(text("plan_not_understood", plans=ctx.config.plans), _plan_buttons(ctx))
        return
    intake.update(plan=choice.payload.split(":", 1)[1], updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    await _ask_vehicle(ctx, intake)


async def _ask_vehicle(ctx: Context, intake: IntakeRecord) -> None:
    _go(ctx, "vehicle")
    assert intake.plan is not None
    await ctx.say(text("ask_vin", plan=ctx.config.plan(intake.plan)),
                  _buttons(("no_vin", "vehicle:no_vin")))


async def _step_vehicle(ctx: Context, intake: IntakeRecord) -> None:
    said = _said(ctx).strip()
    if said == "vehicle:no_vin" or said.lower() in ("no vin", "novin", "no", "skip",
                                                     "don't know", "dont know"):
        _go(ctx, "ymm")
        await _ask_ymm(ctx, intake)
        return
    vehicle = parse_vehicle(said, max_year=ctx.now.year + 1) if " " in said else None
    if vehicle is not None:
        # They gave year/make/model straight away; that's an answer too.
        await _set_vehicle(ctx, intake, vehicle.year, vehicle.make, vehicle.model, vin=None)
        return
    try:
        info = validate_vin(said, current_year=ctx.now.year)
    except VinError as exc:
        await ctx.say(text("vin_invalid", reason=str(exc)),
                      _buttons(("no_vin", "vehicle:no_vin")))
        return
    await ctx.say(text("vin_ok", info=info))
    await _set_vehicle(ctx, intake, info.year, info.make, None, vin=info.vin)


async def _set_vehicle(ctx: Context, intake: IntakeRecord, year: int | None, make: str | None,
                       model: str | None, *, vin: str | None) -> None:
    intake.update(vin=vin, vehicle_year=year, vehicle_make=make, vehicle_model=model,
                  updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    _go(ctx, "odometer")
    await ctx.say(text("ask_odometer"), _buttons(("skip", "odometer:skip")))


async def _step_ymm(ctx: Context, intake: IntakeRecord) -> None:
    vehicle = parse_vehicle(ctx.text, max_year=ctx.now.year + 1)
    if vehicle is None:
        await ctx.say(text("ymm_invalid", max_year=ctx.now.year + 1))
        return
    await _set_vehicle(ctx, intake, vehicle.year, vehicle.make, vehicle.model, vin=None)


async def _step_odometer(ctx: Context, intake: IntakeRecord) -> None:
    said = _said(ctx).strip()
    if said == "odometer:skip" or said.lower() in DONE_WORDS | {"don't know", "dont know"}:
        intake.update(odometer=None, odometer_unit=None)
    else:
        reading = parse_odometer(said)
        if reading is None:
            await ctx.say(text("odometer_invalid"), _buttons(("skip", "odometer:skip")))
            return
        intake.update(odometer=reading[0], odometer_unit=reading[1])
    intake.update(updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    _go(ctx, "problem")
    await ctx.say(text("ask_problem"))


async def _step_problem(ctx: Context, intake: IntakeRecord) -> None:
    if not problem_is_described(ctx.text):
        await ctx.say(text("problem_too_short", min_words=MIN_PROBLEM_WORDS))
        return
    intake.update(problem=ctx.text.strip(), updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    _go(ctx, "photos")
    await ctx.say(text("ask_photos"), _buttons(("skip", "photos:done")))


async def _attach(ctx: Context, intake: IntakeRecord) -> int:
    limit = ctx.config.uploads.max_files_per_intake
    result = await attach_files(ctx.session, intake, ctx.identity, ctx.inbound.attachments,
                                limit)
    _set(ctx, files=result.total)
    if result.refused and result.total >= limit:
        await ctx.say(text("photos_full", max=limit), _buttons(("done", "photos:done")))
    elif result.refused:
        await ctx.say(text("attachment_refused"))
    if result.attached:
        await ctx.say(text("photos_received", count=result.total, max=limit),
                      _buttons(("done", "photos:done")))
    return result.attached


async def _step_photos(ctx: Context, intake: IntakeRecord) -> None:
    if ctx.inbound.attachments:
        await _attach(ctx, intake)
        if not ctx.text:
            return
    said = _said(ctx).strip().lower()
    if said == "photos:done" or said in DONE_WORDS:
        await _summary(ctx, intake)
        return
    await ctx.say(text("photos_expected"), _buttons(("done", "photos:done")))


def _summary_buttons() -> tuple[Button, ...]:
    return _buttons(("confirm", "confirm"), ("edit_plan", "edit:plan"),
                    ("edit_vehicle", "edit:vehicle"), ("edit_odometer", "edit:odometer"),
                    ("edit_problem", "edit:problem"), ("edit_photos", "edit:photos"))


async def _summary(ctx: Context, intake: IntakeRecord) -> None:
    _go(ctx, "summary")
    _set(ctx, editing=False)
    assert intake.plan is not None
    files = ctx.conversation.data.get("files")
    if not isinstance(files, int):  # a conversation from before the count was kept
        files = await count_files(ctx.session, intake)
    await ctx.say(text("summary", intake=intake, plan=ctx.config.plan(intake.plan),
                       files=files),
                  _summary_buttons())


async def _back_to_summary(ctx: Context, intake: IntakeRecord) -> bool:
    """After correcting one field from the summary, go straight back to it."""
    if not ctx.conversation.data.get("editing"):
        return False
    await _summary(ctx, intake)
    return True


_EDITS: dict[str, Step] = {}


async def _step_summary(ctx: Context, intake: IntakeRecord) -> None:
    said = _said(ctx).strip()
    if said.lower() in ("yes", "ok", "okay", "pay", "confirm", "correct", "y"):
        said = "confirm"
    choice = match_choice(said, _summary_buttons())
    if choice is None:
        await ctx.say(text("summary_not_understood"), _summary_buttons())
        return
    if choice.payload == "confirm":
        await _confirm(ctx, intake)
        return
    _set(ctx, editing=True)
    await _EDITS[choice.payload.split(":", 1)[1]](ctx, intake)


async def _edit_plan(ctx: Context, intake: IntakeRecord) -> None:
    _go(ctx, "plan")
    await ctx.say(text("plan_choice", plans=ctx.config.plans), _plan_buttons(ctx))


async def _edit_odometer(ctx: Context, intake: IntakeRecord) -> None:
    _go(ctx, "odometer")
    await ctx.say(text("ask_odometer"), _buttons(("skip", "odometer:skip")))


async def _edit_problem(ctx: Context, intake: IntakeRecord) -> None:
    _go(ctx, "problem")
    await ctx.say(text("ask_problem"))


async def _edit_photos(ctx: Context, intake: IntakeRecord) -> None:
    _go(ctx, "photos")
    await ctx.say(text("ask_photos"), _buttons(("done", "photos:done")))


_EDITS.update(plan=_edit_plan, vehicle=_ask_vehicle, odometer=_edit_odometer,
              problem=_edit_problem, photos=_edit_photos)


async def _confirm(ctx: Context, intake: IntakeRecord) -> None:
    assert intake.plan is not None
    plan = ctx.config.plan(intake.plan)
    try:
        checkout = await checkout_for(ctx.uow, ctx.runtime.payments, ctx.config, intake,
                                      ctx.now)
    except Exception:
        # The provider is down: keep the intake as it is so the customer can simply retry.
        log.exception("intake=%s checkout could not be created", intake.id)
        await ctx.say(text("payment_unavailable"), _summary_buttons())
        return
    intake.update(status="awaiting_payment", submitted_at=ctx.now, updated_at=ctx.now)
    _go(ctx, "awaiting_payment")
    log.info("intake=%s checkout=%s awaiting payment", intake.id, checkout.ref)
    await ctx.say(text("payment_link", plan=plan), link=_pay_link(checkout, plan))


def _pay_link(checkout: Checkout | CheckoutRecord, plan: Any) -> Link:
    assert checkout.url is not None
    return Link(text("pay_label", plan=plan), checkout.url)


async def _remind_payment(ctx: Context, intake: IntakeRecord) -> None:
    assert intake.plan is not None
    plan = ctx.config.plan(intake.plan)
    checkout = await checkout_for(ctx.uow, ctx.runtime.payments, ctx.config, intake,
                                  ctx.now)
    await ctx.say(text("waiting_for_payment", plan=plan), link=_pay_link(checkout, plan))


async def _step_awaiting_payment(ctx: Context, intake: IntakeRecord) -> None:
    if intake.status == "awaiting_payment":
        await _remind_payment(ctx, intake)
    else:
        await _status(ctx, intake)


async def _ask_again(ctx: Context, intake: IntakeRecord) -> None:
    """Repeat the question of the current step (after help, or an unknown step)."""
    ask = _QUESTIONS.get(ctx.conversation.step)
    if ask is not None:
        await ask(ctx, intake)


async def _ask_ymm(ctx: Context, intake: IntakeRecord) -> None:
    await ctx.say(text("ask_ymm"))


# The question each step asks (the same as when editing that field from the summary).
_QUESTIONS: dict[str, Step] = {**_EDITS, "ymm": _ask_ymm, "summary": _summary,
                               "awaiting_payment": _step_awaiting_payment}

STEPS: dict[str, Step] = {
    "plan": _step_plan, "vehicle": _step_vehicle, "ymm": _step_ymm,
    "odometer": _step_odometer, "problem": _step_problem, "photos": _step_photos,
    "summary": _step_summary, "awaiting_payment": _step_awaiting_payment,
}

_STEP_NAMES = {"plan": "choosing a tier", "vehicle": "your vehicle", "ymm": "your vehicle",
               "odometer": "the mileage", "problem": "the problem description",
               "photos": "photos", "summary": "the summary"}
