"""The composition root: create_app wires every part of the service; no globals."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

import channels.web
from billing.offline import OfflinePayments
from bot.flows import route
from bot.texts import text
from core.clock import Clock
from core.config import Config
from core.db import create_engine, ping
from core.engine import Engine
from core.payments import PaymentPort
from core.runtime import Runtime

log = logging.getLogger("autodoctor.app")

RUNTIME = web.AppKey("runtime", Runtime)
ENGINE = web.AppKey("engine", Engine)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: Config, *, engine: AsyncEngine | None = None,
               clock: Clock | None = None, payments: PaymentPort | None = None,
               **overrides: Any) -> web.Application:
    """Build the aiohttp application; overrides swap one part (tests, local runs)."""
    if overrides:
        raise TypeError(f"create_app got unknown overrides: {', '.join(sorted(overrides))}")
    owns_engine = engine is None
    if engine is None:
        engine = create_engine(config.database_url,
                               busy_timeout_ms=config.database.sqlite_busy_timeout_ms,
                               echo=config.database.echo)
    runtime = Runtime.build(config, engine, payments or OfflinePayments(config), text,
                            clock)
    conversation_engine = Engine(runtime, route)

    app = web.Application(middlewares=[_metrics_middleware],
                          client_max_size=config.uploads.max_bytes + 256 * 1024)
    app[RUNTIME] = runtime
    app[ENGINE] = conversation_engine
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics, name="metrics")
    channels.web.setup(app, runtime, conversation_engine)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        for channel, enabled in config.channel_status().items():
            log.info("channel %s: %s", channel, "on" if enabled else _off_reason(channel))
        yield
        if owns_engine:
            await engine.dispose()

    app.cleanup_ctx.append(lifecycle)
    return app


_SECRETS_NEEDED = {
    "telegram": "TELEGRAM_BOT_TOKEN",
    "sms": "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER",
    "stripe": "STRIPE_SECRET_KEY",
    "livekit": "LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET",
}


def _off_reason(channel: str) -> str:
    return f"off (set {_SECRETS_NEEDED.get(channel, 'its secrets')} to enable)"


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    up = await ping(runtime.engine)
    runtime.metrics.db_up.set(1 if up else 0)
    if up:
        return web.json_response({"status": "ok", "db": "ok"})
    return web.json_response({"status": "degraded", "db": "down"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[RUNTIME].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
