"""Nothing admin-only without a login; no change without the form's token; the lockout; a
widget visitor's token opens nothing here; customers' words shown as text, never markup."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from admin_web.auth import PUBLIC
from core.config import Config, with_changes
from core.models import AdminLogin, AuditLog, Base, Intake, Mechanic
from tests.admin_web.conftest import (
    PASSWORD,
    MakeClient,
    Site,
    engine_of,
    live_session,
    make_admin,
    paid_request,
    unattended_request,
)
from tests.billing.helpers import awaiting_payment
from tests.factories import linked_mechanic


def admin_routes(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, path template, name) of every route of the admin sub-application."""
    for resource in client.app.router.resources():
        info = resource.get_info()
        if info.get("prefix") == "/admin":
            admin: web.Application = info["app"]
            return [(route.method, route.resource.canonical, route.name or "")
                    for route in admin.router.routes()
                    if route.resource is not None and route.method != "HEAD"]
    raise AssertionError("no sub-application is mounted at /admin")


def filled(template: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), template)


async def test_every_admin_route_but_login_redirects_a_visitor_without_a_session(
        make_client: MakeClient, config: Config) -> None:
    client = await make_client(config)
    await make_admin(Site(client).runtime)
    routes = admin_routes(client)
    assert len(routes) >= 25 and {name for _m, _p, name in routes} >= PUBLIC
    checked = 0
    for method, path, name in routes:
        url = filled(path)
        if name in PUBLIC:
            continue
        for cookies in ({}, {"autodoctor_admin": "forged.token"}):
            client.session.cookie_jar.clear()
            client.session.cookie_jar.update_cookies(cookies)
            response = await client.request(method, url, allow_redirects=False,
                                            data={"csrf": "x"} if method == "POST" else None)
            assert response.status == 303, (method, url, response.status)
            assert response.headers["Location"].startswith("/admin/login?next="), url
            assert "AutoDoctor admin" not in await response.text()
            checked += 1
    # Paths no route has are no way in either.
    for url in ("/admin/nothing-here", "/admin/sessions/1/nothing", "/admin/../admin/audit"):
        response = await client.get(url, allow_redirects=False)
        assert response.status == 303 and "login" in response.headers["Location"]
    assert checked >= 2 * 27
    # The login page itself answers, with the house's headers.
    login = await client.get("/admin/login")
    assert login.status == 200
    assert "frame-ancestors 'none'" in login.headers["Content-Security-Policy"]
    assert login.headers["X-Frame-Options"] == "DENY"


async def _snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        return {table.name: [tuple(row) for row in (await conn.execute(
            table.select().order_by(*table.primary_key.columns))).all()]
            for table in Base.metadata.sorted_tables}


async def test_a_post_without_or_with_a_wrong_form_token_is_refused_and_changes_nothing(
        site: Site, engine: AsyncEngine) -> None:
    runtime = site.runtime
    queued = await unattended_request(runtime, "chat10", address="q1")
    ann = await linked_mechanic(runtime, "Ann", channel="console", address="ann")
    _live_request, live_id = await live_session(runtime)
    unpaid = await awaiting_payment(runtime, "chat10", address="unpaid")
    await paid_request(runtime, "chat10", address="late")
    runtime.clock.advance(400)  # type: ignore[attr-defined]  # a sweep would change things
    await site.page("/admin")
    posts = {
        "assign": ({"ref": queued.ref}, {"mechanic": str(ann.mechanic_id)}),
        "cancel_request": ({"ref": queued.ref}, {}),
        "end_session": ({"id": str(live_id)}, {}),
        "cancel_session": ({"id": str(live_id)}, {}),
        "sweeps": ({}, {}),
        "intake_status": ({"id": str(unpaid.intake.id)}, {"status": "cancelled"}),
        "invite": ({}, {"name": "Mallory"}),
        "reinvite": ({"id": str(ann.mechanic_id)}, {}),
        "mechanic_switch": ({"id": str(ann.mechanic_id), "flag": "active"}, {"on": "0"}),
        "logout": ({}, {}),
        "login_post": ({}, {"email": "ops@example.com", "password": PASSWORD}),
    }
    routes = {name: path for method, path, name in admin_routes(site.client)
              if method == "POST"}
    assert set(routes) == set(posts), "a new POST route needs a case here"
    before = await _snapshot(engine)
    for name, (parts, form) in posts.items():
        for token in (None, "wrong-token", site.csrf[:-2] + "xx"):
            data = {**form} if token is None else {**form, "csrf": token}
            response = await site.client.post(filled(routes[name], **parts), data=data,
                                              allow_redirects=False)
            assert response.status == 403, (name, token, response.status)
            assert "Form expired" in await response.text()
    assert await _snapshot(engine) == before
    # With the right token the same form works (the refusal was the token's).
    notice = await site.act(filled(routes["mechanic_switch"], id=str(ann.mechanic_id),
                                   flag="active"), {"on": "0"})
    assert "deactivated" in notice


