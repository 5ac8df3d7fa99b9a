"""Customer-facing payment pages: the offline /pay/{ref} checkout and the landing pages."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime

import jinja2
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.payments import in_transaction, mark_paid, settle_from_provider
from billing.receipt import PaidView, money, paid_view
from core.config import EXTENSION_PLAN
from core.models import Checkout, Intake
from core.runtime import Runtime
from core.shapes import CHECKOUT_REF, fits
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.billing.pages")

_templates = jinja2.Environment(loader=jinja2.PackageLoader("billing", "templates"),
                                autoescape=True, undefined=jinja2.StrictUndefined)
_HEADERS = {
    # The ref in the URL is what lets someone pay: keep it out of referrers and caches.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_BACK = "You can close this page and return to the chat."

# state → (HTTP status, heading, lines)
_STATES: dict[str, tuple[int, str, tuple[str, ...]]] = {
    "paid": (200, "Paid — return to the chat",
             ("Thank you! Your payment went through and the bot is finding your mechanic.",
              _BACK)),
    "already_paid": (200, "Already paid — return to the chat",
                     ("This request was already paid with another link, so this one is "
                      "closed. Nothing more was charged.", _BACK)),
    "refunded": (200, "This payment was refunded",
                 ("The full amount went back to you. Say \"start\" in the chat to make a new "
                  "request.",)),
    "cancelled": (410, "This request was cancelled",
                  ("Nothing was charged. Return to the chat and say \"start\" to make a new "
                   "request.",)),
    "expired": (410, "This payment link has expired",
                ("Nothing was charged. Return to the chat and send any message to get a "
                 "new payment link.",)),
    "failed": (410, "This payment didn't go through",
               ("Nothing was charged. Return to the chat and send any message to get a new "
                "payment link.",)),
    "not_found": (404, "Payment link not found",
                  ("Check that you opened the whole link from the chat, or ask the bot for "
                   "a new one.",)),
    "done": (200, "Thanks — return to the chat",
             ("Your payment is being confirmed. You'll get a message in the chat as soon as "
              "it is, and again when a mechanic takes your request.", _BACK)),
    "checkout_cancelled": (200, "Payment not completed",
                           ("Nothing was charged. Return to the chat: you can pay with the "
                            "same link until it expires, or say \"cancel\" to drop the "
                            "request.",)),
    "connect_done": (200, "Payout setup finished",
                     ("Stripe has your details. Return to the chat: you'll be told when "
                      "payouts are enabled.",)),
    "connect_refresh": (410, "This setup link has expired",
                        ("Return to the chat and ask for a new payout setup link.",)),
}


def checkout_state(checkout: Checkout, intake: Intake, now: datetime) -> str:
    """What the /pay page says for a checkout: 'payable' or the reason it is not."""
    if checkout.status == "paid":
        return "paid"
    if checkout.status == "refunded":
        return "refunded"
    if intake.status == "paid" and checkout.plan != EXTENSION_PLAN:
        return "already_paid"
    if intake.status in ("cancelled", "expired"):
        return "cancelled"
    if checkout.status == "failed":
        return "failed"
    if checkout.status == "expired" or (checkout.expires_at is not None
                                        and checkout.expires_at <= now):
        return "expired"
    return "payable"


# A link back to the chat: (address, label).
ChatLink = tuple[str, str]


def page(state: str, chat_link: ChatLink | None = None) -> web.Response:
    status, heading, lines = _STATES[state]
    return _render("message.html", status=status, heading=heading, lines=lines,
                   chat_link=chat_link, receipt=None)


def paid_page(view: PaidView, chat_link: ChatLink | None = None) -> web.Response:
    """A paid checkout's page, whenever it is opened: where the request stands now (never a
    second Pay button) and the receipt."""
    return _render("message.html", heading=view.standing.heading, lines=view.standing.lines,
                   chat_link=chat_link, receipt=view.receipt)


def chat_link(runtime: Runtime, channel: str) -> ChatLink | None:
    """Where the customer's chat is: the bot on Telegram, or the web widget on our own page
    (`/#chat` opens it, with their conversation, in the browser they paid from)."""
    if channel == "telegram":
        return (f"https://t.me/{runtime.config.telegram.bot_username}",
                "Back to the chat in Telegram")
    if channel == "web":
        return f"{runtime.config.public_url.rstrip('/')}/#chat", "Back to the chat"
    return None


async def landing(runtime: Runtime, ref: str) -> tuple[bool, ChatLink | None]:
    """Whether a checkout has this ref, and a link back to the customer's chat."""
    if not fits(CHECKOUT_REF, ref):
        return False, None
    async with runtime.readers() as session:
        found = (await session.execute(select(Intake.channel).join(
            Checkout, Checkout.intake_id == Intake.id).where(Checkout.ref == ref))).first()
    if found is None:
        return False, None
    return True, chat_link(runtime, found.channel)


