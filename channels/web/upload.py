"""POST /widget/upload: one file per request, checked before it is stored."""

from __future__ import annotations

import logging

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from sqlalchemy import select

from channels.web.frames import CHANNEL, issued_by_us, visitor_address
from channels.web.guards import Guards
from channels.web.ws import Origins
from core.errors import RaceLost
from core.files import UploadRejected, check_quota, store_upload
from core.models import Identity
from core.runtime import Runtime
from core.shapes import VISITOR_TOKEN, fits
from core.store.people import Contact, people_for

log = logging.getLogger("autodoctor.channels.web")

_STATUS = {"too_large": 413, "unsupported_type": 415, "empty": 400, "quota": 429}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class WidgetUpload:
    def __init__(self, runtime: Runtime, guards: Guards) -> None:
        self.runtime = runtime
        self.guards = guards
        self.origins = Origins(runtime)

    def _cors(self, request: web.Request, response: web.Response) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is not None and self.origins.allows(request):
            response.headers.update({
                "Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "X-Visitor-Token",
                "Access-Control-Max-Age": "600"})
        return response

    async def preflight(self, request: web.Request) -> web.Response:
        """A site embedding the widget asks first whether it may upload here."""
        if not self.origins.allows(request):
            return _error(403, "origin_not_allowed", "This site may not upload to the chat.")
        return self._cors(request, web.Response(status=204))

    async def handle(self, request: web.Request) -> web.Response:
        if not self.origins.allows(request):
            return _error(403, "origin_not_allowed", "This site may not upload to the chat.")
        return self._cors(request, await self._upload(request))

    async def _upload(self, request: web.Request) -> web.Response:
        limit = self.runtime.config.uploads.max_bytes
        token = request.headers.get("X-Visitor-Token", "")
        if not fits(VISITOR_TOKEN, token):
            return _error(401, "no_visitor", "Open the chat first, then attach the file.")
        address = visitor_address(token)
        client = self.guards.address_of(request)
        if not self.guards.uploads.allow(client):
            return _error(429, "rate_limited", "Too many uploads; please wait a while.")
        async with self.runtime.readers() as session:
            known = await session.scalar(select(Identity.id).where(
                Identity.channel == CHANNEL, Identity.address == address))
        if known is None and not issued_by_us(token, self.runtime.config.secrets.secret_key):
            return _error(401, "no_visitor", "Open the chat first, then attach the file.")
        if known is None and not self.guards.new_visitors.allow(client):
            return _error(429, "rate_limited", "Too many new chats from your network; please "
                                               "try again in a while.")
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            return _error(413, "too_large", f"Files can be up to {limit / 1e6:.0f} MB.")
        if not request.content_type.startswith("multipart/"):
            return _error(400, "bad_request", 'Send the file as multipart/form-data, "file".')
        try:
            data, filename = await _read_file(request, limit)
            now = self.runtime.clock.now()
            async with self.runtime.transaction() as uow:
                # A visitor's first upload (before any message) makes their records too.
                contact = Contact(CHANNEL, address)
                person = (await people_for(uow, [contact], now))[contact.key]
                await check_quota(uow.session, self.runtime.config, person.identity.id)
                record = await store_upload(uow.session, self.runtime.config,
                                            person.identity.id, data, filename, now)
        except UploadRejected as exc:
            return _error(_STATUS.get(exc.code, 400), exc.code, str(exc))
        except RaceLost:
            return _error(409, "try_again", "Please send the file again.")
        log.info("upload file=%s identity=%s type=%s bytes=%s", record.public_id,
                 person.identity.id, record.content_type, record.size_bytes)
        return web.json_response({"file": record.public_id, "content_type": record.content_type,
                                  "size": record.size_bytes, "name": record.original_name},
                                 status=201)


async def _read_file(request: web.Request, limit: int) -> tuple[bytes, str | None]:
    """The "file" field's bytes and file name; UploadRejected if there is none to take."""
    try:
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and (not isinstance(part, BodyPartReader)
                                    or part.name != "file"):
            part = await reader.next()
        if part is None:
            raise UploadRejected("bad_request", 'No "file" field in the upload.')
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            data.extend(chunk)
            if len(data) > limit:
                raise UploadRejected("too_large", f"That file is larger than "
                                                  f"{limit / 1e6:.0f} MB; please send a "
                                                  "smaller one.")
    except (HttpProcessingError, ValueError):
        # A part's headers aiohttp cannot parse, a broken boundary: the body is not the
        # multipart form it says it is.
        raise UploadRejected("bad_request", "The upload could not be read; send the file as "
                                            'multipart/form-data, "file".') from None
    return bytes(data), part.filename