async def test_five_failed_logins_lock_the_email_for_15_minutes_said_on_the_page(
        make_client: MakeClient, config: Config) -> None:
    client = await make_client(config)
    site = Site(client)
    await make_admin(site.runtime)
    for attempt in range(4):
        response = await site.log_in(password="wrong password!")
        assert response.status == 401
        assert f"{4 - attempt} more failed attempt" in await response.text()
    response = await site.log_in(password="wrong password!")
    assert response.status == 429
    assert "login is locked for 15 more minutes" in await response.text()
    # Locked: even the right password is refused, unchecked, with the time left.
    site.runtime.clock.advance(minutes=10)  # type: ignore[attr-defined]
    response = await site.log_in()
    assert response.status == 429 and "5 more minutes" in await response.text()
    assert "autodoctor_admin" not in {c.key for c in client.session.cookie_jar}
    site.runtime.clock.advance(minutes=5)  # type: ignore[attr-defined]
    response = await site.log_in()
    assert response.status == 303 and response.headers["Location"] == "/admin"
    assert "Today" in await site.page("/admin")
    async with site.runtime.sessions() as s:
        attempts = (await s.scalars(select(AdminLogin).order_by(AdminLogin.id))).all()
        audited = (await s.scalars(select(AuditLog.action).where(
            AuditLog.action.in_(("login", "login_failed"))).order_by(AuditLog.id))).all()
    assert [a.failure for a in attempts] == ["password"] * 5 + ["locked", None]
    assert audited == ["login_failed"] * 6 + ["login"]


async def test_five_failures_from_one_address_lock_it_for_every_email(
        make_client: MakeClient, config: Config) -> None:
    client = await make_client(with_changes(config, admin={"trust_forwarded_for": True}))
    site = Site(client)
    await make_admin(site.runtime)
    here = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    for n in range(5):
        await site.log_in(email=f"guess{n}@example.com", password="x" * 12, headers=here)
    response = await site.log_in(headers=here)
    assert response.status == 429 and "from this address" in await response.text()
    # Another address (the proxy's last hop is the client) is not locked.
    response = await site.log_in(headers={"X-Forwarded-For": "203.0.113.10"})
    assert response.status == 303


