"""A Stripe API stand-in on 127.0.0.1 that speaks Stripe's wire format.

Requests come in form-encoded with Stripe's nested keys (``metadata[intake]=7``,
``line_items[0][price_data][unit_amount]=2999``) and a Bearer key; answers are Stripe's JSON
objects (``"object": "checkout.session"``) or its error envelope (``{"error": {...}}``).
Like Stripe, a POST repeated with the same Idempotency-Key replays the first answer, and a key
reused with other parameters is an ``idempotency_error``. The stand-in also plays Stripe's
side of a payment (``complete_session``), builds events, and delivers them signed with
Stripe's signature scheme (the stripe library's own signing helper).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import stripe
from aiohttp import web

PAYMENT_METHOD_MIN_CENTS = 50
WEBHOOK_PATH = "/webhooks/stripe"


class _Poster(Protocol):
    """What send_event needs from aiohttp's TestClient."""

    async def post(self, path: str, **kwargs: Any) -> Any: ...


@dataclass
class Call:
    """One request the stand-in received, as it arrived."""

    method: str
    path: str
    form: dict[str, str]
    params: dict[str, Any]
    idempotency_key: str | None
    headers: dict[str, str]
    status: int = 0
    replayed: bool = False


@dataclass
class _Stored:
    method: str
    path: str
    form: dict[str, str]
    status: int
    body: dict[str, Any]


