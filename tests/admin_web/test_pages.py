"""Each admin page shows what it should, and its forms do what they say (both databases)."""

from __future__ import annotations

import csv
import io
import re

from sqlalchemy import select, update

from core.messages import Inbound
from core.models import AuditLog, Checkout, Consultation, Intake, Mechanic, Payout, Refund
from core.sweeps import run_sweeps
from tests.admin_web.conftest import (
    Site,
    engine_of,
    live_session,
    paid_request,
    unattended_request,
)
from tests.billing.helpers import awaiting_payment
from tests.factories import linked_mechanic


def cards(page: str) -> dict[str, str]:
    """The dashboard's figures by label."""
    return {label.strip(): value.strip() for value, label in re.findall(
        r'<div class="value"[^>]*>([^<]*)</div><div class="label">([^<(]*)', page)}


async def test_the_dashboard_counts_today_and_draws_the_weeks_charts(site: Site) -> None:
    runtime = site.runtime
    empty = await site.page("/admin")
    assert cards(empty)["unattended now"] == "0" and "No paid requests in 7 days." in empty
    await live_session(runtime, "chat10")  # paid and accepted at once
    await unattended_request(runtime, "video15", address="waiting")
    await awaiting_payment(runtime, "chat10", address="unpaid")
    page = await site.page("/admin")
    figures = cards(page)
    assert figures["sessions today"] == "1" and figures["live now"] == "1"
    assert figures["unattended now"] == "1" and figures["intakes today"] == "3"
    assert figures["revenue today"] == "$39.98"  # 9.99 + 29.99
    assert figures["median time to accept"] == "0 min"
    # Two SVG charts, drawn on the server: bars per hour, a line of daily medians.
    assert page.count('<svg class="chart"') == 2
    assert len(re.findall(r'<rect class="bar"', page)) == 1  # one hour had payments
    assert "2 paid" in page and "median 0.0 min of 1 accepted" in page
    assert "<script" not in page.split("</main>")[0]  # no script inside the page's content


async def test_sessions_are_filtered_shown_with_their_transcript_and_ended(site: Site) -> None:
    runtime = site.runtime
    request, live_id = await live_session(runtime, "chat10", mechanic="Sam Lee")
    other, other_id = await live_session(runtime, "video15", mechanic="Ann Ray",
                                         customer="cust-2")
    listed = await site.page("/admin/sessions")
    assert request.ref in listed and other.ref in listed and "live" in listed
    assert "30 min" in listed  # time left of the chat session
    assert other.ref not in await site.page("/admin/sessions?tier=chat10")
    assert request.ref not in await site.page("/admin/sessions?status=completed")
    async with runtime.sessions() as s:
        ann = await s.scalar(select(Mechanic.id).where(Mechanic.name == "Ann Ray"))
    by_ann = await site.page(f"/admin/sessions?mechanic={ann}")
    assert other.ref in by_ann and request.ref not in by_ann
    assert request.ref not in await site.page("/admin/sessions?since=2026-01-06")
    assert request.ref in await site.page("/admin/sessions?since=2026-01-05&until=2026-01-05")
    detail = await site.page(f"/admin/sessions/{live_id}")
    assert "Hello, the brakes grind when I stop" in detail and "Time left" in detail
    assert "Observe" not in detail  # a chat session has no video room
    # No LiveKit here: no video room to observe, and the address says why.
    assert "Observe" not in await site.page(f"/admin/sessions/{other_id}")
    nothing = await site.page(f"/admin/sessions/{other_id}/observe", status=409)
    assert "LIVEKIT_URL" in nothing
    # End one (paid out as usual), cancel the other (refunded).
    assert await site.act(f"/admin/sessions/{live_id}/end") == \
        "The session is ended; both sides were told."
    cancelled = await site.act(f"/admin/sessions/{other_id}/cancel")
    assert cancelled == ("The session is cancelled; both sides were told. The payment is "
                         "refunded.")
    async with runtime.sessions() as s:
        statuses = dict((await s.execute(select(Consultation.id, Consultation.status))).all())
        payout = await s.scalar(select(Payout))
        refund = await s.scalar(select(Refund))
    assert statuses == {live_id: "completed", other_id: "cancelled"}
    replies = await engine_of(runtime).receive(Inbound(channel="console", address="cust-2",
                                                       text="are you there?"))
    assert "our coordinator had to cancel your Standard Video session" in replies[0].text
    assert payout is not None and payout.amount_cents == 800
    assert refund is not None and refund.amount_cents == 2999
    assert "no longer under way" in await site.act(f"/admin/sessions/{live_id}/end")
    assert (await site.page("/admin/sessions/999", status=404)).count("Not found") >= 1


