"""The intake's steps: tier → first name → vehicle → mileage → problem → photos → summary →
terms → payment link, each asked and answered (the name and the terms: intake_people)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import cache, lru_cache
from typing import Any

from bot.choices import match_choice
from bot.flows.intake_people import (
    ask_name,
    ask_terms,
    confirm_after_terms,
    known_name,
    step_name,
    step_terms,
)
from bot.texts import text
from core.config import Config, Plan
from core.context import Context
from core.intake import (
    MIN_PROBLEM_WORDS,
    attach_files,
    count_files,
    parse_odometer,
    parse_vehicle,
    problem_is_described,
    start_intake,
)
from core.messages import Button, Link
from core.models import Checkout
from core.payments import checkout_for
from core.store.records import CheckoutRecord, IntakeRecord
from core.vin import VinError
from core.vin import validate as validate_vin

log = logging.getLogger("autodoctor.flows.customer")

Step = Callable[[Context, IntakeRecord], Awaitable[None]]

DONE_WORDS = {"done", "skip", "no", "none", "next", "continue", "that's all", "thats all"}


@cache
def label(key: str) -> str:
    # A button's label depends on nothing but its key (one language so far): rendered once.
    return text("label", key=key)


@cache
def buttons(*keys_and_payloads: tuple[str, str]) -> tuple[Button, ...]:
    """Buttons of (label key, payload): made once (they are immutable), not per message."""
    return tuple(Button(label(key), payload) for key, payload in keys_and_payloads)


def what_was_said(ctx: Context) -> str:
    """What the person chose: a button payload, or what they typed."""
    return ctx.inbound.action or ctx.text


def set_data(ctx: Context, **changes: Any) -> None:
    # JSON columns are not tracked in place: assign a new dict.
    ctx.conversation.update(data={**ctx.conversation.data, **changes})


def go(ctx: Context, step: str) -> None:
    ctx.conversation.update(step=step)


async def show_status(ctx: Context, intake: IntakeRecord | None) -> None:
    plan = ctx.config.plans.get(intake.plan) if intake and intake.plan else None
    await ctx.say(text("status", intake=intake, plan=plan,
                       step=_STEP_NAMES.get(ctx.conversation.step, ctx.conversation.step)))
    if intake is not None and intake.status == "awaiting_payment":
        await remind_payment(ctx, intake)


# ------------------------------------------------------------------ steps


def _plan_buttons(ctx: Context) -> tuple[Button, ...]:
    return _buttons_for_plans(tuple(ctx.config.plans.items()))


@lru_cache(maxsize=16)
def _buttons_for_plans(plans: tuple[tuple[str, Plan], ...]) -> tuple[Button, ...]:
    """A configuration's plan buttons, made once (plans are frozen: their values are the key)."""
    return tuple(Button(text("plan_label", plan=plan), f"plan:{code}") for code, plan in plans)


def greeting(config: Config, video_off: bool) -> tuple[str, tuple[Button, ...]]:
    """The first words to a new person, with the tiers to choose from (and, without LiveKit,
    that the video tiers are held as a text chat)."""
    # The tiers are the buttons (a numbered list where a channel has none): not listed twice.
    return (text("greeting", video_off=video_off),
            _buttons_for_plans(tuple(config.plans.items())))


async def begin(ctx: Context) -> None:
    intake = await start_intake(ctx.uow, ctx.identity.customer_id or 0, ctx.identity.channel,
                                ctx.now)
    ctx.person.intake = intake
    # "files": how many are attached to this intake, kept as they are attached (a new intake
    # has none), so the summary needs no count query.
    ctx.conversation.update(intake_id=intake.id, data={"files": 0}, step="plan")
    if match_choice(what_was_said(ctx), _plan_buttons(ctx)) is not None:
        # A tier chosen from the greeting a new widget visitor saw before they had a record.
        await _step_plan(ctx, intake)
        return
    words, choices = greeting(ctx.config, _video_off(ctx))
    await ctx.say(words, choices)


def _video_off(ctx: Context) -> bool:
    """No LiveKit: the video tiers are held as chat sessions, and say so before payment."""
    return ctx.runtime.rooms is None


