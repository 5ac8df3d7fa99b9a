"""What every HTTP answer of the service goes through: request counts, a friendly 503 while the
database is down, no server version in the headers; /healthz, /metrics and the favicon."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError

from bot.drain import DRAIN
from core.db import ping
from core.runtime import Runtime

log = logging.getLogger("autodoctor.http")

RUNTIME = web.AppKey("runtime", Runtime)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LOOPBACK = frozenset({"127.0.0.1", "::1"})
# The channels delivered through the outbox (the widget reads the transcript).
_DELIVERED = ("telegram", "sms")
_STATIC = Path(__file__).resolve().parent / "static"
# The icon changes with a release at most: browsers keep it a week, then revalidate (ETag).
_ICON_HEADERS = {"Cache-Control": "public, max-age=604800", "X-Content-Type-Options": "nosniff"}

_DOWN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Back in a moment · AutoDoctor</title></head>
<body style="font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem">
<h1>Back in a moment</h1><p>We can't reach our records right now. Nothing you sent is lost:
please try again in a minute.</p></body></html>"""


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        request.app[RUNTIME].metrics.http_requests.labels(
            request.method, route, str(status)).inc()


@web.middleware
async def database_down(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A page that failed because the database is unreachable answers 503 with a friendly
    page (the widget reconnects; webhooks are redelivered), not a 500 and a traceback."""
    try:
        return await handler(request)
    except (DBAPIError, OSError) as exc:
        runtime = request.app[RUNTIME]
        if await ping(runtime.engine):
            raise
        runtime.metrics.db_up.set(0)
        log.warning("%s %s: database unreachable (%s)", request.method, request.path,
                    type(exc).__name__)
        return web.Response(text=_DOWN_PAGE, status=503, content_type="text/html",
                            headers={"Retry-After": "30"})


async def plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """No framework or Python version in the answers (aiohttp names both by default)."""
    response.headers["Server"] = "AutoDoctor"


async def healthz(request: web.Request) -> web.Response:
    """ok (200), degraded when the database is down (503), draining after SIGTERM (503: a
    proxy takes the process out; bot/drain.py)."""
    runtime = request.app[RUNTIME]
    up = await ping(runtime.engine)
    runtime.metrics.db_up.set(1 if up else 0)
    db = "ok" if up else "down"
    drain = request.config_dict.get(DRAIN)
    if drain is not None and drain.draining:
        return web.json_response({"status": "draining", "db": db}, status=503,
                                 headers={"Retry-After": drain.retry_after()})
    if up:
        return web.json_response({"status": "ok", "db": db})
    return web.json_response({"status": "degraded", "db": db}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text. With AUTODOCTOR_METRICS_TOKEN set it takes `Authorization: Bearer
    <token>`; without it, it answers only this machine (and never in production)."""
    runtime = request.app[RUNTIME]
    token = runtime.config.secrets.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"})
    elif runtime.config.environment == "production" or request.remote not in _LOOPBACK:
        raise web.HTTPNotFound()
    try:
        async with runtime.readers() as session:
            await runtime.metrics.read_gauges(session, runtime.clock.now(), [
                channel for channel in _DELIVERED if runtime.config.channel_status()[channel]])
    except (DBAPIError, OSError) as exc:
        # The counters still answer; the database's gauges keep their last values.
        log.warning("metrics: database gauges not read (%s)", type(exc).__name__)
    body = generate_latest(runtime.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_favicon(app: web.Application) -> None:
    """/favicon.ico (what browsers ask for by themselves) and /favicon.svg (what the pages'
    <link rel="icon"> names), both from bot/static."""
    for name in ("favicon.ico", "favicon.svg"):
        app.router.add_get(f"/{name}", _static_file(_STATIC / name), name=name.replace(".", "_"))


def _static_file(path: Path) -> Handler:
    async def send(request: web.Request) -> web.StreamResponse:
        # FileResponse answers If-None-Match / If-Modified-Since with 304 itself.
        return web.FileResponse(path, headers=_ICON_HEADERS)

    return send
