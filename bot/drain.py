"""Graceful drain: what `serve` does between SIGTERM and exiting.

1. New widget sockets and webhook POSTs are answered 503 with Retry-After, and /healthz says
   "draining" (503), so a proxy takes the process out and providers deliver again later.
2. Widget sockets are closed with 1012 (service restart): widget.js reconnects at once, behind
   a proxy to another process, and resends the frames not yet acknowledged (handled once).
3. The transactions under way (the engine's batches) finish; the outbox dispatcher claims no
   more rows, lets the sends under way finish and hands back the leases of rows it claimed
   and did not send, so another process sends them at once.
4. The deployment-wide roles (sending Telegram/SMS, polling Telegram) are released, so
   another process takes them at once rather than after leader_retry_seconds.
5. Then the usual shutdown; the whole drain is bounded by [server] drain_seconds.

The state of it is here, in one Drain per app (app[DRAIN]).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from channels.web.ws import WidgetSocket
from core.delivery import OutboxDispatcher
from core.engine import Engine
from core.leadership import Leadership
from core.metrics import Metrics

log = logging.getLogger("autodoctor.drain")

# Widget sockets (GET /ws/widget) and the providers' webhooks: the ways new work comes in.
WIDGET_SOCKET = "/ws/widget"
WEBHOOKS = "/webhooks/"


class Drain:
    """Whether this process is draining, and how to drain it."""

    def __init__(self, seconds: float, metrics: Metrics, *, sockets: WidgetSocket,
                 engine: Engine, dispatcher: OutboxDispatcher,
                 leadership: Leadership | None = None) -> None:
        self.seconds = seconds
        self.metrics = metrics
        self.sockets = sockets
        self.engine = engine
        self.dispatcher = dispatcher
        self.leadership = leadership
        self.started: float | None = None  # time.monotonic() of the SIGTERM
        self.finished = False

    @property
    def draining(self) -> bool:
        return self.started is not None

    def retry_after(self) -> str:
        """Seconds until this process is gone (or another has taken its place)."""
        return str(max(1, round(self.seconds)))

    def refuses(self, request: web.Request) -> bool:
        """New work is refused while draining: a widget socket, a webhook."""
        return self.draining and (request.path == WIDGET_SOCKET or (
            request.method == "POST" and request.path.startswith(WEBHOOKS)))

    async def run(self) -> bool:
        """Drain (module docstring); False if it took longer than `seconds` (what was still
        under way is left to the shutdown that follows)."""
        if self.started is not None:
            return self.finished
        self.started = time.monotonic()
        self.metrics.draining.set(1)
        log.info("draining: refusing new sockets and webhooks for at most %.0fs", self.seconds)
        try:
            async with asyncio.timeout(self.seconds):
                closed, handed_back, _drained = await asyncio.gather(
                    self.sockets.restart_all(),
                    # Half the time for the sends under way, the rest to hand back leases.
                    self.dispatcher.hand_back(self.seconds / 2),
                    self.engine.drain())
                if self.leadership is not None:
                    await self.leadership.release()
        except TimeoutError:
            log.warning("drain: not finished after %.0fs; stopping anyway", self.seconds)
            return False
        self.finished = True
        log.info("drained in %.2fs: %s widget sockets closed (1012), %s outbox claims handed "
                 "back", time.monotonic() - self.started, closed, handed_back)
        return True


DRAIN = web.AppKey("drain", Drain)


@web.middleware
async def refuse_while_draining(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    drain = request.config_dict.get(DRAIN)
    if drain is not None and drain.refuses(request):
        return web.json_response({"status": "draining"}, status=503,
                                 headers={"Retry-After": drain.retry_after()})
    return await handler(request)


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, drain, then stop (a second signal skips the drain)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        signals = asyncio.Queue[int]()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, signals.put_nowait, number)
        received = await signals.get()
        log.info("%s received", signal.Signals(received).name)
        draining = asyncio.create_task(app[DRAIN].run())
        again = asyncio.create_task(signals.get())
        await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
        if not draining.done():
            log.warning("second signal: stopping without finishing the drain")
            draining.cancel()
        again.cancel()
    finally:
        await runner.cleanup()
