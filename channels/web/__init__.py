"""The web channel: the widget's WebSocket, its scripts, uploads, the demo page and the
mechanic workspace."""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web

from channels.web.assets import Script
from channels.web.console import ConsoleState
from channels.web.guards import Guards
from channels.web.records import Records
from channels.web.upload import WidgetUpload
from channels.web.ws import WidgetSocket
from core.engine import Engine
from core.runtime import Runtime

HERE = Path(__file__).resolve().parent
_pages = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                            autoescape=True)


def setup(app: web.Application, runtime: Runtime, engine: Engine) -> WidgetSocket:
    """Add the widget's routes to the app; returns its sockets (a drain closes them)."""
    guards = Guards(runtime)
    socket = WidgetSocket(runtime, engine, guards)
    upload = WidgetUpload(runtime, guards)
    widget_js = Script(HERE / "static" / "widget.js")
    console_js = Script(HERE / "static" / "console.js")

    async def demo(request: web.Request) -> web.Response:
        return _page("demo.html")

    async def mechanic_console(request: web.Request) -> web.Response:
        return _page("mechanic.html", invite=request.match_info["invite"][:64])

    async def terms(request: web.Request) -> web.Response:
        # The configured text, escaped by the template; paragraphs apart by a blank line.
        shown = runtime.config.terms
        paragraphs = [" ".join(p.split()) for p in shown.text.split("\n\n") if p.strip()]
        return _page("terms.html", version=shown.version, paragraphs=paragraphs)

    app.on_shutdown.append(socket.close_all)
    app.router.add_get("/", demo, name="demo")
    app.router.add_get("/widget.js", widget_js.handle, name="widget_js")
    app.router.add_get("/console.js", console_js.handle, name="console_js")
    app.router.add_get("/console/state", ConsoleState(runtime).handle, name="console_state")
    app.router.add_get("/ws/widget", socket.handle, name="widget_ws")
    app.router.add_post("/widget/upload", upload.handle, name="widget_upload")
    app.router.add_route("OPTIONS", "/widget/upload", upload.preflight)
    app.router.add_get("/m/{invite}", mechanic_console, name="mechanic_console")
    app.router.add_get("/terms", terms, name="terms")
    records = Records(runtime)
    app.router.add_get("/f/{token}", records.file, name="file_link")
    app.router.add_get("/s/{token}", records.record, name="session_record")
    return socket


def _page(name: str, **context: object) -> web.Response:
    html = _pages.get_template(name).render(**context)
    return web.Response(text=html, content_type="text/html", headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "style-src 'self' 'unsafe-inline'; connect-src 'self'",
        "X-Content-Type-Options": "nosniff"})