async def _step_plan(ctx: Context, intake: IntakeRecord) -> None:
    choice = match_choice(what_was_said(ctx), _plan_buttons(ctx))
    if choice is None:
        await ctx.say(text("plan_not_understood", plans=ctx.config.plans),
                      _plan_buttons(ctx))
        return
    intake.update(plan=choice.payload.split(":", 1)[1], updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    if known_name(ctx) is None:
        await ask_name(ctx, intake)
        return
    await _ask_vehicle(ctx, intake)


async def _after_name(ctx: Context, intake: IntakeRecord) -> None:
    if not await _back_to_summary(ctx, intake):
        await _ask_vehicle(ctx, intake)


async def _step_name(ctx: Context, intake: IntakeRecord) -> None:
    await step_name(ctx, intake, _after_name)


async def _ask_vehicle(ctx: Context, intake: IntakeRecord) -> None:
    # Just after the name: thanks for it, rather than for the tier again.
    name = known_name(ctx) if ctx.conversation.step == "name" else None
    go(ctx, "vehicle")
    assert intake.plan is not None
    await ctx.say(text("ask_vin", plan=ctx.config.plan(intake.plan), name=name),
                  buttons(("no_vin", "vehicle:no_vin")))


async def _step_vehicle(ctx: Context, intake: IntakeRecord) -> None:
    said = what_was_said(ctx).strip()
    if said == "vehicle:no_vin" or said.lower() in ("no vin", "novin", "no", "skip",
                                                     "don't know", "dont know"):
        go(ctx, "ymm")
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
                      buttons(("no_vin", "vehicle:no_vin")))
        return
    await ctx.say(text("vin_ok", info=info))
    await _set_vehicle(ctx, intake, info.year, info.make, None, vin=info.vin)


