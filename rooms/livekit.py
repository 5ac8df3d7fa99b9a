"""LiveKit through its own server SDK (livekit-api): rooms, and participants' access tokens.

Every call opens its own LiveKitAPI (an aiohttp session) and closes it: rooms are made and
deleted a few times per session, so nothing needs to stay open between calls or be closed at
exit by whoever built the runtime (serve, the CLI, a test).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import aiohttp
from livekit import api

from core.config import Config
from core.video import RoomSpec, Viewer, participant_identity

log = logging.getLogger("autodoctor.rooms")

# What each side may publish (LiveKit's track sources): the customer shows the car with the
# camera and talks; the mechanic may also share their screen (a diagram, a parts list).
CUSTOMER_SOURCES = ["camera", "microphone"]
MECHANIC_SOURCES = ["camera", "microphone", "screen_share", "screen_share_audio"]


class LiveKitRooms:
    """core.video.RoomPort on LiveKit's RoomService (Twirp), with LIVEKIT_* credentials."""

    def __init__(self, config: Config) -> None:
        secrets_ = config.secrets
        self.url = secrets_.livekit_url
        self._key = secrets_.livekit_api_key
        self._secret = secrets_.livekit_api_secret
        self._timeout = aiohttp.ClientTimeout(total=config.video.api_timeout_seconds)

    def _api(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(self.url, self._key, self._secret, timeout=self._timeout)

    async def create_room(self, spec: RoomSpec) -> None:
        # LiveKit's CreateRoom answers with the existing room when the name is taken: a
        # retry, or a second process, does not fail.
        async with self._api() as lk:
            room = await lk.room.create_room(api.CreateRoomRequest(
                name=spec.name, empty_timeout=spec.empty_timeout_seconds,
                departure_timeout=spec.departure_timeout_seconds,
                max_participants=spec.max_participants, metadata=spec.metadata))
        log.info("room=%s sid=%s made", room.name, room.sid)

    async def delete_room(self, name: str) -> None:
        try:
            async with self._api() as lk:
                await lk.room.delete_room(api.DeleteRoomRequest(room=name))
        except api.ServerError as exc:
            if exc.code == api.ServerErrorCode.NOT_FOUND or exc.status == 404:
                return  # gone already (closed when empty, or deleted by another process)
            raise

    def participant_token(self, room: str, viewer: Viewer, name: str,
                          ttl_minutes: int) -> str:
        """A short-lived LiveKit access token for this room only: the customer may publish
        camera and microphone, the mechanic also a screen share, an observer nothing (and is
        hidden from the others)."""
        grants = api.VideoGrants(room_join=True, room=room, can_subscribe=True,
                                 can_publish_data=False)
        identity = participant_identity(viewer)
        if viewer.role == "customer":
            grants.can_publish_sources = list(CUSTOMER_SOURCES)
        elif viewer.role == "mechanic":
            grants.can_publish_sources = list(MECHANIC_SOURCES)
        else:
            grants.can_publish = False
            grants.hidden = True
        return (api.AccessToken(self._key, self._secret).with_identity(identity)
                .with_name(name).with_grants(grants)
                .with_ttl(timedelta(minutes=ttl_minutes)).to_jwt())

