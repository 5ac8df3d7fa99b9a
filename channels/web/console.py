"""GET /console/state: the mechanic workspace's data (core.workspace), for the page at
/m/{invite}. Authenticated like uploads, by the widget's visitor token (X-Visitor-Token): it
answers only for a web chat linked to a mechanic, and only with that mechanic's work."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from channels.web.frames import CHANNEL, visitor_address
from channels.web.ws import Origins
from core.models import Identity
from core.runtime import Runtime
from core.shapes import VISITOR_TOKEN, fits
from core.workspace import mechanic_workspace

_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=_HEADERS)


class ConsoleState:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.origins = Origins(runtime)

    async def handle(self, request: web.Request) -> web.Response:
        if not self.origins.allows(request):
            return _error(403, "origin_not_allowed", "This site may not read the console.")
        token = request.headers.get("X-Visitor-Token", "")
        if not fits(VISITOR_TOKEN, token):
            return _error(401, "no_visitor", "Open the console link you were sent.")
        async with self.runtime.readers() as session:
            identity = await session.scalar(select(Identity).where(
                Identity.channel == CHANNEL, Identity.address == visitor_address(token)))
            if identity is None or identity.mechanic_id is None:
                return _error(403, "not_a_mechanic", "This chat is not linked to a mechanic; "
                                                     "open the console link you were sent.")
            state = await mechanic_workspace(session, self.runtime, identity.mechanic_id,
                                             identity.id, self.runtime.clock.now())
        return web.json_response(state, headers=_HEADERS)