async def _set_vehicle(ctx: Context, intake: IntakeRecord, year: int | None, make: str | None,
                       model: str | None, *, vin: str | None) -> None:
    intake.update(vin=vin, vehicle_year=year, vehicle_make=make, vehicle_model=model,
                  updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    go(ctx, "odometer")
    await ctx.say(text("ask_odometer"), buttons(("skip", "odometer:skip")))


async def _step_ymm(ctx: Context, intake: IntakeRecord) -> None:
    vehicle = parse_vehicle(ctx.text, max_year=ctx.now.year + 1)
    if vehicle is None:
        await ctx.say(text("ymm_invalid", max_year=ctx.now.year + 1))
        return
    await _set_vehicle(ctx, intake, vehicle.year, vehicle.make, vehicle.model, vin=None)


async def _step_odometer(ctx: Context, intake: IntakeRecord) -> None:
    said = what_was_said(ctx).strip()
    if said == "odometer:skip" or said.lower() in DONE_WORDS | {"don't know", "dont know"}:
        intake.update(odometer=None, odometer_unit=None)
    else:
        reading = parse_odometer(said)
        if reading is None:
            await ctx.say(text("odometer_invalid"), buttons(("skip", "odometer:skip")))
            return
        intake.update(odometer=reading[0], odometer_unit=reading[1])
    intake.update(updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    go(ctx, "problem")
    await ctx.say(text("ask_problem"))


async def _step_problem(ctx: Context, intake: IntakeRecord) -> None:
    if not problem_is_described(ctx.text):
        await ctx.say(text("problem_too_short", min_words=MIN_PROBLEM_WORDS))
        return
    intake.update(problem=ctx.text.strip(), updated_at=ctx.now)
    if await _back_to_summary(ctx, intake):
        return
    go(ctx, "photos")
    await ctx.say(text("ask_photos"), buttons(("skip", "photos:done")))


async def attach(ctx: Context, intake: IntakeRecord) -> int:
    limit = ctx.config.uploads.max_files_per_intake
    result = await attach_files(ctx.session, intake, ctx.identity, ctx.inbound.attachments,
                                limit)
    set_data(ctx, files=result.total)
    if result.refused and result.total >= limit:
        await ctx.say(text("photos_full", max=limit), buttons(("done", "photos:done")))
    elif result.refused:
        await ctx.say(text("attachment_refused"))
    if result.attached:
        await ctx.say(text("photos_received", count=result.total, max=limit),
                      buttons(("done", "photos:done")))
    return result.attached


async def _step_photos(ctx: Context, intake: IntakeRecord) -> None:
    if ctx.inbound.attachments:
        await attach(ctx, intake)
        if not ctx.text:
            return
    said = what_was_said(ctx).strip().lower()
    if said == "photos:done" or said in DONE_WORDS:
        await _summary(ctx, intake)
        return
    await ctx.say(text("photos_expected"), buttons(("done", "photos:done")))


def summary_buttons() -> tuple[Button, ...]:
    return buttons(("confirm", "confirm"), ("edit_plan", "edit:plan"),
                    ("edit_vehicle", "edit:vehicle"), ("edit_odometer", "edit:odometer"),
                    ("edit_problem", "edit:problem"), ("edit_photos", "edit:photos"),
                    ("edit_name", "edit:name"))


async def _summary(ctx: Context, intake: IntakeRecord) -> None:
    go(ctx, "summary")
    set_data(ctx, editing=False)
    assert intake.plan is not None
    files = ctx.conversation.data.get("files")
    if not isinstance(files, int):  # a conversation from before the count was kept
        files = await count_files(ctx.session, intake)
    await ctx.say(text("summary", intake=intake, plan=ctx.config.plan(intake.plan),
                       files=files, video_off=_video_off(ctx), name=known_name(ctx)),
                  summary_buttons())


async def _back_to_summary(ctx: Context, intake: IntakeRecord) -> bool:
    """After correcting one field from the summary, go straight back to it."""
    if not ctx.conversation.data.get("editing"):
        return False
    await _summary(ctx, intake)
    return True


_EDITS: dict[str, Step] = {}


async def _step_summary(ctx: Context, intake: IntakeRecord) -> None:
    said = what_was_said(ctx).strip()
    if said.lower() in ("yes", "ok", "okay", "pay", "confirm", "correct", "y"):
        said = "confirm"
    choice = match_choice(said, summary_buttons())
    if choice is None:
        await ctx.say(text("summary_not_understood"), summary_buttons())
        return
    if choice.payload == "confirm":
        await confirm_after_terms(ctx, intake, _confirm)
        return
    set_data(ctx, editing=True)
    await _EDITS[choice.payload.split(":", 1)[1]](ctx, intake)


async def _edit_plan(ctx: Context, intake: IntakeRecord) -> None:
    go(ctx, "plan")
    await ctx.say(text("plan_ask", video_off=_video_off(ctx)), _plan_buttons(ctx))


async def _edit_odometer(ctx: Context, intake: IntakeRecord) -> None:
    go(ctx, "odometer")
    await ctx.say(text("ask_odometer"), buttons(("skip", "odometer:skip")))


async def _edit_problem(ctx: Context, intake: IntakeRecord) -> None:
    go(ctx, "problem")
    await ctx.say(text("ask_problem"))


async def _edit_photos(ctx: Context, intake: IntakeRecord) -> None:
    go(ctx, "photos")
    await ctx.say(text("ask_photos"), buttons(("done", "photos:done")))


_EDITS.update(plan=_edit_plan, vehicle=_ask_vehicle, odometer=_edit_odometer,
              problem=_edit_problem, photos=_edit_photos, name=ask_name)


async def _step_terms(ctx: Context, intake: IntakeRecord) -> None:
    await step_terms(ctx, intake, _agreed)


async def _agreed(ctx: Context, intake: IntakeRecord) -> None:
    go(ctx, "summary")  # if the link cannot be made now, "Confirm and pay" tries again
    await _confirm(ctx, intake)


async def _confirm(ctx: Context, intake: IntakeRecord) -> None:
    assert intake.plan is not None
    plan = ctx.config.plan(intake.plan)
    try:
        checkout = await checkout_for(ctx.uow, ctx.runtime.payments, ctx.config, intake,
                                      ctx.now)
    except Exception:
        # The provider is down: keep the intake as it is so the customer can simply retry.
        log.exception("intake=%s checkout could not be created", intake.id)
        await ctx.say(text("payment_unavailable"), summary_buttons())
        return
    intake.update(status="awaiting_payment", submitted_at=ctx.now, updated_at=ctx.now)
    go(ctx, "awaiting_payment")
    log.info("intake=%s checkout=%s awaiting payment", intake.id, checkout.ref)
    await ctx.say(text("payment_link", plan=plan), link=_pay_link(checkout, plan))


def _pay_link(checkout: Checkout | CheckoutRecord, plan: Any) -> Link:
    assert checkout.url is not None
    return Link(text("pay_label", plan=plan), checkout.url)


async def remind_payment(ctx: Context, intake: IntakeRecord) -> None:
    assert intake.plan is not None
    plan = ctx.config.plan(intake.plan)
    checkout = await checkout_for(ctx.uow, ctx.runtime.payments, ctx.config, intake,
                                  ctx.now)
    await ctx.say(text("waiting_for_payment", plan=plan), link=_pay_link(checkout, plan))


async def _step_awaiting_payment(ctx: Context, intake: IntakeRecord) -> None:
    if intake.status == "awaiting_payment":
        await remind_payment(ctx, intake)
    else:
        await show_status(ctx, intake)


async def ask_again(ctx: Context, intake: IntakeRecord) -> None:
    """Repeat the question of the current step (after help, or an unknown step)."""
    ask = _QUESTIONS.get(ctx.conversation.step)
    if ask is not None:
        await ask(ctx, intake)


async def _ask_ymm(ctx: Context, intake: IntakeRecord) -> None:
    await ctx.say(text("ask_ymm"))


# The question each step asks (the same as when editing that field from the summary).
_QUESTIONS: dict[str, Step] = {**_EDITS, "ymm": _ask_ymm, "summary": _summary,
                               "terms": ask_terms, "awaiting_payment": _step_awaiting_payment}

STEPS: dict[str, Step] = {
    "plan": _step_plan, "vehicle": _step_vehicle, "ymm": _step_ymm,
    "odometer": _step_odometer, "problem": _step_problem, "photos": _step_photos,
    "summary": _step_summary, "awaiting_payment": _step_awaiting_payment,
    "name": _step_name, "terms": _step_terms,
}

_STEP_NAMES = {"plan": "choosing a tier", "vehicle": "your vehicle", "ymm": "your vehicle",
               "odometer": "the mileage", "problem": "the problem description",
               "photos": "photos", "summary": "the summary", "name": "your name",
               "terms": "the terms"}