async def test_the_sweeps_run_from_the_page_with_their_counts(site: Site) -> None:
    runtime = site.runtime
    await linked_mechanic(runtime, "Sam", channel="console", address="sam")
    await paid_request(runtime, "chat10", address="a")  # offered to Sam, who says nothing
    runtime.clock.advance(301)  # type: ignore[attr-defined]
    notice = await site.act("/admin/sweeps")
    assert notice.startswith("Sweeps run: unattended 1, expired 0, no show 0")
    async with runtime.sessions() as s:
        entry = await s.scalar(select(AuditLog).where(AuditLog.action == "run_sweeps"))
    assert entry is not None and entry.details["unattended"] == 1


async def test_intakes_are_searched_filtered_closed_and_exported(site: Site) -> None:
    runtime = site.runtime
    honda = await awaiting_payment(runtime, "chat10", address="h", make="Honda")
    await awaiting_payment(runtime, "video15", address="t", make="Toyota")
    paid = await paid_request(runtime, "diagnostic", address="s", make="Subaru")
    listed = await site.page("/admin/intakes")
    assert all(make in listed for make in ("Honda", "Toyota", "Subaru"))
    only = await site.page("/admin/intakes?q=toyota")
    assert "Toyota" in only and "Honda" not in only
    assert "Subaru" in await site.page(f"/admin/intakes?q={paid.ref}")
    by_status = await site.page("/admin/intakes?status=paid")
    assert "Subaru" in by_status and "Honda" not in by_status
    by_tier = await site.page("/admin/intakes?tier=video15")
    assert "Toyota" in by_tier and "Subaru" not in by_tier
    assert "No intakes match." in await site.page("/admin/intakes?until=2026-01-04")
    # Close an unpaid one: its payment link stops working.
    detail = await site.page(f"/admin/intakes/{honda.intake.id}")
    assert "Grinding noise from the front wheel" in detail and honda.checkout.ref in detail
    assert await site.act(f"/admin/intakes/{honda.intake.id}/status",
                          {"status": "cancelled"}) == f"Intake {honda.intake.id} is now cancelled."
    async with runtime.sessions() as s:
        intake = await s.get(Intake, honda.intake.id)
        checkout = await s.get(Checkout, honda.checkout.id)
    assert intake is not None and intake.status == "cancelled"
    assert checkout is not None and checkout.status == "expired"
    pay = await site.client.get(f"/pay/{honda.checkout.ref}")
    assert "cancelled" in await pay.text()
    refused = await site.act(f"/admin/intakes/{paid.intake_id}/status", {"status": "expired"})
    assert refused == f"Intake {paid.intake_id} is paid now, so it was not changed."
    assert "can't be set to 'paid'" in await site.act(
        f"/admin/intakes/{paid.intake_id}/status", {"status": "paid"})
    # The CSV of the filtered list.
    response = await site.client.get("/admin/intakes.csv?tier=video15")
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [r["make"] for r in rows] == ["Toyota"]
    assert rows[0]["status"] == "awaiting_payment" and rows[0]["tier"] == "video15"


async def test_csv_cells_that_would_run_as_formulas_are_defused(site: Site) -> None:
    runtime = site.runtime
    bought = await awaiting_payment(runtime, "chat10", address="x")
    hostile = {"problem": '=HYPERLINK("http://evil.example","click")', "vehicle_make": "+SUM(1)",
               "vehicle_model": "-2+3", "vin": "@A1"}
    async with runtime.sessions.begin() as s:
        await s.execute(update(Intake).where(Intake.id == bought.intake.id).values(**hostile))
    text = await (await site.client.get("/admin/intakes.csv")).text()
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["problem"] == "'" + hostile["problem"]
    assert (row["make"], row["model"], row["vin"]) == ("'+SUM(1)", "'-2+3", "'@A1")
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row.values())


