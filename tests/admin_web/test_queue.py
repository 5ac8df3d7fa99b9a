"""The unattended queue: a request nobody took shows up, goes to the mechanic an admin picks
(one winner if a mechanic accepts at the same moment), or is cancelled with a refund."""

from __future__ import annotations

import asyncio
import re

from aiohttp import ClientResponse
from sqlalchemy import select, update

from core.messages import Inbound
from core.models import AuditLog, Availability, Identity, Mechanic, Offer, Refund, SessionRequest
from tests.admin_web.conftest import (
    MakeClient,
    Site,
    engine_of,
    make_admin,
    paid_request,
    reload,
    unattended_request,
)
from tests.core.test_dispatch import taken_notices
from tests.factories import linked_mechanic, sent_to


def options(page: str, ref: str) -> dict[str, str]:
    """The assign dropdown of one request: option text by mechanic id ('' when greyed)."""
    row = page[page.index(f'data-ref="{ref}"'):]
    row = row[:row.index("</tr>")]
    found = {}
    for value, disabled, label in re.findall(
            r'<option value="(\d+)"( disabled)?>([^<]*)</option>', row):
        found[value] = ("greyed: " if disabled else "") + label.strip()
    return found


async def test_a_request_nobody_took_is_listed_with_who_may_take_it(site: Site) -> None:
    runtime = site.runtime
    sam = await linked_mechanic(runtime, "Sam", channel="console", address="sam")
    ann = await linked_mechanic(runtime, "Ann", senior=True, channel="console", address="ann")
    away = await linked_mechanic(runtime, "Bob", senior=True, channel="console", address="bob")
    night = await linked_mechanic(runtime, "Nia", senior=True, channel="console", address="nia")
    async with runtime.sessions.begin() as s:
        await s.execute(update(Mechanic).where(Mechanic.id == away.mechanic_id)
                        .values(is_available=False))
        s.add(Availability(mechanic_id=night.mechanic_id, weekday=0, start_minute=0,
                           end_minute=60))  # Mondays 00:00-01:00; the clock says 12:00
        unreachable = Mechanic(name="Uma", is_senior=True)
        s.add(unreachable)
    request = await paid_request(runtime, "diagnostic", make="Subaru")
    assert (await reload(runtime, request)).status == "pending"  # offered to Ann
    assert "Nothing unattended" in await site.page("/admin/unattended")
    runtime.clock.advance(minutes=7)  # type: ignore[attr-defined]
    request = await unattended_request(runtime, "chat10", address="second")  # now: both
    queued = await site.page("/admin/unattended")
    assert queued.index("Subaru") > queued.index("Honda")  # newest first
    row = queued[queued.index('data-ref="R-'):]
    assert "5 min" in queued and "12 min" in queued  # waiting since payment
    assert "Full Diagnostic" in queued and "Grinding noise from the front wheel" in queued
    diagnostic = next(ref for ref in re.findall(r'data-ref="(R-\d+)"', row)
                      if ref != request.ref)
    assert options(queued, diagnostic) == {
        str(ann.mechanic_id): "Ann (senior)",
        str(away.mechanic_id): "greyed: Bob (senior) — away",
        str(night.mechanic_id): "greyed: Nia (senior) — outside their working hours",
        str(sam.mechanic_id): "greyed: Sam — not senior (Full Diagnostic needs a senior "
                              "mechanic)",
        str(unreachable.id): "greyed: Uma (senior) — no reachable chat linked",
    }
    assert options(queued, request.ref)[str(sam.mechanic_id)] == "Sam"
    # The list the page refreshes itself with, and the filter for expired ones.
    assert diagnostic in await site.page("/admin/unattended/rows")
    runtime.clock.advance(hours=2)  # type: ignore[attr-defined]
    from core.sweeps import run_sweeps

    await run_sweeps(runtime)
    await site.log_in()  # two idle hours: the login lapsed
    expired = await site.page("/admin/unattended?show=expired")
    assert diagnostic in expired and "unmatched" in expired
    assert "Nothing unattended" in await site.page("/admin/unattended")