class StripeApiError(Exception):
    """An error answer in Stripe's envelope. `saved`: kept for idempotent replay (Stripe
    keeps results only once an endpoint began executing, not parameter validation errors)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, saved: bool = True) -> None:
        super().__init__(message)
        self.status, self.saved = status, saved
        self.body: dict[str, Any] = {"error": {"type": type, "message": message}}
        if code:
            self.body["error"]["code"] = code
            self.body["error"]["doc_url"] = f"https://stripe.com/docs/error-codes/{code}"
        if param:
            self.body["error"]["param"] = param


def _invalid(message: str, param: str | None = None) -> StripeApiError:
    return StripeApiError(400, message, code="parameter_invalid" if param else None,
                          param=param, saved=False)


def _missing(param: str) -> StripeApiError:
    return StripeApiError(400, f"Missing required param: {param}.", code="parameter_missing",
                          param=param, saved=False)


def _no_such(kind: str, id: str, param: str) -> StripeApiError:
    return StripeApiError(404 if param == "id" else 400, f"No such {kind}: '{id}'",
                          code="resource_missing", param=param)


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's nested form keys into objects: a[b][0][c]=1 → {"a": {"b": [{"c": "1"}]}}."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if parts:
            node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _int(params: dict[str, Any], key: str, param: str | None = None) -> int:
    raw = params.get(key)
    if raw is None or raw == "":
        raise _missing(param or key)
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise _invalid(f"Invalid integer: {raw}", param or key) from None


def _bool(raw: Any) -> bool:
    return str(raw).lower() == "true"


def _metadata(params: dict[str, Any], param: str = "metadata") -> dict[str, str]:
    metadata = params.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _invalid("Invalid object", param)
    if len(metadata) > 50:
        raise _invalid("Metadata can have at most 50 keys.", param)
    for key, value in metadata.items():
        if len(key) > 40 or len(str(value)) > 500:
            raise _invalid("Metadata keys are limited to 40 characters and values to 500.",
                           f"{param}[{key}]")
    return {str(k): str(v) for k, v in metadata.items()}


@dataclass
class StripeStandin:
    """Start with ``await StripeStandin().start()`` (or ``async with``); ``url`` is its base."""

    api_key: str = "sk_test_standin"
    now: Callable[[], float] = time.time
    calls: list[Call] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""

    def __post_init__(self) -> None:
        self._idempotent: dict[str, _Stored] = {}
        self._failures: list[tuple[int, bool]] = []
        # Idempotency keys of requests under way, and how long the next POST takes.
        self._in_flight: set[str] = set()
        self._next_delay = 0.0
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., dict[str, Any]]]] = [
            ("POST", re.compile(r"/v1/checkout/sessions"), self._create_session),
            ("GET", re.compile(r"/v1/checkout/sessions/(?P<id>[^/]+)"), self._get_session),
            ("POST", re.compile(r"/v1/checkout/sessions/(?P<id>[^/]+)/expire"),
             self._expire_session),
            ("GET", re.compile(r"/v1/payment_intents/(?P<id>[^/]+)"), self._get_intent),
            ("GET", re.compile(r"/v1/charges/(?P<id>[^/]+)"), self._get_charge),
            ("POST", re.compile(r"/v1/refunds"), self._create_refund),
            ("POST", re.compile(r"/v1/accounts"), self._create_account),
            ("GET", re.compile(r"/v1/accounts/(?P<id>[^/]+)"), self._get_account),
            ("POST", re.compile(r"/v1/account_links"), self._create_account_link),
            ("POST", re.compile(r"/v1/transfers"), self._create_transfer),
        ]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> StripeStandin:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> StripeStandin:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ test controls

    def fail_next(self, count: int = 1, status: int = 500, *, saved: bool = False) -> None:
        """Answer the next `count` API calls with `status`. An outage saves nothing; with
        `saved`, the error came once the endpoint had begun executing, and Stripe saves it:
        the same idempotency key replays it."""
        self._failures.extend([(status, saved)] * count)

    def slow_next(self, seconds: float) -> None:
        """The next POST takes this long: one with the same idempotency key meanwhile is
        answered 409, as Stripe does."""
        self._next_delay = seconds

    def calls_to(self, method: str, path: str) -> list[Call]:
        """Calls with this method and exact path, in order (failed ones included)."""
        return [c for c in self.calls if c.method == method and c.path == path]

    def add_price(self, unit_amount: int, currency: str = "usd",
                  price_id: str | None = None) -> str:
        price_id = price_id or self._id("price")
        self.prices[price_id] = {"id": price_id, "object": "price", "active": True,
                                 "currency": currency, "unit_amount": unit_amount,
                                 "type": "one_time"}
        return price_id

    def complete_session(self, session_id: str, *, payment_status: str = "paid"
                         ) -> dict[str, Any]:
        """The customer pays on the hosted page: a PaymentIntent and a charge appear.

        payment_status "unpaid" is a delayed method (bank debit) still processing.
        """
        checkout = self.sessions[session_id]
        if checkout["status"] != "open":
            raise ValueError(f"session {session_id} is {checkout['status']}, not open")
        intent_data = checkout.pop("_payment_intent_data", {})
        pi, ch = self._id("pi"), self._id("ch")
        paid = payment_status == "paid"
        common = {"amount": checkout["amount_total"], "currency": checkout["currency"],
                  "metadata": dict(intent_data.get("metadata") or {}),
                  "transfer_group": intent_data.get("transfer_group"), "livemode": False,
                  "created": int(self.now())}
        self.charges[ch] = {"id": ch, "object": "charge", **common, "payment_intent": pi,
                            "amount_captured": checkout["amount_total"] if paid else 0,
                            "amount_refunded": 0, "refunded": False, "paid": paid,
                            # Stripe's hosted receipt (null only for some charges; tests
                            # set it to None to see the page do without).
                            "receipt_url": "https://pay.stripe.com/receipts/payment/"
                                           + secrets.token_urlsafe(48),
                            "status": "succeeded" if paid else "pending",
                            "refunds": {"object": "list", "data": [], "has_more": False}}
        self.payment_intents[pi] = {"id": pi, "object": "payment_intent", **common,
                                    "status": "succeeded" if paid else "processing",
                                    "latest_charge": ch}
        checkout.update(status="complete", payment_status=payment_status,
                        payment_intent=pi, url=None)
        return copy.deepcopy(checkout)

    def settle_async_payment(self, session_id: str, succeeded: bool) -> dict[str, Any]:
        """A delayed payment settles (async_payment_succeeded) or fails."""
        checkout = self.sessions[session_id]
        pi = self.payment_intents[checkout["payment_intent"]]
        charge = self.charges[pi["latest_charge"]]
        pi["status"] = "succeeded" if succeeded else "requires_payment_method"
        charge.update(paid=succeeded, status="succeeded" if succeeded else "failed")
        checkout["payment_status"] = "paid" if succeeded else "unpaid"
        return copy.deepcopy(checkout)

    def expire_session_now(self, session_id: str) -> dict[str, Any]:
        """The session's expires_at passes unpaid."""
        checkout = self.sessions[session_id]
        checkout.update(status="expired", url=None)
        return copy.deepcopy(checkout)

    def activate_account(self, account_id: str) -> dict[str, Any]:
        """The mechanic finishes onboarding: the account can receive transfers."""
        account = self.accounts[account_id]
        account.update(charges_enabled=True, payouts_enabled=True, details_submitted=True,
                       capabilities={"transfers": "active"})
        return copy.deepcopy(account)

    def event(self, type: str, obj: dict[str, Any]) -> dict[str, Any]:
        """A Stripe event envelope around a snapshot of obj."""
        return {"id": self._id("evt"), "object": "event",
                "api_version": stripe.api_version, "created": int(self.now()),
                "data": {"object": copy.deepcopy(obj)}, "livemode": False,
                "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
                "type": type}

    @staticmethod
    def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
        """The Stripe-Signature header: t=…,v1=HMAC-SHA256(secret, f"{t}.{payload}")."""
        return str(stripe.WebhookSignature.generate_signature_header(
            payload, secret, timestamp=timestamp))

    async def send_event(self, target: _Poster | str, event: dict[str, Any], secret: str, *,
                         timestamp: int | None = None, signature: str | None = None,
                         signed: bool = True, path: str = WEBHOOK_PATH) -> tuple[int, str]:
        """POST the event as Stripe does; target is aiohttp's TestClient or a base URL."""
        payload = json.dumps(event, indent=2)
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        elif signed:
            headers["Stripe-Signature"] = self.sign(payload, secret, timestamp)
        if isinstance(target, str):
            async with aiohttp.ClientSession() as http, http.post(
                    target.rstrip("/") + path, data=payload.encode(), headers=headers) as resp:
                return resp.status, await resp.text()
        resp = await target.post(path, data=payload.encode(), headers=headers)
        return int(resp.status), str(await resp.text())

    async def deliver(self, target: _Poster | str, event: dict[str, Any], secret: str, *,
                      attempts: int = 3) -> list[int]:
        """Deliver an event as Stripe does: again after any answer that is not 2xx (Stripe
        retries for days with backoff; here at once), until one is or `attempts` run out.
        Returns each attempt's status."""
        statuses: list[int] = []
        for _ in range(attempts):
            status, _body = await self.send_event(target, event, secret)
            statuses.append(status)
            if 200 <= status < 300:
                break
        return statuses

    # ------------------------------------------------------------------ HTTP

    def _id(self, prefix: str) -> str:
        return f"{prefix}_test_{secrets.token_hex(12)}"

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            pairs = list(request.query.items())
        else:
            pairs = [(k, str(v)) for k, v in (await request.post()).items()]
        form = dict(pairs)
        key = request.headers.get("Idempotency-Key")
        call = Call(method=request.method, path=request.path, form=form,
                    params=parse_form(pairs), idempotency_key=key,
                    headers=dict(request.headers))
        self.calls.append(call)
        if key and request.method == "POST":
            if key in self._in_flight:
                call.status = 409
                return web.json_response(StripeApiError(
                    409, "There is currently another in-progress request using this "
                    "Idempotent Key (that probably means you submitted twice, and the other "
                    "request is still going through): " + key + ". Please try again later.",
                    type="idempotency_error").body, status=409)
            delay, self._next_delay = self._next_delay, 0.0
            self._in_flight.add(key)
            try:
                await asyncio.sleep(delay)
                status, body, replayed = self._answer(request, call)
            finally:
                self._in_flight.discard(key)
        else:
            status, body, replayed = self._answer(request, call)
        call.status, call.replayed = status, replayed
        headers = {"Request-Id": self._id("req"),
                   "Stripe-Version": request.headers.get("Stripe-Version", stripe.api_version)}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        if key and request.method == "POST":
            headers["Idempotency-Key"] = key
        return web.json_response(body, status=status, headers=headers)

    def _answer(self, request: web.Request,
                call: Call) -> tuple[int, dict[str, Any], bool]:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, StripeApiError(401, "Invalid API Key provided: sk_test_****").body, False
        key = call.idempotency_key if call.method == "POST" else None
        if self._failures and (key is None or key not in self._idempotent):
            status, saved = self._failures.pop(0)
            body = {"error": {"type": "api_error", "message": "An unknown error occurred"}}
            if saved and key is not None:
                self._idempotent[key] = _Stored(call.method, call.path, call.form, status,
                                                copy.deepcopy(body))
            return status, body, False
        if key is not None and key in self._idempotent:
            stored = self._idempotent[key]
            if (stored.method, stored.path, stored.form) != (call.method, call.path, call.form):
                error = StripeApiError(
                    400, "Keys for idempotent requests can only be used with the same "
                    f"parameters they were first used with. Try using a key other than '{key}' "
                    "if you meant to execute a different request.", type="idempotency_error")
                return 400, error.body, False
            return stored.status, copy.deepcopy(stored.body), True
        status, body, saved = self._dispatch(call)
        if key is not None and saved:
            self._idempotent[key] = _Stored(call.method, call.path, call.form, status,
                                            copy.deepcopy(body))
        return status, body, False

    def _dispatch(self, call: Call) -> tuple[int, dict[str, Any], bool]:
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(call.path)
            if match and method == call.method:
                try:
                    return 200, handler(call.params, **match.groupdict()), True
                except StripeApiError as exc:
                    return exc.status, exc.body, exc.saved
        error = StripeApiError(404, f"Unrecognized request URL ({call.method}: {call.path}).",
                               saved=False)
        return 404, error.body, False

    # ------------------------------------------------------------------ Checkout

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode") or ""
        if not mode:
            raise _missing("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise _invalid("Invalid mode: must be one of payment, setup, or subscription",
                           "mode")
        items = params.get("line_items") or []
        if mode == "payment" and not items:
            raise _invalid("`line_items` is required in `payment` mode.", "line_items")
        total, currency = 0, None
        for n, item in enumerate(items):
            amount, item_currency = self._line_item(item, f"line_items[{n}]")
            if currency is not None and item_currency != currency:
                raise _invalid("All line items must use the same currency.", "line_items")
            currency = item_currency
            total += amount
        if total < PAYMENT_METHOD_MIN_CENTS:
            raise _invalid("The Checkout Session's total amount due must add up to at least "
                           "$0.50 usd", "line_items")
        created = int(self.now())
        expires_at = created + 86400
        if params.get("expires_at"):
            expires_at = _int(params, "expires_at")
            if expires_at < created + 1800:
                raise _invalid("The `expires_at` timestamp must be at least 30 minutes from "
                               "Checkout Session creation.", "expires_at")
            if expires_at > created + 86400:
                raise _invalid("The `expires_at` timestamp must be less than 24 hours from "
                               "Checkout Session creation.", "expires_at")
        reference = params.get("client_reference_id")
        if reference is not None and len(reference) > 200:
            raise _invalid("client_reference_id must be at most 200 characters",
                           "client_reference_id")
        intent_data = params.get("payment_intent_data") or {}
        if intent_data:
            _metadata(intent_data, "payment_intent_data[metadata]")
        session_id = self._id("cs")
        session = {
            "id": session_id, "object": "checkout.session", "amount_subtotal": total,
            "amount_total": total, "cancel_url": params.get("cancel_url"),
            "client_reference_id": reference, "created": created, "currency": currency,
            "customer": params.get("customer"), "expires_at": expires_at, "livemode": False,
            "metadata": _metadata(params), "mode": mode, "payment_intent": None,
            "payment_status": "unpaid", "status": "open",
            "success_url": params.get("success_url"),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.sessions[session_id] = {**session, "_payment_intent_data": intent_data}
        return session

    def _line_item(self, item: dict[str, Any], param: str) -> tuple[int, str]:
        quantity = _int(item, "quantity", f"{param}[quantity]")
        if "price" in item and "price_data" in item:
            raise _invalid("You may only specify one of these parameters: price, price_data.",
                           param)
        if "price" in item:
            price = self.prices.get(item["price"])
            if price is None:
                raise _no_such("price", item["price"], f"{param}[price]")
            return int(price["unit_amount"]) * quantity, str(price["currency"])
        data = item.get("price_data")
        if not isinstance(data, dict):
            raise _invalid("You must specify either `price` or `price_data` in each line item.",
                           param)
        currency = data.get("currency") or ""
        if not currency:
            raise _missing(f"{param}[price_data][currency]")
        unit_amount = _int(data, "unit_amount", f"{param}[price_data][unit_amount]")
        if unit_amount < 0:
            raise _invalid("Invalid non-negative integer", f"{param}[price_data][unit_amount]")
        product = data.get("product_data")
        if not data.get("product") and not (isinstance(product, dict) and product.get("name")):
            raise _missing(f"{param}[price_data][product_data][name]")
        return unit_amount * quantity, currency

    def _session(self, id: str) -> dict[str, Any]:
        session = self.sessions.get(id)
        if session is None:
            raise _no_such("checkout.session", id, "id")
        return session

    def _public(self, session: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in session.items() if not k.startswith("_")}

    def _get_session(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        return self._public(self._session(id))

    def _expire_session(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        session = self._session(id)
        if session["status"] != "open":
            raise StripeApiError(400, 'Only Checkout Sessions with a status in ["open"] can '
                                 "be expired.", code="checkout_session_not_open")
        session.update(status="expired", url=None)
        return self._public(session)

    def _get_intent(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        intent = self.payment_intents.get(id)
        if intent is None:
            raise _no_such("payment_intent", id, "id")
        found = copy.deepcopy(intent)
        if "latest_charge" in (params.get("expand") or []) and found.get("latest_charge"):
            found["latest_charge"] = copy.deepcopy(self.charges[found["latest_charge"]])
        return found

    def _get_charge(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        charge = self.charges.get(id)
        if charge is None:
            raise _no_such("charge", id, "id")
        return copy.deepcopy(charge)

    # ------------------------------------------------------------------ refunds

    def _create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        charge_id = params.get("charge")
        if params.get("payment_intent"):
            intent = self.payment_intents.get(params["payment_intent"])
            if intent is None:
                raise _no_such("payment_intent", params["payment_intent"], "payment_intent")
            charge_id = intent["latest_charge"]
        if not charge_id:
            raise _invalid("One of `charge` or `payment_intent` is required.")
        charge = self.charges.get(charge_id)
        if charge is None:
            raise _no_such("charge", charge_id, "charge")
        reason = params.get("reason")
        if reason and reason not in ("duplicate", "fraudulent", "requested_by_customer"):
            raise _invalid("Invalid reason: must be one of duplicate, fraudulent, or "
                           "requested_by_customer", "reason")
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeApiError(400, f"Charge {charge_id} has already been refunded.",
                                 code="charge_already_refunded")
        amount = _int(params, "amount") if params.get("amount") else remaining
        if amount > remaining:
            raise StripeApiError(400, f"Refund amount ({amount}) is greater than unrefunded "
                                 f"amount on charge ({remaining})", code="amount_too_large",
                                 param="amount")
        refund_id = self._id("re")
        refund = {"id": refund_id, "object": "refund", "amount": amount, "charge": charge_id,
                  "created": int(self.now()), "currency": charge["currency"],
                  "metadata": _metadata(params), "payment_intent": charge["payment_intent"],
                  "reason": reason, "status": "succeeded"}
        self.refunds[refund_id] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        charge["refunds"]["data"].insert(0, copy.deepcopy(refund))
        return copy.deepcopy(refund)

    # ------------------------------------------------------------------ Connect

    def _create_account(self, params: dict[str, Any]) -> dict[str, Any]:
        account_type = params.get("type")
        if account_type and account_type not in ("express", "standard", "custom"):
            raise _invalid("Invalid type: must be one of custom, express, or standard", "type")
        account_id = f"acct_{secrets.token_hex(8)}"
        requested = params.get("capabilities") or {}
        account = {
            "id": account_id, "object": "account", "type": account_type or "standard",
            "country": params.get("country", "US"), "email": params.get("email"),
            "charges_enabled": False, "payouts_enabled": False, "details_submitted": False,
            "capabilities": {name: "inactive" for name, spec in requested.items()
                             if _bool((spec or {}).get("requested"))},
            "business_profile": params.get("business_profile") or {},
            "metadata": _metadata(params), "created": int(self.now()),
        }
        self.accounts[account_id] = account
        return copy.deepcopy(account)

    def _get_account(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        account = self.accounts.get(id)
        if account is None:
            raise StripeApiError(
                403, "The provided key does not have access to account "
                f"'{id}' (or that account does not exist). Application access may have "
                "been revoked.", type="invalid_request_error", code="account_invalid")
        return copy.deepcopy(account)

    def _create_account_link(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("account", "type"):
            if not params.get(name):
                raise _missing(name)
        if params["account"] not in self.accounts:
            raise _no_such("account", params["account"], "account")
        if params["type"] not in ("account_onboarding", "account_update"):
            raise _invalid("Invalid type: must be one of account_onboarding or account_update",
                           "type")
        if params["type"] == "account_onboarding" and not params.get("refresh_url"):
            raise _missing("refresh_url")
        created = int(self.now())
        return {"object": "account_link", "created": created, "expires_at": created + 300,
                "url": f"https://connect.stripe.com/setup/e/{params['account']}/"
                       f"{secrets.token_urlsafe(12)}"}

    def _create_transfer(self, params: dict[str, Any]) -> dict[str, Any]:
        amount = _int(params, "amount")
        currency = params.get("currency") or ""
        if not currency:
            raise _missing("currency")
        destination = params.get("destination") or ""
        if not destination:
            raise _missing("destination")
        account = self.accounts.get(destination)
        if account is None:
            raise _no_such("destination", destination, "destination")
        if account["capabilities"].get("transfers") != "active":
            raise StripeApiError(
                400, "Your destination account needs to have at least one of the following "
                "capabilities enabled: transfers, crypto_transfers, legacy_payments",
                code="insufficient_capabilities_for_transfer", param="destination")
        source = params.get("source_transaction")
        if source:
            charge = self.charges.get(source)
            if charge is None:
                raise _no_such("charge", source, "source_transaction")
            if amount > charge["amount"] - charge["amount_refunded"]:
                raise StripeApiError(400, "Transfer amount exceeds the source transaction's "
                                     "available amount.", code="amount_too_large",
                                     param="amount")
        transfer_id = self._id("tr")
        transfer = {"id": transfer_id, "object": "transfer", "amount": amount,
                    "currency": currency, "created": int(self.now()),
                    "destination": destination, "metadata": _metadata(params),
                    "reversed": False, "source_transaction": source,
                    "transfer_group": params.get("transfer_group")}
        self.transfers[transfer_id] = transfer
        return copy.deepcopy(transfer)
