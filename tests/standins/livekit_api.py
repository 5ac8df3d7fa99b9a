"""A LiveKit server stand-in on 127.0.0.1 that speaks RoomService's wire format.

Twirp: `POST /twirp/livekit.RoomService/<Method>` with a protobuf body (or protobuf's JSON
mapping, as Twirp also allows), answered in the same encoding; errors are Twirp's JSON
envelope (`{"code": "not_found", "msg": "..."}`). Every call must carry
`Authorization: Bearer <JWT>` signed with the API key and secret and granting what the method
needs, checked with livekit-api's own TokenVerifier. Like LiveKit, CreateRoom of a room that
exists answers with that room, and DeleteRoom of one that does not is `not_found`.

There is no media server: a browser's signalling connection (`/rtc…`) is recorded, with the
access token it presented, and refused. The stand-in also plays LiveKit's side of webhooks:
events signed with livekit-api's own token code (AccessToken.with_sha256), as LiveKit signs
them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit import api

PROTOBUF = "application/protobuf"
WEBHOOK_PATH = "/webhooks/livekit"


class _Poster(Protocol):
    async def post(self, path: str, **kwargs: Any) -> Any: ...


@dataclass
class Call:
    """One RoomService request, as it arrived."""

    method: str
    request: dict[str, Any]
    encoding: str
    grants: api.VideoGrants | None
    status: int = 200


@dataclass
class Connect:
    """A browser's attempt to open the signalling connection."""

    path: str
    access_token: str
    claims: Any | None  # livekit-api's Claims when the token verified, else None


class TwirpError(Exception):
    def __init__(self, status: int, code: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


@dataclass
class LiveKitStandin:
    api_key: str = "APIstandin"
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    rooms: dict[str, api.Room] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    connects: list[Connect] = field(default_factory=list)
    # The next `outage` RoomService calls are answered 503 (LiveKit unreachable).
    outage: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    # --------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> LiveKitStandin:
        app = web.Application()
        app.router.add_post("/twirp/livekit.RoomService/{method}", self._twirp)
        app.router.add_get("/rtc{rest:.*}", self._rtc)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def methods(self, name: str | None = None) -> list[Call]:
        return [c for c in self.calls if name is None or c.method == name]

    # --------------------------------------------------------------- RoomService

    async def _twirp(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        encoding = PROTOBUF if request.content_type == PROTOBUF else "application/json"
        try:
            grants = self._authorized(request)
            handler, request_type, needs = _METHODS.get(method, (None, None, ""))
            if handler is None or request_type is None:
                raise TwirpError(404, "bad_route", f"no handler for {method}")
            if not getattr(grants, needs):
                raise TwirpError(403, "permission_denied", f"{method} needs {needs}")
            message = _decode(request_type, await request.read(), encoding)
            call = Call(method, json_format.MessageToDict(message), encoding, grants)
            self.calls.append(call)
            if self.outage > 0:
                self.outage -= 1
                call.status = 503
                raise TwirpError(503, "unavailable", "stand-in outage")
            answer = handler(self, message)
        except TwirpError as exc:
            return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)
        if encoding == PROTOBUF:
            return web.Response(body=answer.SerializeToString(), content_type=PROTOBUF)
        return web.json_response(json_format.MessageToDict(answer))

    def _authorized(self, request: web.Request) -> api.VideoGrants:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise TwirpError(401, "unauthenticated", "no authorization header")
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(header[7:])
        except Exception as exc:  # noqa: BLE001 - any failure: not our key's token
            raise TwirpError(401, "unauthenticated", f"invalid token: {exc}") from None
        assert claims.video is not None
        return claims.video

    def _create_room(self, create: api.CreateRoomRequest) -> api.Room:
        if not create.name:
            raise TwirpError(400, "invalid_argument", "name is required")
        existing = self.rooms.get(create.name)
        if existing is not None:
            return existing
        room = api.Room(sid=f"RM_{secrets.token_hex(6)}", name=create.name,
                        empty_timeout=create.empty_timeout,
                        departure_timeout=create.departure_timeout,
                        max_participants=create.max_participants, metadata=create.metadata,
                        creation_time=int(time.time()))
        self.rooms[create.name] = room
        return room

    def _delete_room(self, delete: api.DeleteRoomRequest) -> api.DeleteRoomResponse:
        if self.rooms.pop(delete.room, None) is None:
            raise TwirpError(404, "not_found", "requested room does not exist")
        return api.DeleteRoomResponse()

    def _list_rooms(self, listing: api.ListRoomsRequest) -> api.ListRoomsResponse:
        names = set(listing.names)
        return api.ListRoomsResponse(rooms=[r for n, r in self.rooms.items()
                                            if not names or n in names])

    def created(self) -> int:
        """CreateRoom calls that made a new room (not answered with an existing one)."""
        seen: set[str] = set()
        made = 0
        for call in self.methods("CreateRoom"):
            name = call.request.get("name", "")
            if call.status == 200 and name not in seen:
                seen.add(name)
                made += 1
        return made

    # --------------------------------------------------------------- the browser side

    async def _rtc(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except Exception:  # noqa: BLE001
            claims = None
        self.connects.append(Connect(request.path, token, claims))
        # No media server here: the browser is told so (as a real server that is down would
        # fail the connection).
        return web.Response(status=503, text="stand-in: no media server")

    # --------------------------------------------------------------- webhooks into us

    def webhook(self, event: str, room: str, *, identity: str = "", event_id: str = "",
                secret: str | None = None) -> tuple[str, dict[str, str]]:
        """A webhook body and headers as LiveKit sends them, signed with livekit-api's token
        code (secret: sign with another one, as a forger would)."""
        message = api.WebhookEvent(event=event, room=api.Room(name=room, sid="RM_x"),
                                   id=event_id or f"EV_{secrets.token_hex(8)}",
                                   created_at=int(time.time()))
        if identity:
            message.participant.CopyFrom(api.ParticipantInfo(
                sid=f"PA_{secrets.token_hex(4)}", identity=identity, name=identity))
        body = json_format.MessageToJson(message)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        token = api.AccessToken(self.api_key, secret or self.api_secret) \
            .with_sha256(digest).to_jwt()
        return body, {"Authorization": token, "Content-Type": "application/webhook+json"}

    async def send_webhook(self, client: _Poster, event: str, room: str, **kwargs: Any) -> Any:
        body, headers = self.webhook(event, room, **kwargs)
        return await client.post(WEBHOOK_PATH, data=body, headers=headers)


def _decode(kind: type[Message], raw: bytes, encoding: str) -> Any:
    try:
        if encoding == PROTOBUF:
            return kind.FromString(raw)
        return json_format.Parse(raw or b"{}", kind(), ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError) as exc:
        raise TwirpError(400, "malformed", f"could not decode the request: {exc}") from None


_METHODS: dict[str, tuple[Any, type[Message] | None, str]] = {
    "CreateRoom": (LiveKitStandin._create_room, api.CreateRoomRequest, "room_create"),
    "DeleteRoom": (LiveKitStandin._delete_room, api.DeleteRoomRequest, "room_create"),
    "ListRooms": (LiveKitStandin._list_rooms, api.ListRoomsRequest, "room_list"),
}