async def test_assigning_gives_the_request_to_the_mechanic_and_tells_both(site: Site) -> None:
    runtime = site.runtime
    sam = await linked_mechanic(runtime, "Sam Lee", channel="console", address="sam")
    request = await unattended_request(runtime, "chat10", channel="console", address="dana")
    notice = await site.act(f"/admin/requests/{request.ref}/assign",
                            {"mechanic": str(sam.mechanic_id)})
    assert notice == f"{request.ref} is now Sam Lee's: both have been told."
    request = await reload(runtime, request)
    assert (request.status, request.mechanic_id) == ("accepted", sam.mechanic_id)
    assert any(t.startswith(f"It's yours: {request.ref}") for t in await sent_to(runtime, sam))
    customer = Identity(channel="console", address="dana")
    assert any("Sam, a certified mechanic" in t for t in await sent_to(runtime, customer))
    async with runtime.sessions() as s:
        entry = await s.scalar(select(AuditLog).where(AuditLog.action == "assign"))
    assert entry is not None and entry.actor == "admin:1" and entry.subject == request.ref
    assert entry.details == {"mechanic_id": sam.mechanic_id}
    # Again: nothing changes, and the admin is told why.
    again = await site.act(f"/admin/requests/{request.ref}/assign",
                           {"mechanic": str(sam.mechanic_id)})
    assert again == f"{request.ref} is already with Sam Lee: nothing changed."
    assert "Nothing unattended" in await site.page("/admin/unattended")


async def test_a_greyed_mechanic_cannot_be_assigned_by_a_forged_form(site: Site) -> None:
    runtime = site.runtime
    sam = await linked_mechanic(runtime, "Sam", channel="console", address="sam")
    request = await unattended_request(runtime, "diagnostic", address="d1")
    notice = await site.act(f"/admin/requests/{request.ref}/assign",
                            {"mechanic": str(sam.mechanic_id)})
    assert notice == (f"Sam can't take {request.ref}: not senior (Full Diagnostic needs a "
                      "senior mechanic).")
    assert (await reload(runtime, request)).status == "unattended"
    assert "Choose a mechanic first." == await site.act(
        f"/admin/requests/{request.ref}/assign", {"mechanic": ""})


async def test_cancelling_refunds_the_customer_and_withdraws_the_offers(site: Site) -> None:
    runtime = site.runtime
    sam = await linked_mechanic(runtime, "Sam", channel="console", address="sam")
    request = await unattended_request(runtime, "video15", channel="console", address="dana")
    notice = await site.act(f"/admin/requests/{request.ref}/cancel")
    assert notice == (f"{request.ref} is cancelled and the customer told. The payment is "
                      "refunded.")
    request = await reload(runtime, request)
    assert (request.status, request.close_reason) == ("cancelled", "admin_cancelled")
    async with runtime.sessions() as s:
        refund = await s.scalar(select(Refund))
        offer = await s.scalar(select(Offer))
    assert refund is not None and (refund.status, refund.amount_cents) == ("succeeded", 2999)
    assert offer is not None and offer.status == "withdrawn"
    told = await sent_to(runtime, Identity(channel="console", address="dana"))
    assert "our coordinator has cancelled it" in told[-1] and "$29.99" in told[-1]
    assert f"Request {request.ref} is no longer available." in await sent_to(runtime, sam)
    # The customer asking afterwards hears the same, not "finding your mechanic".
    replies = await engine_of(runtime).receive(Inbound(channel="console", address="dana",
                                                       text="hello?"))
    assert "our coordinator has cancelled it" in replies[0].text
    late = await site.act(f"/admin/requests/{request.ref}/cancel")
    assert "is no longer open" in late


