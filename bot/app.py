"""The composition root: create_app wires every part of the service; no globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from functools import partial
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncEngine

import admin_web
import billing
import channels.web
import rooms
from billing.payouts import payouts_for
from bot import http
from bot.drain import DRAIN, Drain, refuse_while_draining
from bot.flows import route
from bot.flows.intake_steps import greeting
from bot.http import RUNTIME
from bot.texts import text
from core.clock import Clock
from core.config import Config
from core.db import WalCheckpointer, create_engine, sqlite_file
from core.delivery import OutboxDispatcher, Sender
from core.engine import Engine
from core.hub import PgBridge
from core.leadership import Leadership
from core.payments import PaymentPort
from core.ratelimit import ChannelLimiter
from core.runtime import Runtime
from core.sweeps import run_sweeps
from core.video import RoomPort

log = logging.getLogger("autodoctor.app")

ENGINE = web.AppKey("engine", Engine)


def build_runtime(config: Config, engine: AsyncEngine, *, clock: Clock | None = None,
                  payments: PaymentPort | None = None) -> Runtime:
    """The services every entry point shares (serve, sweep, console, assign)."""
    payments = payments or billing.payments_for(config)
    video: RoomPort | None = rooms.rooms_for(config)
    runtime = Runtime.build(config, engine, payments, text, clock,
                            refund=billing.refunds_for(payments),  # type: ignore[arg-type]
                            payout=payouts_for(payments),  # type: ignore[arg-type]
                            rooms=video)
    runtime.greeting = partial(greeting, config, video is None)
    return runtime


def create_app(config: Config, *, engine: AsyncEngine | None = None,
               clock: Clock | None = None, payments: PaymentPort | None = None,
               senders: Mapping[str, Sender] | None = None, background: bool = True,
               **overrides: Any) -> web.Application:
    """Build the aiohttp application; overrides swap one part (tests, local runs).

    background=False leaves out the sweep schedule and the outbox dispatcher, for tests
    that run them by hand with a moved clock.
    """
    if overrides:
        raise TypeError(f"create_app got unknown overrides: {', '.join(sorted(overrides))}")
    owns_engine = engine is None
    if engine is None:
        # The WAL of our own SQLite file is checkpointed off the event loop (below).
        engine = create_engine(config.database_url,
                               busy_timeout_ms=config.database.sqlite_busy_timeout_ms,
                               echo=config.database.echo, background_checkpoints=True)
    runtime = build_runtime(config, engine, clock=clock, payments=payments)
    conversation_engine = Engine(runtime, route)

    app = web.Application(middlewares=[http.count_requests, refuse_while_draining,
                                       http.database_down],
                          client_max_size=config.uploads.max_bytes + 256 * 1024)
    app[RUNTIME] = runtime
    app[ENGINE] = conversation_engine
    app.on_response_prepare.append(http.plain_server_header)
    app.router.add_get("/healthz", http.healthz, name="healthz")
    app.router.add_get("/metrics", http.metrics, name="metrics")
    http.add_favicon(app)
    widget_sockets = channels.web.setup(app, runtime, conversation_engine)
    billing.setup(app, runtime)
    admin_web.setup(app, runtime)
    rooms.setup(app, runtime, conversation_engine)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        for channel, enabled in config.channel_status().items():
            log.info("channel %s: %s", channel, "on" if enabled else _off_reason(channel))
        log.info("video: %s", "on (LiveKit rooms for the video tiers)" if runtime.rooms else
                 f"{_off_reason('livekit')}; the video tiers run as chat sessions and say so")
        bridge = None
        if engine.dialect.name == "postgresql":
            # Several serve processes: wake sockets and dispatchers in the others too.
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            bridge = PgBridge(runtime.hub, dsn)
            try:
                await bridge.start()
            except Exception:
                # The database is down at start: serve anyway (/healthz says so); wake-ups
                # stay within this process and the dispatcher's poll covers the rest.
                log.warning("cross-process wake-ups off: could not LISTEN on the database")
                bridge = None
        yield
        # Messages already handed to the engine are finished before the database goes.
        await conversation_engine.drain()
        if bridge is not None:
            await bridge.stop()
        if owns_engine:
            await engine.dispose()

    app.cleanup_ctx.append(lifecycle)
    database_file = sqlite_file(engine) if owns_engine else None
    if database_file is not None:
        app.cleanup_ctx.append(_background("wal-checkpoints",
                                           WalCheckpointer(database_file).run_forever))
    # Who sends each provider channel and who polls Telegram, across the deployment.
    leadership = Leadership(engine, retry_seconds=config.server.leader_retry_seconds,
                            metrics=runtime.metrics, on_change=runtime.hub.outbox_wakeup.set)
    built: dict[str, Sender] = {}
    if config.secrets.telegram_bot_token:
        # aiogram is loaded only when the channel is on.
        from channels.telegram import setup as setup_telegram

        telegram_sender = setup_telegram(app, runtime, conversation_engine, leadership)
        if telegram_sender is not None:
            built["telegram"] = telegram_sender
    if config.channel_status()["sms"]:
        # twilio and phonenumbers are loaded only when the channel is on.
        from channels.sms import setup as setup_sms

        sms_sender = setup_sms(app, runtime, conversation_engine)
        if sms_sender is not None:
            built["sms"] = sms_sender
    every_sender = {**built, **(senders or {})}
    # The providers' limits are per bot and per sending number, not per process: one process
    # at a time sends each provider channel (core.delivery, core.leadership).
    roles = {channel: f"send:{channel}" for channel in config.rate_limits.provider_rates()
             if channel in every_sender}
    dispatcher = OutboxDispatcher(runtime, every_sender, _limiters(config),
                                  leadership=leadership, roles=roles)
    app[DRAIN] = Drain(config.server.drain_seconds, runtime.metrics, sockets=widget_sockets,
                       engine=conversation_engine, dispatcher=dispatcher, leadership=leadership)
    # After the database's lifecycle and the channels': released before either stops.
    app.cleanup_ctx.append(_holding(leadership))
    if background:
        app.cleanup_ctx.append(_sweeps(runtime))
        if dispatcher.senders:
            app.cleanup_ctx.append(_background("outbox", dispatcher.run_forever))
    return app


def _holding(leadership: Leadership) -> Callable[[web.Application], AsyncIterator[None]]:
    """Take the roles wanted before serving (SQLite: held already), keep trying in the
    background, and release them at shutdown."""
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await leadership.check()
        log.info("roles held: %s", ", ".join(leadership.held) or "none yet")
        task = asyncio.create_task(leadership.run_forever(), name="leadership")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await leadership.release()

    return lifetime


def _limiters(config: Config) -> dict[str, ChannelLimiter]:
    # SMS is limited per sending number (and per segment) by its sender (channels/sms_send).
    limits = config.rate_limits
    return {"telegram": ChannelLimiter(limits.telegram_per_second,
                                       limits.telegram_per_chat_per_second)}


def _sweeps(runtime: Runtime) -> Callable[[web.Application], AsyncIterator[None]]:
    running = asyncio.Lock()

    async def sweep() -> None:
        async with running:
            await run_sweeps(runtime)

    async def schedule(app: web.Application) -> AsyncIterator[None]:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(sweep, "interval", id="sweeps",
                          seconds=runtime.config.timeouts.sweep_interval_seconds,
                          max_instances=1, coalesce=True)
        scheduler.start()
        yield
        # Let a sweep under way finish (it is a few quick transactions) rather than cutting it
        # off mid-query; then no new one starts.
        scheduler.pause()
        try:
            async with asyncio.timeout(10):
                await running.acquire()
        except TimeoutError:
            log.warning("a sweep was still running at shutdown")
        scheduler.shutdown(wait=False)

    return schedule


def _background(name: str, run: Callable[[], Coroutine[Any, Any, None]]
                ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A task that runs as long as the app does (delivery, checkpoints); cancelled at stop."""
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    lifetime.__name__ = name
    return lifetime


_SECRETS_NEEDED = {
    "telegram": "TELEGRAM_BOT_TOKEN",
    "sms": "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER",
    "stripe": "STRIPE_SECRET_KEY",
    "livekit": "LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET",
}


def _off_reason(channel: str) -> str:
    return f"off (set {_SECRETS_NEEDED.get(channel, 'its secrets')} to enable)"