def _render(template: str, status: int = 200, **context: object) -> web.Response:
    html = _templates.get_template(template).render(**context)
    return web.Response(text=html, status=status, content_type="text/html", headers=_HEADERS)


class OfflineCheckoutPages:
    """GET /pay/{ref} shows the price and a test-mode Pay button; POST pays via mark_paid."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def show(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        async with self.runtime.sessions() as session:
            found = await _offline_checkout(session, ref)
        if found is None:
            return page("not_found")
        checkout, intake = found
        state = checkout_state(checkout, intake, self.runtime.clock.now())
        if state in ("paid", "refunded"):
            view = await paid_view(self.runtime, checkout.ref)
            if view is not None:
                return paid_page(view, chat_link(self.runtime, intake.channel))
        if state != "payable":
            return page(state, chat_link(self.runtime, intake.channel))
        plan = self.runtime.config.product(checkout.plan)
        vehicle = " ".join(str(part) for part in (intake.vehicle_year, intake.vehicle_make,
                                                  intake.vehicle_model) if part)
        return _render("pay.html", plan=plan, ref=checkout.ref, vehicle=vehicle,
                       price=money(checkout.amount_cents, checkout.currency),
                       csrf=self._csrf(checkout.ref))

    def _csrf(self, ref: str) -> str:
        """The form's token: only a page we served for this checkout has it (test mode only,
        but the habit is kept)."""
        key = self.runtime.config.secrets.secret_key.encode()
        return hmac.new(key, f"offline-pay:{ref}".encode(), hashlib.sha256).hexdigest()

    async def pay(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if not fits(CHECKOUT_REF, ref):
            return page("not_found")
        form = await request.post()
        token = form.get("csrf")
        genuine = isinstance(token, str) and hmac.compare_digest(token, self._csrf(ref))

        async def work(uow: UnitOfWork) -> str:
            # Not locked here: mark_paid takes its locks in the engine's order.
            found = await _offline_checkout(uow.session, ref)
            if found is None:
                return "not_found"
            checkout, intake = found
            now = self.runtime.clock.now()
            state = checkout_state(checkout, intake, now)
            if state == "payable" and not genuine:
                log.warning("offline pay checkout=%s refused: no or wrong form token", ref)
                return "forbidden"
            if state == "payable":
                await mark_paid(uow, self.runtime, checkout.ref, now)
                log.info("checkout=%s paid on the offline page", checkout.ref)
                return "paid"
            return state

        state = await in_transaction(self.runtime, work)
        if state == "forbidden":
            raise web.HTTPForbidden(text="This payment form has expired; open the payment "
                                         "link from the chat again.")
        if state in ("paid", "refunded"):
            # Post/redirect/get: reloading the result page does not post again; paid a moment
            # ago or long since, the page says where the request stands now.
            raise web.HTTPSeeOther(request.app.router["offline_pay"].url_for(ref=ref))
        return page(state)


async def _offline_checkout(session: AsyncSession, ref: str) -> tuple[Checkout, Intake] | None:
    if not fits(CHECKOUT_REF, ref):
        return None
    checkout = await session.scalar(select(Checkout).where(Checkout.ref == ref))
    # A Stripe checkout is paid on Stripe only, never here.
    if checkout is None or checkout.provider != "offline":
        return None
    intake = await session.get(Intake, checkout.intake_id)
    return (checkout, intake) if intake is not None else None


class PaymentDone:
    """Stripe's success_url: checks with Stripe too, so a late webhook delays nobody."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def show(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        found, link = await landing(self.runtime, ref)
        if not found:
            return page("not_found")  # not "being confirmed": no checkout has this link
        view = await paid_view(self.runtime, ref)
        if view is None and await settle_from_provider(self.runtime, ref):
            view = await paid_view(self.runtime, ref)
        if view is not None:
            return paid_page(view, link)
        return page("done", link)

    async def cancelled(self, request: web.Request) -> web.Response:
        found, link = await landing(self.runtime, request.match_info["ref"])
        return page("checkout_cancelled", link) if found else page("not_found")


async def connect_done(request: web.Request) -> web.Response:
    return page("connect_done")


async def connect_refresh(request: web.Request) -> web.Response:
    return page("connect_refresh")