async def test_the_session_lapses_after_inactivity_and_logout_voids_the_cookie(
        site: Site) -> None:
    response = await site.client.get("/admin")
    cookie = response.cookies["autodoctor_admin"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    assert cookie["path"] == "/admin" and cookie["max-age"] == "1800"
    site.runtime.clock.advance(minutes=29)  # type: ignore[attr-defined]
    await site.page("/admin")  # activity: the 30 minutes start again
    site.runtime.clock.advance(minutes=29)  # type: ignore[attr-defined]
    await site.page("/admin/audit")
    site.runtime.clock.advance(minutes=31)  # type: ignore[attr-defined]
    response = await site.client.get("/admin/audit", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/admin/login")
    # Log in again, keep the cookie, log out: the kept cookie no longer works.
    await site.log_in()
    kept = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/admin"))
    await site.page("/admin")
    assert (await site.act("/admin/logout")) == "You are logged out."
    site.client.session.cookie_jar.update_cookies(kept)
    response = await site.client.get("/admin", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/admin/login")


async def test_cookies_are_secure_when_the_site_is_served_over_https(
        make_client: MakeClient, config: Config) -> None:
    client = await make_client(with_changes(config, public_url="https://autodoctor.example"))
    await make_admin(Site(client).runtime)
    page = await client.get("/admin/login")
    nonce = page.cookies["autodoctor_admin_login"]
    assert nonce["secure"] and nonce["httponly"]
    token = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert token is not None
    # (The test client speaks plain HTTP, so it keeps no Secure cookie: sent by hand.)
    response = await client.post("/admin/login", allow_redirects=False, data={
        "email": "ops@example.com", "password": PASSWORD, "csrf": token.group(1)},
        headers={"Cookie": f"autodoctor_admin_login={nonce.value}"})
    assert response.status == 303
    session = response.cookies["autodoctor_admin"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"


async def test_a_widget_visitor_token_opens_nothing_of_the_admin_site(
        make_client: MakeClient, config: Config) -> None:
    client = await make_client(config)
    runtime = Site(client).runtime
    await make_admin(runtime)
    tokens = []
    invite = None
    async with runtime.sessions.begin() as s:
        from core.mechanics import invite_mechanic

        invite = await invite_mechanic(s, config, "Sam", runtime.clock.now())
    for hello in ({}, {"mechanic_invite": invite.invite_code}):
        ws = await client.ws_connect("/ws/widget")
        await ws.send_json({"type": "hello", "visitor": None, "resume_after": None,
                            "mechanic_invite": None, **hello})
        welcome = await ws.receive_json()
        assert welcome["type"] == "welcome"
        tokens.append(welcome["visitor"])
        await ws.close()
    for token in tokens:
        for cookies, headers in (({"autodoctor_admin": token}, {}),
                                 ({"visitor": token}, {"X-Visitor-Token": token}),
                                 ({}, {"Authorization": f"Bearer {token}"})):
            client.session.cookie_jar.clear()
            client.session.cookie_jar.update_cookies(cookies)
            for url in ("/admin", "/admin/intakes", "/admin/intakes.csv",
                        f"/admin/audit?visitor={token}"):
                response = await client.get(url, headers=headers, allow_redirects=False)
                assert response.status == 303, (url, cookies, headers)
                assert response.headers["Location"].startswith("/admin/login")
            response = await client.post("/admin/mechanics/invite", headers=headers,
                                         data={"name": "Mallory", "csrf": token},
                                         allow_redirects=False)
            assert response.status == 303
    async with runtime.sessions() as s:
        assert (await s.scalars(select(Mechanic.name))).all() == ["Sam"]


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def test_html_in_every_customer_supplied_field_is_shown_as_text(
        site: Site, engine: AsyncEngine) -> None:
    runtime = site.runtime
    request, live_id = await live_session(runtime)
    queued = await unattended_request(runtime, "chat10", address="hostile-q")
    async with engine.begin() as conn:
        for table, column in (("intakes", "problem"), ("intakes", "vehicle_make"),
                              ("intakes", "vehicle_model"), ("customers", "display_name"),
                              ("identities", "display_name"), ("messages", "text"),
                              ("mechanics", "name"), ("consultations", "review"),
                              ("consultations", "mechanic_notes")):
            await conn.execute(text(f"UPDATE {table} SET {column} = :v"), {"v": HOSTILE})
        await conn.execute(text("UPDATE intakes SET vin = :v"), {"v": "<b>VIN</b>"})
        await conn.execute(text("UPDATE files SET original_name = :v"), {"v": HOSTILE})
    async with runtime.sessions() as s:
        intake_id = (await s.scalars(select(Intake.id))).first()
        mechanic_id = (await s.scalars(select(Mechanic.id))).first()
    pages = ["/admin", "/admin/unattended", "/admin/unattended/rows", "/admin/sessions",
             "/admin/sessions/rows", f"/admin/sessions/{live_id}", "/admin/intakes",
             f"/admin/intakes/{intake_id}", "/admin/mechanics", f"/admin/mechanics/{mechanic_id}",
             "/admin/money", "/admin/audit", f"/admin/intakes?q={HOSTILE}",
             f"/admin/audit?actor={HOSTILE}"]
    await site.act(f"/admin/requests/{queued.ref}/cancel")  # a notice with the ref in it
    shown = 0
    for path in pages:
        body = await site.page(path)
        assert "<script>alert" not in body and "<img src=x" not in body, path
        assert "<b>VIN</b>" not in body, path
        shown += body.count("&lt;script&gt;alert(")
    assert shown >= 10
    detail = await site.page(f"/admin/sessions/{live_id}")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in detail
    assert request.ref in detail
    engine_of(runtime)  # (the engine stays usable)
