"""LiveKit rooms, participant tokens and join links, the join page, the LiveKit webhook."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from core.config import Config
from core.engine import Engine
from core.runtime import Runtime
from core.video import RoomPort

log = logging.getLogger("autodoctor.rooms")

STATIC = Path(__file__).resolve().parent / "static"


def rooms_for(config: Config) -> RoomPort | None:
    """Runtime.rooms: LiveKit when LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are
    set; None otherwise (the video tiers then run as chat sessions)."""
    if not config.video_enabled:
        return None
    # Imported only when used: livekit-api brings protobuf and its generated modules.
    from rooms.livekit import LiveKitRooms

    return LiveKitRooms(config)


def setup(app: web.Application, runtime: Runtime, engine: Engine) -> None:
    """Add the join page, its calls, the SDK it loads, and (with LiveKit) the webhook."""
    from rooms.client import load_browser_client
    from rooms.pages import JoinPages, TokenMinter

    client = load_browser_client()
    # With video off the page still answers (a link from before says the session is chat).
    rooms = runtime.rooms if isinstance(runtime.rooms, TokenMinter) else None
    pages = JoinPages(runtime, engine, rooms, client_ok=client.body is not None)

    async def sdk(request: web.Request) -> web.Response:
        if client.body is None:
            return web.Response(status=503, text=f"/* {client.problem} */",
                                content_type="application/javascript")
        return web.Response(body=client.body, content_type="application/javascript",
                            charset="utf-8", headers={
                                "Cache-Control": "public, max-age=3600",
                                "ETag": f'"{client.sha256[:32]}"',
                                "X-Content-Type-Options": "nosniff"})

    async def script(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "room.js", headers={
            "Content-Type": "application/javascript; charset=utf-8",
            "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def style(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "room.css", headers={
            "Content-Type": "text/css; charset=utf-8", "Cache-Control": "no-cache"})

    app.router.add_get("/video/livekit-client.js", sdk, name="livekit_client_js")
    app.router.add_get("/video/room.js", script, name="video_room_js")
    app.router.add_get("/video/room.css", style, name="video_room_css")
    app.router.add_get("/v/{token}", pages.page, name="video_join")
    app.router.add_get("/v/{token}/state", pages.state, name="video_state")
    app.router.add_post("/v/{token}/join", pages.join, name="video_token")
    app.router.add_post("/v/{token}/messages", pages.message, name="video_message")
    app.router.add_post("/v/{token}/end", pages.end, name="video_end")
    if rooms is not None:
        from rooms.webhook import LiveKitWebhook

        webhook = LiveKitWebhook(runtime)
        app.router.add_post("/webhooks/livekit", webhook.handle, name="livekit_webhook")

