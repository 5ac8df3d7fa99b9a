"""The admin sub-application: its routes, its middlewares (errors outermost, then the login
and form-token guard) and its typed state."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from admin_web import audit, auth, dashboard, intakes, mechanics, money, queue, sessions
from admin_web.auth import Handler
from admin_web.web import HEADERS, RUNTIME, TEMPLATES, render, templates
from core.runtime import Runtime

log = logging.getLogger("autodoctor.admin")

SCRIPT = Path(__file__).resolve().parent / "static" / "admin.js"


async def script(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(SCRIPT, headers={
        **HEADERS, "Content-Type": "application/javascript; charset=utf-8"})


# (method, path under /admin, handler, name): every route but the login page's needs a login
# (auth.guard), which tests/admin_web/test_security.py checks of each one listed here.
ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/login", auth.login, "login"),
    ("POST", "/login", auth.login_post, "login_post"),
    ("POST", "/logout", auth.logout, "logout"),
    ("GET", "", dashboard.dashboard, "dashboard"),
    ("GET", "/", dashboard.dashboard, "dashboard_slash"),
    ("GET", "/admin.js", script, "script"),
    ("GET", "/unattended", queue.unattended, "unattended"),
    ("GET", "/unattended/rows", queue.unattended_rows, "unattended_rows"),
    ("POST", "/requests/{ref}/assign", queue.assign, "assign"),
    ("POST", "/requests/{ref}/cancel", queue.cancel, "cancel_request"),
    ("GET", "/sessions", sessions.sessions, "sessions"),
    ("GET", "/sessions.csv", sessions.sessions_csv, "sessions_csv"),
    ("GET", "/sessions/rows", sessions.session_rows_fragment, "sessions_rows"),
    ("GET", "/sessions/{id}", sessions.session_detail, "session"),
    ("POST", "/sessions/{id}/end", sessions.end_session, "end_session"),
    ("POST", "/sessions/{id}/cancel", sessions.cancel_session, "cancel_session"),
    ("GET", "/sessions/{id}/observe", sessions.observe, "observe"),
    ("POST", "/sweeps", sessions.sweeps, "sweeps"),
    ("GET", "/files/{public_id}", sessions.file, "file"),
    ("GET", "/intakes", intakes.intakes, "intakes"),
    ("GET", "/intakes.csv", intakes.intakes_csv, "intakes_csv"),
    ("GET", "/intakes/{id}", intakes.intake_detail, "intake"),
    ("POST", "/intakes/{id}/status", intakes.intake_status, "intake_status"),
    ("GET", "/mechanics", mechanics.mechanics, "mechanics"),
    ("POST", "/mechanics/invite", mechanics.invite, "invite"),
    ("GET", "/mechanics/{id}", mechanics.mechanic_detail, "mechanic"),
    ("POST", "/mechanics/{id}/invite", mechanics.invite, "reinvite"),
    ("POST", "/mechanics/{id}/{flag}", mechanics.switch, "mechanic_switch"),
    ("GET", "/money", money.money, "money"),
    ("GET", "/money.csv", money.money_csv, "money_csv"),
    ("GET", "/audit", audit.audit_log, "audit"),
]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 and 500 as pages of the site (the details of a 500 go to the log only)."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return render(request, "error.html", status=404, heading="Not found",
                      lines=["There is no such page, or what it showed no longer exists."])
    except web.HTTPException:
        raise
    except Exception:
        log.exception("admin page failed path=%s", request.path)
        return render(request, "error.html", status=500, heading="Something went wrong",
                      lines=["The error is in the service's log. Nothing was half-done: "
                             "each change is one transaction. Try again, or go back."])


def create_admin_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[errors, auth.guard])
    app[RUNTIME] = runtime
    app[TEMPLATES] = templates()
    for method, path, handler, name in ROUTES:
        app.router.add_route(method, path, handler, name=name)
    return app
