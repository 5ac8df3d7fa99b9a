"""The unattended queue: requests nobody took in time, assigning one to a mechanic (race-safe:
dispatch.assign), and cancelling one with a full refund."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_web.accounts import actor, audit
from admin_web.web import ADMIN, PAGE_ROWS, choice, now_of, render, runtime_of, see_other, url
from core import dispatch
from core.config import Plan
from core.dispatch import Candidate, Outcome
from core.models import File, Intake, Mechanic, SessionRequest
from core.runtime import Runtime
from core.sweeps import refund_due

log = logging.getLogger("autodoctor.admin")

SHOWN = ("unattended", "expired")


@dataclass(frozen=True)
class QueueRow:
    request: SessionRequest
    intake: Intake
    plan: Plan
    photos: list[File]
    candidates: list[Candidate]


async def queue_rows(session: AsyncSession, runtime: Runtime, status: str,
                     now: datetime) -> list[QueueRow]:
    """Requests in this status, newest first, each with the mechanics it could go to."""
    found = (await session.execute(
        select(SessionRequest, Intake).join(Intake, Intake.id == SessionRequest.intake_id)
        .where(SessionRequest.status == status)
        .order_by(SessionRequest.paid_at.desc(), SessionRequest.id.desc())
        .limit(PAGE_ROWS))).all()
    photos: dict[int, list[File]] = {}
    if found:
        for record in (await session.scalars(select(File).where(
                File.intake_id.in_({intake.id for _r, intake in found})).order_by(File.id))):
            assert record.intake_id is not None
            photos.setdefault(record.intake_id, []).append(record)
    choices: dict[str, list[Candidate]] = {}
    rows = []
    for request, intake in found:
        if status == "unattended" and request.plan not in choices:
            choices[request.plan] = await dispatch.candidates(session, runtime, request.plan,
                                                              now)
        rows.append(QueueRow(request, intake, runtime.config.plan(request.plan),
                             photos.get(intake.id, []), choices.get(request.plan, [])))
    return rows


async def _page(request: web.Request, template: str) -> web.Response:
    status = choice(request.query.get("show"), SHOWN) or "unattended"
    runtime = runtime_of(request)
    async with runtime.readers() as session:
        rows = await queue_rows(session, runtime, status, now_of(request))
    return render(request, template, rows=rows, show=status, shown=SHOWN)


async def unattended(request: web.Request) -> web.Response:
    return await _page(request, "unattended.html")


async def unattended_rows(request: web.Request) -> web.Response:
    """The queue's table alone: the page reloads it every few seconds."""
    return await _page(request, "unattended_rows.html")


def _back(request: web.Request) -> str:
    return url(request, "unattended")


async def assign(request: web.Request) -> web.Response:
    """Give the request to the chosen mechanic; one winner if a mechanic accepts meanwhile."""
    ref = request.match_info["ref"].upper()[:16]
    form = await request.post()
    chosen = str(form.get("mechanic", ""))
    if not chosen.isdigit():
        return see_other(request, _back(request), "Choose a mechanic first.", "error")
    mechanic_id = int(chosen)
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    async with runtime.transaction() as uow:
        session = uow.session
        found = await session.scalar(select(SessionRequest).where(SessionRequest.ref == ref))
        mechanic = await session.get(Mechanic, mechanic_id)
        if found is None or mechanic is None:
            return see_other(request, _back(request), f"No request {ref} or mechanic "
                             f"{mechanic_id}.", "error")
        if found.status in dispatch.OPEN_STATUSES:
            choices = await dispatch.candidates(session, runtime, found.plan, now)
            candidate = next((c for c in choices if c.mechanic.id == mechanic_id), None)
            if candidate is None or not candidate.eligible:
                why = candidate.reason if candidate is not None else "inactive"
                audit(session, actor(admin), "assign_refused", ref, now,
                      mechanic_id=mechanic_id, reason=why)
                return see_other(request, _back(request),
                                 f"{mechanic.name} can't take {ref}: {why}.", "error")
        result = await dispatch.assign(uow, runtime, ref, mechanic_id, actor(admin), now)
        if result.outcome is not Outcome.ACCEPTED:
            audit(session, actor(admin), "assign_failed", ref, now, mechanic_id=mechanic_id,
                  outcome=result.outcome.value)
        winner = None
        if result.outcome is Outcome.TAKEN and result.request is not None \
                and result.request.mechanic_id is not None:
            winner = await session.get(Mechanic, result.request.mechanic_id)
    log.info("request=%s assign by admin=%s to mechanic=%s: %s", ref, admin.id, mechanic_id,
             result.outcome.value)
    return see_other(request, _back(request),
                     *_assign_notice(result.outcome, ref, mechanic.name, winner))


def _assign_notice(outcome: Outcome, ref: str, name: str,
                   winner: Mechanic | None) -> tuple[str, str]:
    if outcome is Outcome.ACCEPTED:
        return f"{ref} is now {name}'s: both have been told.", "ok"
    if outcome is Outcome.ALREADY_YOURS:
        return f"{ref} is already with {name}: nothing changed.", "ok"
    if outcome is Outcome.TAKEN:
        who = winner.name if winner is not None else "another mechanic"
        return (f"Too late: {ref} was accepted by {who} a moment ago. Nothing changed, and "
                f"{name} was not told anything.", "error")
    if outcome is Outcome.BUSY:
        return (f"{name} took another job a moment ago, so {ref} was not given to them. "
                "Choose someone else.", "error")
    if outcome is Outcome.CLOSED:
        return f"{ref} is closed (expired, cancelled or completed): nothing changed.", "error"
    return f"{name} is not an active mechanic: nothing changed.", "error"


async def cancel(request: web.Request) -> web.Response:
    """Cancel an open request; the customer is told and refunded in full."""
    ref = request.match_info["ref"].upper()[:16]
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    async with runtime.transaction() as uow:
        cancelled = await dispatch.cancel_unmatched(uow, runtime, ref, actor(admin), now)
    if cancelled is None:
        return see_other(request, _back(request), f"{ref} is no longer open (a mechanic took "
                         "it, or it closed a moment ago): nothing changed.", "error")
    refund = await refund_now(runtime, now)
    return see_other(request, _back(request),
                     f"{ref} is cancelled and the customer told. {refund}")


async def refund_now(runtime: Runtime, now: datetime) -> str:
    """Make the refunds due now (after the commit: a provider outage undoes no cancel)."""
    try:
        done, failed = await refund_due(runtime, now)
    except Exception:
        log.exception("refund after an admin's cancel failed; the sweep retries")
        done, failed = 0, 1
    if failed:
        return "The refund did not go through yet; the sweep retries it."
    return "The payment is refunded." if done else "No payment to refund."
