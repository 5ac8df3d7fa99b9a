"""Video rooms: the port rooms/ implements with LiveKit, who may join a room, and join links.

A video session's room is named after its request and consultation. Each person gets their
own join link `/v/{token}`: signed (core.links, purpose "v") for one consultation and one
viewer — "c12" its customer, "m3" its mechanic, "o1" an admin observing (o0: an operator at
the command line) — and refused once the session is over (plus a grace) or past its signed
limit. Core never talks to LiveKit itself: core.room_sweep calls the port after commits.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.errors import CoreError
from core.links import Grant, sign, verify
from core.models import Admin, Consultation, SessionRequest

PURPOSE = "v"
ROLES = {"c": "customer", "m": "mechanic", "o": "observer"}


@dataclass(frozen=True)
class RoomSpec:
    """A room as LiveKit's CreateRoom takes it."""

    name: str
    max_participants: int
    empty_timeout_seconds: int
    departure_timeout_seconds: int
    metadata: str


class RoomPort(Protocol):
    # Where browsers connect (LIVEKIT_URL).
    url: str

    async def create_room(self, spec: RoomSpec) -> None:
        """Make the room; one that exists already is left as it is (not an error)."""
        ...

    async def delete_room(self, name: str) -> None:
        """Close the room and disconnect everyone in it; one already gone is not an error."""
        ...


@dataclass(frozen=True)
class Viewer:
    """Who a join link is for: a role and that person's id (an admin's id for observers)."""

    role: str
    id: int

    @property
    def code(self) -> str:
        return f"{self.role[0]}{self.id}"

    @classmethod
    def parse(cls, code: str) -> Viewer | None:
        role = ROLES.get(code[:1])
        if role is None or not code[1:].isdigit() or len(code) > 12:
            return None
        return cls(role, int(code[1:]))


def participant_identity(viewer: Viewer) -> str:
    """Who a person is in the room: our id for them ("c12" a customer, "m3" a mechanic). Two
    observers with one admin id are told apart, so neither pushes the other out."""
    if viewer.role == "observer":
        return f"{viewer.code}-{secrets.token_hex(3)}"
    return viewer.code


def room_name(ref: str, consultation_id: int) -> str:
    """The room of one consultation (a request matched again gets a new room)."""
    return f"{ref}-{consultation_id}"


def room_spec(config: Config, name: str, ref: str, plan: str, consultation_id: int) -> RoomSpec:
    video = config.video
    return RoomSpec(name=name, max_participants=2 + video.max_observers,
                    empty_timeout_seconds=video.empty_timeout_seconds,
                    departure_timeout_seconds=video.departure_timeout_seconds,
                    metadata=json.dumps({"ref": ref, "tier": plan,
                                         "consultation": consultation_id}))


def join_url(config: Config, consultation_id: int, viewer: Viewer, now: datetime) -> str:
    """This person's own link to the consultation's room, signed for [video] link_hours."""
    token = sign(config.secrets.secret_key, PURPOSE, consultation_id, viewer.code,
                 now + timedelta(hours=config.video.link_hours))
    return f"{config.public_url.rstrip('/')}/v/{token}"


def read_join_token(config: Config, token: str, now: datetime) -> tuple[Grant, Viewer] | None:
    """The grant and viewer of a join token signed by us and not past its limit."""
    grant = verify(config.secrets.secret_key, PURPOSE, token, now)
    viewer = Viewer.parse(grant.viewer) if grant is not None else None
    if grant is None or viewer is None:
        return None
    return grant, viewer


def session_over_for_good(config: Config, ended_at: datetime | None, now: datetime) -> bool:
    """Past the grace after the end: a join link is refused from then on."""
    return ended_at is not None and \
        now > ended_at + timedelta(minutes=config.video.link_grace_minutes)


@dataclass(frozen=True)
class ObserverLink:
    ref: str
    consultation_id: int
    room: str
    url: str
    expires_at: datetime


async def observer_link(session: AsyncSession, config: Config, ref: str, now: datetime, *,
                        admin_id: int = 0) -> ObserverLink:
    """A link for an admin (0: an operator at the command line) to watch the session under
    way for request `ref`, hidden and subscribe-only. CoreError says why there is none."""
    request = await session.scalar(select(SessionRequest).where(SessionRequest.ref == ref))
    if request is None:
        raise CoreError(f"no request {ref}")
    consultation = await session.scalar(
        select(Consultation).where(Consultation.request_id == request.id,
                                   Consultation.status.in_(("waiting", "live")))
        .order_by(Consultation.id.desc()).limit(1))
    if consultation is None:
        raise CoreError(f"{ref} has no session under way")
    if consultation.room_name is None:
        raise CoreError(f"{ref} has no video room (a chat tier, or video was off at the match)")
    if consultation.room_status != "ready":
        raise CoreError(f"{ref}'s video room is not made yet (LiveKit is being retried)")
    if admin_id and not await session.scalar(select(Admin.is_active).where(
            Admin.id == admin_id)):
        raise CoreError(f"no active admin {admin_id}")
    viewer = Viewer("observer", admin_id)
    return ObserverLink(ref, consultation.id, consultation.room_name,
                        join_url(config, consultation.id, viewer, now),
                        now + timedelta(hours=config.video.link_hours))