async def test_mechanics_are_listed_invited_with_a_qr_code_and_switched(site: Site) -> None:
    runtime = site.runtime
    sam = await linked_mechanic(runtime, "Sam Lee", channel="console", address="sam")
    roster = await site.page("/admin/mechanics")
    assert "Sam Lee" in roster and "console" in roster and "not set up" in roster
    notice = await site.act("/admin/mechanics/invite", {"name": "Ann Ray", "senior": "on",
                                                        "phone": "+15551234567"})
    assert notice.startswith("Invite made")
    page = await site.page("/admin/mechanics")
    ann_id = re.search(r'href="/admin/mechanics/(\d+)">Ann Ray', page)
    assert ann_id is not None
    detail = await site.page(f"/admin/mechanics/{ann_id.group(1)}")
    link = re.search(r'https://t\.me/AutoDoctorBot\?start=m_([A-Z0-9]{8})', detail)
    assert link is not None and f"JOIN {link.group(1)}" in detail
    assert f"/m/{link.group(1)}" in detail
    assert "<svg" in detail and "Telegram link for Ann Ray" in detail  # the QR code
    assert "senior" in detail and "+15551234567" in await site.page("/admin/mechanics")
    assert "E.164" in await site.act("/admin/mechanics/invite", {"name": "X", "phone": "555"})
    # Deactivate, make senior, reactivate: each said and audit-logged.
    assert await site.act(f"/admin/mechanics/{sam.mechanic_id}/active", {"on": "0"}) == \
        "Sam Lee is deactivated: no new requests are offered to them."
    assert await site.act(f"/admin/mechanics/{sam.mechanic_id}/senior", {"on": "1"}) == \
        "Sam Lee is senior: Full Diagnostic requests are offered to them."
    request = await paid_request(runtime, "diagnostic", address="d")
    assert request.status == "unattended"  # Sam is inactive: nobody to offer it to
    await site.act(f"/admin/mechanics/{sam.mechanic_id}/active", {"on": "1"})
    async with runtime.sessions() as s:
        mechanic = await s.get(Mechanic, sam.mechanic_id)
        actions = (await s.scalars(select(AuditLog.action).where(
            AuditLog.actor == "admin:1").order_by(AuditLog.id))).all()
    assert mechanic is not None and mechanic.is_active and mechanic.is_senior
    assert [a for a in actions if a != "login"] == [
        "invite", "mechanic_active", "mechanic_senior", "mechanic_active"]
    # Another invite for one who lost theirs.
    again = await site.act(f"/admin/mechanics/{sam.mechanic_id}/invite")
    assert again.startswith("Invite made")
    assert "start=m_" in await site.page(f"/admin/mechanics/{sam.mechanic_id}")


async def test_money_for_a_range_reconciles_with_the_ledger(site: Site) -> None:
    runtime = site.runtime
    _r, live_id = await live_session(runtime, "chat10")
    async with runtime.sessions.begin() as s:  # Sam has a payout account
        await s.execute(update(Mechanic).values(stripe_account_id="acct_sam",
                                                payouts_enabled=True))
    await site.act(f"/admin/sessions/{live_id}/end")
    queued = await unattended_request(runtime, "video15", address="q")
    await site.act(f"/admin/requests/{queued.ref}/cancel")
    await run_sweeps(runtime)  # the payout is sent
    page = await site.page("/admin/money")
    figures = cards(page)
    assert figures["charged"] == "$39.98" and figures["refunded"] == "$29.99"
    assert figures["platform fees"] == "$1.99" and figures["payouts paid"] == "$8.00"
    assert "<strong>Balanced</strong>" in page
    assert "$39.98 charged in 2 payments, $39.98 accounted for" in page
    earlier = await site.page("/admin/money?since=2025-12-01&until=2025-12-31")
    assert cards(earlier)["charged"] == "$0.00"
    text = await (await site.client.get("/admin/money.csv")).text()
    kinds = [row["kind"] for row in csv.DictReader(io.StringIO(text))]
    assert sorted(kinds) == ["charge", "charge", "payout", "refund"]


async def test_the_audit_log_lists_logins_and_actions_and_filters_them(site: Site) -> None:
    runtime = site.runtime
    sam = await linked_mechanic(runtime, "Sam", channel="console", address="sam")
    await site.act(f"/admin/mechanics/{sam.mechanic_id}/senior", {"on": "1"})
    site.client.session.cookie_jar.clear()  # another browser: a failed try, then in
    assert (await site.log_in(password="not the password")).status == 401
    assert (await site.log_in()).status == 303
    page = await site.page("/admin/audit")
    assert all(action in page for action in ("login", "mechanic_senior", "login_failed"))
    assert "ops@example.com" in page  # the admin's email beside their id
    only = await site.page("/admin/audit?action=mechanic_senior")
    assert "mechanic_senior" in only and "login_failed</td>" not in only
    assert "login_failed" in await site.page("/admin/audit?actor=login:")
    assert "Nothing matches." in await site.page("/admin/audit?since=2027-01-01")


async def test_detail_pages_show_hours_reports_ratings_and_payments(site: Site) -> None:
    from core.models import Availability

    runtime = site.runtime
    request, live_id = await live_session(runtime, "diagnostic", mechanic="Sam Lee")
    async with runtime.sessions.begin() as s:
        mechanic = await s.scalar(select(Mechanic))
        assert mechanic is not None
        s.add(Availability(mechanic_id=mechanic.id, weekday=0, start_minute=540,
                           end_minute=1020))
        await s.execute(update(Consultation).values(
            report={"findings": "Worn pads", "repairs": "Replace pads", "cost": "$150-$250"},
            rating=5, review="Very helpful"))
    page = await site.page(f"/admin/mechanics/{mechanic.id}")
    assert "Mon 09:00–17:00" in page and "Sam Lee" in page
    session = await site.page(f"/admin/sessions/{live_id}")
    assert "Worn pads" in session and "$150-$250" in session
    assert "5/5" in session and "Very helpful" in session
    intake = await site.page(f"/admin/intakes/{request.intake_id}")
    assert request.ref in intake and "$49.99, paid" in intake and f"Session #{live_id}" in intake
    assert "A paid intake follows its request" in intake
