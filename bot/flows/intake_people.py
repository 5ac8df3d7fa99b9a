"""The intake's steps about the person rather than the car: their first name (asked unless
their channel gave a usable one) and their agreement to the terms before the payment link."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from sqlalchemy import case, func, select

from bot.texts import text
from core.context import Context
from core.messages import Button, Link
from core.models import TermsAcceptance, table
from core.names import clean_name, first_name_of
from core.store.records import CustomerName, IdentityName, IntakeRecord, TermsAcceptanceRecord

Step = Callable[[Context, IntakeRecord], Awaitable[None]]

# What agreeing sounds like when typed (the button's payload names the version agreed to).
AGREE_WORDS = frozenset({"agree", "i agree", "agreed", "i accept", "accept", "yes i agree",
                         "yes, i agree"})
_TERMS_PAYLOAD = "terms:agree:"
_ADDRESS_CHARS = 64  # terms_acceptances.client_address


# ------------------------------------------------------------------ the first name


def known_name(ctx: Context) -> str | None:
    """The first name this chat already has: given in an earlier intake, or the channel's
    profile (Telegram's first name) when it reads as a name."""
    return first_name_of(ctx.identity.display_name)


async def ask_name(ctx: Context, intake: IntakeRecord) -> None:
    ctx.conversation.update(step="name")
    assert intake.plan is not None
    await ctx.say(text("ask_name", plan=ctx.config.plan(intake.plan),
                       editing=bool(ctx.conversation.data.get("editing"))))


async def step_name(ctx: Context, intake: IntakeRecord, then: Step) -> None:
    """Their answer to "what's your first name?": kept when it is one, asked again if not."""
    name = clean_name(ctx.text)
    if name is None:
        await ctx.say(text("name_invalid"))
        return
    set_name(ctx, name)
    await then(ctx, intake)


def set_name(ctx: Context, name: str) -> None:
    """The name on this chat and on the customer, written with the transaction; the rest of
    this message's handling sees it too."""
    identity = ctx.identity
    ctx.uow.track(IdentityName(identity.id, identity.display_name)).update(display_name=name)
    if identity.customer_id is not None:
        ctx.uow.track(CustomerName(identity.customer_id, None)).update(display_name=name)
    ctx.person.identity = replace(identity, display_name=name)


# ------------------------------------------------------------------ the terms


def terms_buttons(ctx: Context) -> tuple[Button, ...]:
    return (Button(text("label", key="agree"), _TERMS_PAYLOAD + ctx.config.terms.version),)


async def terms_standing(ctx: Context) -> tuple[bool, bool]:
    """Whether this customer accepted the current version of the terms (on any of their
    chats), and whether they accepted any version: one look-up."""
    customer_id, version = ctx.identity.customer_id, ctx.config.terms.version
    if any(row.customer_id == customer_id and row.version == version
           for row in ctx.uow.new_rows(TermsAcceptanceRecord)):
        return True, True
    if customer_id is None:
        return False, False
    current, count = (await ctx.session.execute(
        select(func.max(case((TermsAcceptance.version == version, 1), else_=0)), func.count())
        .where(TermsAcceptance.customer_id == customer_id))).one()
    return bool(current), bool(count)


async def confirm_after_terms(ctx: Context, intake: IntakeRecord, confirm: Step) -> None:
    """"Confirm and pay": the payment link (`confirm`) once the current terms are accepted;
    until then, the terms to agree to."""
    accepted, accepted_before = await terms_standing(ctx)
    if accepted:
        await confirm(ctx, intake)
    else:
        await ask_terms(ctx, intake, changed=accepted_before)


async def ask_terms(ctx: Context, intake: IntakeRecord, *, changed: bool | None = None) -> None:
    """The terms, with "I agree"; `changed`: they agreed to an earlier version."""
    ctx.conversation.update(step="terms")
    if changed is None:
        changed = (await terms_standing(ctx))[1]
    url = ctx.config.terms_url
    await ctx.say(text("terms_ask", url=url, changed=changed), terms_buttons(ctx),
                  link=Link(text("label", key="read_terms"), url))


async def step_terms(ctx: Context, intake: IntakeRecord, then: Step) -> None:
    """"I agree" (the button for the version shown, or typed): recorded, then `then`."""
    said = (ctx.inbound.action or ctx.text).strip()
    version = ctx.config.terms.version
    if said == _TERMS_PAYLOAD + version or said.lower().rstrip(".!") in AGREE_WORDS:
        await record_acceptance(ctx)
        await then(ctx, intake)
        return
    if said.startswith(_TERMS_PAYLOAD):
        # A button for a version the terms have moved on from: show the current ones.
        await ask_terms(ctx, intake)
        return
    await ctx.say(text("terms_not_understood", url=ctx.config.terms_url), terms_buttons(ctx))


async def record_acceptance(ctx: Context) -> None:
    """The current version accepted now, on this chat's channel, and on the web from the
    client's address."""
    identity = ctx.identity
    assert identity.customer_id is not None
    address = ctx.inbound.client_address if identity.channel == "web" else None
    uow = ctx.uow
    uow.add(TermsAcceptanceRecord(
        await uow.new_id(table(TermsAcceptance)), identity.customer_id, identity.id,
        ctx.config.terms.version, identity.channel,
        address[:_ADDRESS_CHARS] if address else None, ctx.now))