async def test_an_admins_assign_and_a_mechanics_accept_at_once_have_one_winner(
        site: Site) -> None:
    runtime = site.runtime
    engine = engine_of(runtime)
    outcomes = set()
    # Four true races, then one each way round with the other side a moment late (so each
    # loser's answer is seen whichever side a race favours on this machine).
    delays = [(0.0, 0.0)] * 4 + [(0.0, 0.3), (0.3, 0.0)]
    for round_no, (admin_late, mechanic_late) in enumerate(delays):
        ann = await linked_mechanic(runtime, f"Ann{round_no}", channel="console",
                                    address=f"ann{round_no}")
        request = await unattended_request(runtime, "chat10", address=f"c{round_no}")
        sam = await linked_mechanic(runtime, f"Sam{round_no}", channel="console",
                                    address=f"sam{round_no}")  # not offered it: the admin's
        if not site.csrf:
            await site.page("/admin")
        tap = Inbound(channel="console", address=ann.address, action=f"accept:{request.ref}")

        async def assign(late: float, ref: str = request.ref, who: int = sam.mechanic_id
                         ) -> ClientResponse:
            await asyncio.sleep(late)
            return await site.post(f"/admin/requests/{ref}/assign", {"mechanic": str(who)})

        async def accept(late: float, tap: Inbound = tap) -> None:
            await asyncio.sleep(late)
            await engine.receive(tap)

        assigned, _tapped = await asyncio.gather(assign(admin_late), accept(mechanic_late))
        assert assigned.status == 303
        notice = await site.act_notice(assigned)
        request = await reload(runtime, request)
        assert request.status == "accepted"
        if request.mechanic_id == sam.mechanic_id:
            outcomes.add("admin")
            assert notice == f"{request.ref} is now Sam{round_no}'s: both have been told."
            assert taken_notices(await sent_to(runtime, ann), request.ref) == 1
        else:
            outcomes.add("mechanic")
            assert request.mechanic_id == ann.mechanic_id
            assert notice == (f"Too late: {request.ref} was accepted by Ann{round_no} a moment "
                              f"ago. Nothing changed, and Sam{round_no} was not told anything.")
            assert not any(request.ref in t for t in await sent_to(runtime, sam))
        async with runtime.sessions() as s:
            winners = (await s.scalars(select(AuditLog.action).where(
                AuditLog.subject == request.ref,
                AuditLog.action.in_(("assign", "accept"))))).all()
        assert len(winners) == 1
    assert outcomes == {"admin", "mechanic"}


async def test_two_admins_assigning_at_once_have_one_winner(
        site: Site, make_client: MakeClient) -> None:
    runtime = site.runtime
    other = Site(await make_client(runtime.config, engine=runtime.engine))
    await make_admin(runtime, "second@example.com")
    await other.log_in("second@example.com")
    await other.page("/admin")
    await site.page("/admin")
    sam = await linked_mechanic(runtime, "Sam", channel="console", address="sam")
    ann = await linked_mechanic(runtime, "Ann", channel="console", address="ann")
    request = await unattended_request(runtime, "chat10", address="c1")
    first, second = await asyncio.gather(
        site.post(f"/admin/requests/{request.ref}/assign", {"mechanic": str(sam.mechanic_id)}),
        other.post(f"/admin/requests/{request.ref}/assign", {"mechanic": str(ann.mechanic_id)}))
    notices = sorted([await site.act_notice(first), await other.act_notice(second)])
    request = await reload(runtime, request)
    winner = "Sam" if request.mechanic_id == sam.mechanic_id else "Ann"
    loser = "Ann" if winner == "Sam" else "Sam"
    assert notices == sorted([
        f"{request.ref} is now {winner}'s: both have been told.",
        f"Too late: {request.ref} was accepted by {winner} a moment ago. Nothing changed, "
        f"and {loser} was not told anything."])
    async with runtime.sessions() as s:
        assert (await s.scalar(select(SessionRequest.status))) == "accepted"


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_the_queue_shows_the_intakes_photos_which_open_for_admins_only(
        site: Site) -> None:
    from core.files import store_upload
    from core.models import File, Intake

    runtime = site.runtime
    request = await unattended_request(runtime, "chat10", channel="console", address="dana")
    async with runtime.sessions.begin() as s:
        intake = await s.get(Intake, request.intake_id)
        assert intake is not None
        chat = await s.scalar(select(Identity).where(Identity.address == "dana"))
        assert chat is not None
        photo = await store_upload(s, runtime.config, chat.id, PNG, "<b>wheel</b>.png",
                                   runtime.clock.now())
        photo.intake_id = intake.id
    async with runtime.sessions() as s:
        stored = await s.scalar(select(File))
    assert stored is not None
    for path in ("/admin/unattended", f"/admin/intakes/{request.intake_id}"):
        page = await site.page(path)
        assert f'<img src="/admin/files/{stored.public_id}" alt="&lt;b&gt;wheel&lt;/b&gt;.png">' \
            in page, path
    response = await site.client.get(f"/admin/files/{stored.public_id}")
    assert response.status == 200 and await response.read() == PNG
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Security-Policy"].startswith("sandbox")
    assert (await site.client.get("/admin/files/f_nothing")).status == 404
    site.client.session.cookie_jar.clear()
    outsider = await site.client.get(f"/admin/files/{stored.public_id}",
                                     allow_redirects=False)
    assert outsider.status == 303
