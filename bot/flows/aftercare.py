"""A customer after their session: rating (buttons, or a digit where there are none), an
optional review, and their history."""

from __future__ import annotations

import logging

from bot.texts import text
from core.aftercare import customer_history, rate, rateable
from core.consultations import record_url
from core.context import Context

log = logging.getLogger("autodoctor.flows.aftercare")

MAX_REVIEW_CHARS = 2000


async def handle(ctx: Context, *, session_ended: bool) -> bool:
    """Answers a rating tap, a rating digit after a session that ended, or the review that
    follows a rating; False when the message is none of these."""
    action = ctx.inbound.action or ""
    said = ctx.text.strip()
    if action.startswith("rate:"):
        _, consultation_id, stars = (action.split(":") + ["", ""])[:3]
        if not (consultation_id.isdigit() and stars in ("1", "2", "3", "4", "5")):
            await ctx.say(text("rating_closed"))
            return True
        await _rate(ctx, int(stars), int(consultation_id))
        return True
    reviewing = ctx.conversation.step == "review"
    if (session_ended or reviewing) and said in ("1", "2", "3", "4", "5"):
        await _rate(ctx, int(said), None)
        return True
    review_for = ctx.conversation.data.get("review_for")
    if reviewing and isinstance(review_for, int) and said and not action:
        consultation = await rateable(ctx.session, ctx.runtime, ctx.identity.customer_id or 0,
                                      ctx.now, review_for)
        ctx.conversation.update(step="done", data={})
        if consultation is None:
            return False
        consultation.review = said[:MAX_REVIEW_CHARS]
        await ctx.say(text("review_thanks"))
        return True
    return False


async def _rate(ctx: Context, stars: int, consultation_id: int | None) -> None:
    # Only the customer's own session, and only while ratings may still change.
    consultation = await rateable(ctx.session, ctx.runtime, ctx.identity.customer_id or 0,
                                  ctx.now, consultation_id)
    if consultation is None:
        await ctx.say(text("rating_closed"))
        return
    changed = rate(consultation, stars, ctx.now)
    ctx.conversation.update(step="review", data={**ctx.conversation.data,
                                                 "review_for": consultation.id})
    ctx.toast = f"{stars}/5"
    await ctx.say(text("rated", stars=stars, changed=changed))


async def history(ctx: Context) -> None:
    sessions = [{"consultation": s.consultation, "ref": s.ref, "other_name": s.other_name,
                 "plan": ctx.config.plan(s.consultation.plan).name,
                 "record": record_url(ctx.config, s.consultation, ctx.now)
                 if s.consultation.status == "completed" else None}
                for s in await customer_history(ctx.session, ctx.identity.customer_id or 0)]
    await ctx.say(text("customer_history", sessions=sessions))
