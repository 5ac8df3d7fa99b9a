"""The admin site through the whole app: an admin account, a logged-in browser-less client,
and the rows its pages show, made through the product's own services."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from admin_web.accounts import create_admin
from billing.payments import mark_paid
from bot.app import RUNTIME
from bot.flows import route
from core.config import Config
from core.engine import Engine
from core.models import SessionRequest
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.billing.helpers import awaiting_payment
from tests.channels.test_widget_browser import browser, chromium  # noqa: F401  (fixtures)

EMAIL = "ops@example.com"
PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def make_admin(runtime: Runtime, email: str = EMAIL, password: str = PASSWORD) -> int:
    async with runtime.transaction() as uow:
        admin = await create_admin(uow.session, email, password, runtime.clock.now())
        return admin.id


class Site:
    """An admin's browser, without the browser: cookies kept, forms sent with their token."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.runtime: Runtime = client.app[RUNTIME]
        self.csrf = ""

    async def log_in(self, email: str = EMAIL, password: str = PASSWORD,
                     headers: dict[str, str] | None = None) -> ClientResponse:
        page = await self.client.get("/admin/login")
        token = _CSRF.search(await page.text())
        assert token is not None
        return await self.client.post("/admin/login", data={
            "email": email, "password": password, "csrf": html.unescape(token.group(1)),
            "next": "/admin"}, allow_redirects=False, headers=headers)

    async def page(self, path: str, status: int = 200) -> str:
        response = await self.client.get(path, allow_redirects=False)
        text = await response.text()
        assert response.status == status, (path, response.status, text[:500])
        token = _CSRF.search(text)
        if token is not None:
            self.csrf = html.unescape(token.group(1))
        return text

    async def post(self, path: str, data: dict[str, str] | None = None, *,
                   csrf: str | None = None) -> ClientResponse:
        if not self.csrf:
            await self.page("/admin")
        form = {"csrf": self.csrf if csrf is None else csrf, **(data or {})}
        return await self.client.post(path, data=form, allow_redirects=False)

    async def act(self, path: str, data: dict[str, str] | None = None) -> str:
        """Send a form, follow the redirect, and return the notice the next page shows."""
        return await self.act_notice(await self.post(path, data))

    async def act_notice(self, response: ClientResponse) -> str:
        """The notice shown after a form's redirect."""
        assert response.status == 303, (response.status, (await response.text())[:500])
        text = await self.page(response.headers["Location"])
        notice = re.search(r'<p class="notice[^"]*" role="status">(.*?)</p>', text, re.S)
        return html.unescape(notice.group(1)) if notice else ""


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def site(make_client: MakeClient, config: Config) -> Site:
    """A logged-in admin."""
    client = await make_client(config)
    found = Site(client)
    await make_admin(found.runtime)
    response = await found.log_in()
    assert response.status == 303, await response.text()
    return found


async def paid_request(runtime: Runtime, plan: str = "video15", **kwargs: Any) -> SessionRequest:
    """A customer who paid through the offline checkout: the request is offered (or, with
    nobody eligible, queued for the admins at once)."""
    bought = await awaiting_payment(runtime, plan, **kwargs)
    async with runtime.transaction() as uow:
        request = await mark_paid(uow, runtime, bought.checkout.ref, runtime.clock.now())
    assert request is not None
    return request


async def unattended_request(runtime: Runtime, plan: str = "video15",
                             **kwargs: Any) -> SessionRequest:
    """A paid request nobody accepted within 5 minutes: the clock moved, the sweep run."""
    request = await paid_request(runtime, plan, **kwargs)
    runtime.clock.advance(runtime.config.timeouts.unattended_after_seconds + 1)  # type: ignore[attr-defined]
    await run_sweeps(runtime)
    return await reload(runtime, request)


async def reload(runtime: Runtime, request: SessionRequest) -> SessionRequest:
    async with runtime.sessions() as s:
        found = await s.scalar(select(SessionRequest).where(SessionRequest.id == request.id))
    assert found is not None
    return found


def engine_of(runtime: Runtime) -> Engine:
    return Engine(runtime, route)


async def live_session(runtime: Runtime, plan: str = "chat10", *, mechanic: str = "Sam Lee",
                       customer: str = "cust-live") -> tuple[SessionRequest, int]:
    """A mechanic who accepted a paid request and a customer who wrote: a live session.
    Returns the request and the consultation's id."""
    from core.messages import Inbound
    from core.models import Consultation
    from tests.factories import linked_mechanic

    sam = await linked_mechanic(runtime, mechanic, channel="console",
                                address=f"mech-{customer}", senior=plan == "diagnostic")
    request = await paid_request(runtime, plan, channel="console", address=customer)
    engine = engine_of(runtime)
    await engine.receive(Inbound(channel="console", address=sam.address,
                                 action=f"accept:{request.ref}"))
    await engine.receive(Inbound(channel="console", address=customer,
                                 text="Hello, the brakes grind when I stop"))
    async with runtime.sessions() as s:
        consultation = await s.scalar(select(Consultation).where(
            Consultation.request_id == request.id))
    assert consultation is not None and consultation.status == "live", consultation
    return await reload(runtime, request), consultation.id
