"""The admin site (aiohttp + jinja2), mounted at /admin: login, dashboard, the unattended
queue and assignment, sessions, intakes, mechanics, money, the audit log, CSV exports."""

from __future__ import annotations

from aiohttp import web

from core.runtime import Runtime


def setup(app: web.Application, runtime: Runtime) -> web.Application:
    """Mount the admin site at /admin on the service's app; returns the sub-application."""
    from admin_web.routes import create_admin_app

    admin = create_admin_app(runtime)
    app.add_subapp("/admin", admin)
    return admin


__all__ = ["setup"]
