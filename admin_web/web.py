"""What every admin page shares: the app's typed keys, rendering with the house headers,
redirects with a one-time notice, and reading filters from the query string."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

from billing.pages import money
from core.models import Admin
from core.runtime import Runtime

RUNTIME = web.AppKey("admin_runtime", Runtime)
TEMPLATES = web.AppKey("admin_templates", jinja2.Environment)
# The admin whose session cookie came with the request, and the form token of that session.
ADMIN = web.RequestKey("admin", Admin)
CSRF = web.RequestKey("admin_csrf", str)

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FLASH_COOKIE = "autodoctor_admin_notice"
PAGE_ROWS = 200


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("admin_web", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    env.filters["ago"] = ago
    env.filters["minutes"] = minutes
    return env


def runtime_of(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def now_of(request: web.Request) -> datetime:
    return request.app[RUNTIME].clock.now()


def when(value: datetime | None) -> str:
    """A time as admins read it: UTC, to the minute."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value is not None else ""


def minutes(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    total = max(0, int(delta.total_seconds()))
    if total < 3600:
        return f"{total // 60} min"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def ago(value: datetime | None, now: datetime) -> str:
    return minutes(now - value) if value is not None else ""


def _mac(secret: str, payload: bytes) -> str:
    key = hashlib.sha256(f"autodoctor-admin-notice:{secret}".encode()).digest()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()[:32]


def see_other(request: web.Request, location: str, notice: str | None = None,
              kind: str = "ok") -> web.Response:
    """Post/redirect/get, with a notice the next page shows once (signed: a third party
    cannot make the site say anything)."""
    response = web.Response(status=303, headers={"Location": location, **HEADERS})
    if notice is not None:
        payload = json.dumps({"kind": kind, "text": notice[:500]}).encode()
        secret = request.app[RUNTIME].config.secrets.secret_key
        value = f"{base64.urlsafe_b64encode(payload).decode()}.{_mac(secret, payload)}"
        response.set_cookie(FLASH_COOKIE, value, path="/admin", httponly=True,
                            samesite="Lax", max_age=120, secure=secure_cookies(request))
    return response


def _notice(request: web.Request) -> dict[str, str] | None:
    value = request.cookies.get(FLASH_COOKIE)
    if not value or "." not in value:
        return None
    encoded, _, mac = value.rpartition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded)
    except (binascii.Error, ValueError):
        return None
    secret = request.app[RUNTIME].config.secrets.secret_key
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    try:
        notice = json.loads(payload)
    except ValueError:
        return None
    return {"kind": str(notice.get("kind", "ok")), "text": str(notice.get("text", ""))}


def secure_cookies(request: web.Request) -> bool:
    return request.app[RUNTIME].config.public_url.startswith("https://")


def url(request: web.Request, name: str, query: Mapping[str, str] | None = None,
        **parts: str) -> str:
    """The path of a named admin route."""
    found = request.app.router[name].url_for(**parts)
    return str(found.with_query(query) if query else found)


def render(request: web.Request, template: str, status: int = 200,
           **context: Any) -> web.Response:
    """A page in the admin layout, escaped, with the house's security headers."""
    notice = _notice(request)
    admin = request.get(ADMIN)
    html = request.app[TEMPLATES].get_template(template).render(
        admin=admin, csrf=request.get(CSRF, ""), notice=notice, path=request.path,
        now=now_of(request), money=_money(request),
        url=lambda name, **parts: url(request, name, **parts), **context)
    response = web.Response(text=html, status=status, content_type="text/html",
                            headers=HEADERS)
    if notice is not None:
        response.del_cookie(FLASH_COOKIE, path="/admin")
    return response


def _money(request: web.Request) -> Callable[[int | None], str]:
    currency = request.app[RUNTIME].config.billing.currency

    def format_money(cents: int | None) -> str:
        return money(cents or 0, currency)
    return format_money


def csv_response(text: str, filename: str) -> web.Response:
    return web.Response(text=text, content_type="text/csv", charset="utf-8", headers={
        **HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'})


def svg(markup: str) -> Markup:
    """SVG made by a library from our own data (a QR code), trusted as markup."""
    return Markup(markup)


# --- filters from the query string --------------------------------------------------------


def day(value: str | None) -> date | None:
    """A YYYY-MM-DD from a form; None when empty or not a date."""
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def day_start(value: date | None) -> datetime | None:
    return datetime.combine(value, time(), UTC) if value is not None else None


def day_end(value: date | None) -> datetime | None:
    """The start of the next day: a range `until` includes its whole last day."""
    return datetime.combine(value + timedelta(days=1), time(), UTC) if value else None


def choice(value: str | None, allowed: tuple[str, ...] | list[str]) -> str | None:
    return value if value in allowed else None


def number(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 12:
        return None
    return int(value.strip())


def text_filter(value: str | None, limit: int = 100) -> str:
    return (value or "").strip()[:limit]
