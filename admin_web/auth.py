"""Admin sessions: a signed cookie (core.links' signing) that lapses after inactivity, a form
token per session against cross-site requests, and the login and logout pages.

The cookie names the admin, their session epoch (logging out moves it on, voiding every
cookie signed before) and a random session id; it is signed until `session_idle_minutes`
from the last page loaded, and signed afresh on every page. The form token is an HMAC of the
session id: nothing is stored to check it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from aiohttp import web

from admin_web import accounts
from admin_web.web import (
    ADMIN,
    CSRF,
    HEADERS,
    RUNTIME,
    now_of,
    render,
    runtime_of,
    secure_cookies,
    see_other,
    url,
)
from core.links import sign, verify
from core.models import Admin

log = logging.getLogger("autodoctor.admin")

SESSION_COOKIE = "autodoctor_admin"
LOGIN_COOKIE = "autodoctor_admin_login"
PURPOSE = "admin"
# Routes open without a session: the login page and its form.
PUBLIC = frozenset({"login", "login_post"})
# Routes that do not count as activity: logging out, and a page's own refresh of its list.
QUIET = frozenset({"logout", "unattended_rows", "sessions_rows"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _form_token(secret: str, kind: str, value: str) -> str:
    key = hashlib.sha256(f"autodoctor-admin-{kind}:{secret}".encode()).digest()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:40]


def client_address(request: web.Request) -> str:
    """The browser's address: the proxy's last X-Forwarded-For hop when it is trusted."""
    if request.app[RUNTIME].config.admin.trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1][:64]
    return (request.remote or "unknown")[:64]


def _cookie(request: web.Request, response: web.StreamResponse, admin: Admin, sid: str,
            now: datetime) -> None:
    config = request.app[RUNTIME].config
    idle = timedelta(minutes=config.admin.session_idle_minutes)
    token = sign(config.secrets.secret_key, PURPOSE, admin.id, f"{admin.session_epoch}-{sid}",
                 now + idle)
    response.set_cookie(SESSION_COOKIE, token, path="/admin", httponly=True, samesite="Lax",
                        secure=secure_cookies(request), max_age=int(idle.total_seconds()))


async def _session(request: web.Request) -> tuple[Admin, str] | None:
    """The active admin and session id the request's cookie names, if it is still good."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    runtime = runtime_of(request)
    grant = verify(runtime.config.secrets.secret_key, PURPOSE, token, now_of(request))
    if grant is None:
        return None
    epoch, _, sid = grant.viewer.partition("-")
    if not epoch.isdigit() or len(sid) < 16:
        return None
    async with runtime.readers() as session:
        admin = await session.get(Admin, grant.subject)
    if admin is None or not admin.is_active or admin.session_epoch != int(epoch):
        return None
    return admin, sid


def forbidden(request: web.Request, why: str) -> web.Response:
    log.warning("admin request refused path=%s: %s", request.path, why)
    return render(request, "error.html", status=403, heading="Form expired",
                  lines=["This form was not sent from a page of this site, or it was open "
                         "too long. Go back, reload the page and try again."])


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A login for every route but the login page's; a form token for every POST."""
    route = request.match_info.route.name
    if route in PUBLIC:
        return await handler(request)
    found = await _session(request)
    if found is None:
        target = request.path_qs if request.method == "GET" else url(request, "dashboard")
        refused = web.Response(status=303, headers={
            "Location": url(request, "login", {"next": target}), **HEADERS})
        if request.cookies.get(SESSION_COOKIE):
            refused.del_cookie(SESSION_COOKIE, path="/admin")
        return refused
    admin, sid = found
    request[ADMIN] = admin
    secret = runtime_of(request).config.secrets.secret_key
    request[CSRF] = _form_token(secret, "csrf", sid)
    if request.method not in ("GET", "HEAD"):
        sent = str((await request.post()).get("csrf", ""))
        if not hmac.compare_digest(sent, request[CSRF]):
            return forbidden(request, f"admin={admin.id} bad form token")
    response = await handler(request)
    if route not in QUIET:
        _cookie(request, response, admin, sid, now_of(request))  # inactivity counts anew
    return response


def _safe_next(request: web.Request, target: str | None) -> str:
    """Only a path of this site's admin pages (no other host, no scheme)."""
    if target and target.startswith("/admin") and "//" not in target and "\\" not in target \
            and not target.startswith(url(request, "login")):
        return target
    return url(request, "dashboard")


def _login_page(request: web.Request, status: int = 200, error: str | None = None,
                email: str = "", nonce: str | None = None) -> web.StreamResponse:
    nonce = nonce or request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(18)
    secret = runtime_of(request).config.secrets.secret_key
    response = render(request, "login.html", status=status, error=error, email=email,
                      login_token=_form_token(secret, "login", nonce),
                      next=_safe_next(request, request.query.get("next")))
    response.set_cookie(LOGIN_COOKIE, nonce, path="/admin", httponly=True, samesite="Lax",
                        secure=secure_cookies(request))
    return response


async def login(request: web.Request) -> web.StreamResponse:
    if await _session(request) is not None:
        return see_other(request, _safe_next(request, request.query.get("next")))
    return _login_page(request)


def _lock_text(until: datetime, now: datetime) -> str:
    minutes = max(1, -int(-(until - now).total_seconds() // 60))
    return (f"Too many failed logins for this email or from this address: login is locked "
            f"for {minutes} more minute{'s' if minutes != 1 else ''}. Try again after "
            f"{until.strftime('%H:%M')} UTC.")


async def login_post(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    runtime = runtime_of(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    sent = str(form.get("csrf", ""))
    if not nonce or not hmac.compare_digest(
            sent, _form_token(runtime.config.secrets.secret_key, "login", nonce)):
        return forbidden(request, "login without its form token")
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    now = now_of(request)
    async with runtime.transaction() as uow:
        result = await accounts.log_in(uow.session, runtime.config.admin, email, password,
                                       client_address(request), now)
    if result.admin is None:
        if result.locked_until is not None:
            error = _lock_text(result.locked_until, now)
        else:
            error = (f"Wrong email or password. {result.left} more failed "
                     f"attempt{'s' if result.left != 1 else ''} and login is locked for "
                     f"{runtime.config.admin.lockout_minutes} minutes.")
        return _login_page(request, status=429 if result.locked_until else 401, error=error,
                           email=email[:320], nonce=nonce)
    target = _safe_next(request, str(form.get("next", "")))
    response = see_other(request, target)
    _cookie(request, response, result.admin, secrets.token_urlsafe(18), now)
    response.del_cookie(LOGIN_COOKIE, path="/admin")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    runtime = runtime_of(request)
    async with runtime.transaction() as uow:
        await accounts.log_out(uow.session, request[ADMIN], now_of(request))
    response = see_other(request, url(request, "login"), "You are logged out.")
    response.del_cookie(SESSION_COOKIE, path="/admin")
    return response
