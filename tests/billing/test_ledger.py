"""Payouts on completion, and the ledger reconciling a busy day to the cent."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from billing.connect import start_onboarding
from billing.ledger import reconcile
from core import consultations, dispatch
from core.models import Consultation, Mechanic, Payout, SessionRequest
from core.runtime import Runtime
from core.sweeps import payouts_due, run_sweeps
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import awaiting_payment
from tests.standins.stripe_api import StripeStandin


async def pay(runtime: Runtime, api: StripeStandin, client: TestClient, n: int,
              plan: str) -> SessionRequest:
    bought = await awaiting_payment(runtime, plan, address=f"visitor-{n}")
    assert bought.checkout.provider_session_id is not None
    await api.send_event(client, api.event(
        "checkout.session.completed", api.complete_session(bought.checkout.provider_session_id)),
        WEBHOOK_SECRET)
    async with runtime.sessions() as s:
        request = await s.scalar(select(SessionRequest).where(
            SessionRequest.intake_id == bought.intake.id))
    assert request is not None
    return request


async def mechanic(runtime: Runtime, api: StripeStandin, client: TestClient, name: str,
                   onboarded: bool) -> int:
    async with runtime.sessions.begin() as s:
        m = Mechanic(name=name, is_senior=True, created_at=runtime.clock.now())
        s.add(m)
        await s.flush()
        mechanic_id = m.id
        if onboarded:
            await start_onboarding(s, runtime.payments, runtime.config,  # type: ignore[arg-type]
                                   mechanic_id)
            account_id = m.stripe_account_id
    if onboarded:
        await api.send_event(client, api.event("account.updated",
                                               api.activate_account(account_id or "")),
                             WEBHOOK_SECRET)
    return mechanic_id


async def complete(runtime: Runtime, request: SessionRequest, mechanic_id: int) -> Payout:
    """What the session service will do at the end of a consultation."""
    now = runtime.clock.now()
    async with runtime.transaction() as uow:
        result = await dispatch.assign(uow, runtime, request.ref, mechanic_id, "admin:test",
                                       now)
        assert result.outcome is dispatch.Outcome.ACCEPTED
        consultation_id = await uow.session.scalar(select(Consultation.id).where(
            Consultation.request_id == request.id, Consultation.status == "waiting"))
        assert consultation_id is not None
        assert await consultations.complete(uow, runtime, consultation_id, "mechanic_ended",
                                            now) is not None
    await payouts_due(runtime, now)
    async with runtime.sessions() as s:
        payout = await s.scalar(select(Payout).where(Payout.consultation_id == consultation_id))
    assert payout is not None
    return payout


async def test_completion_pays_now_or_once_onboarding_finishes(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    ready = await mechanic(stripe_runtime, stripe_api, webhook_client, "Ready", True)
    later = await mechanic(stripe_runtime, stripe_api, webhook_client, "Later", False)
    paid = await complete(stripe_runtime,
                          await pay(stripe_runtime, stripe_api, webhook_client, 1, "video15"),
                          ready)
    waiting = await complete(stripe_runtime,
                             await pay(stripe_runtime, stripe_api, webhook_client, 2, "chat10"),
                             later)
    assert (paid.status, paid.amount_cents, paid.fee_cents) == ("paid", 2400, 599)
    assert (waiting.status, waiting.amount_cents, waiting.fee_cents) == ("pending", 800, 199)
    assert len(stripe_api.transfers) == 1
    # The second mechanic finishes onboarding: Stripe says so, the payout goes out, once.
    async with stripe_runtime.sessions.begin() as s:
        await start_onboarding(s, stripe_runtime.payments,  # type: ignore[arg-type]
                               stripe_runtime.config, later)
        account_id = (await s.get(Mechanic, later)).stripe_account_id  # type: ignore[union-attr]
    event = stripe_api.event("account.updated", stripe_api.activate_account(account_id or ""))
    await stripe_api.send_event(webhook_client, event, WEBHOOK_SECRET)
    await stripe_api.send_event(webhook_client, event, WEBHOOK_SECRET)
    amounts = sorted(t["amount"] for t in stripe_api.transfers.values())
    assert amounts == [800, 2400]
    async with stripe_runtime.sessions() as s:
        assert (await s.get(Payout, waiting.id)).status == "paid"  # type: ignore[union-attr]


async def test_a_busy_day_reconciles_to_the_cent(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    rng = random.Random(4821)
    mechanics = [await mechanic(stripe_runtime, stripe_api, webhook_client, f"M{i}", i % 3 != 0)
                 for i in range(6)]
    plans = list(stripe_runtime.config.plans)
    expected = {"charged": 0, "refunded": 0, "completed": 0}
    left_open = []
    failing_transfer_done = False
    for n in range(200):
        plan = rng.choice(plans)
        request = await pay(stripe_runtime, stripe_api, webhook_client, n, plan)
        expected["charged"] += request.price_cents
        fate = rng.random()
        if fate < 0.2:  # the customer cancels before anyone accepts
            async with stripe_runtime.sessions.begin() as s:
                await s.execute(update(SessionRequest).where(SessionRequest.id == request.id)
                                .values(status="cancelled", close_reason="customer_cancelled"))
            expected["refunded"] += request.price_cents
        elif fate < 0.4:  # nobody takes it: the sweep will expire and refund it
            left_open.append(request)
            expected["refunded"] += request.price_cents
        else:
            if not failing_transfer_done and n > 20:
                # Stripe refuses one transfer (e.g. the account was restricted meanwhile).
                stripe_api.fail_next(1, status=400)
                failing_transfer_done = True
            await complete(stripe_runtime, request, rng.choice(mechanics))
            expected["completed"] += request.price_cents
    stripe_runtime.clock.advance(7201)  # type: ignore[attr-defined]
    stats = await run_sweeps(stripe_runtime)
    assert stats.expired == len(left_open)
    assert stats.refunds_failed == 0

    async with stripe_runtime.sessions() as s:
        ledger = await reconcile(s, stripe_runtime.config.billing.fee_bps)
        failed = (await s.scalars(select(Payout).where(Payout.status == "failed"))).all()
    assert ledger.problems == []
    assert ledger.balanced
    assert ledger.checkouts == 200
    assert ledger.charged_cents == expected["charged"]
    assert ledger.refunded_cents == expected["refunded"]
    assert (ledger.transferred_cents + ledger.payouts_pending_cents + ledger.payouts_failed_cents
            + ledger.platform_fees_cents) == expected["completed"]
    assert ledger.payouts_pending_cents > 0 and len(failed) == 1
    assert ledger.held_for_open_requests_cents == ledger.refunds_due_cents == 0
    assert sum(r["amount"] for r in stripe_api.refunds.values()) == expected["refunded"]
    assert sum(t["amount"] for t in stripe_api.transfers.values()) == ledger.transferred_cents


def test_ledger_command_prints_json(tmp_path: object) -> None:
    from pathlib import Path

    from tests.bot.test_cli import ROOT, _env

    env = _env(Path(str(tmp_path)))
    subprocess.run([sys.executable, "-m", "bot.cli", "migrate"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    result = subprocess.run([sys.executable, "-m", "bot.cli", "ledger", "--json"], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ledger = json.loads(result.stdout)
    assert ledger["balanced"] is True and ledger["charged_cents"] == 0
