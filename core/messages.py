"""The channel-neutral message model: channels parse into Inbound and render Outbound."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Button:
    label: str
    payload: str


@dataclass(frozen=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True)
class Inbound:
    """One message or button tap from a person; `action` is a button payload, never trusted."""

    channel: str
    address: str
    text: str = ""
    action: str | None = None
    attachments: tuple[str, ...] = ()
    provider_id: str | None = None
    received_at: datetime | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class Outbound:
    """One message to a person, rendered by the channel it goes out on."""

    channel: str
    address: str
    text: str
    buttons: tuple[Button, ...] = ()
    link: Link | None = None
    image: str | None = None
    edit_of: str | None = None
    dedupe_key: str | None = None

    def to_body(self) -> dict[str, Any]:
        """The JSON stored in the transcript and the outbox."""
        return {
            "text": self.text,
            "buttons": [{"label": b.label, "payload": b.payload} for b in self.buttons],
            "link": {"label": self.link.label, "url": self.link.url} if self.link else None,
            "image": self.image,
            "edit_of": self.edit_of,
        }

    @classmethod
    def from_body(cls, channel: str, address: str, body: dict[str, Any],
                  dedupe_key: str | None = None) -> Outbound:
        link = body.get("link")
        return cls(
            channel=channel, address=address, text=body.get("text", ""),
            buttons=tuple(Button(b["label"], b["payload"]) for b in body.get("buttons", [])),
            link=Link(link["label"], link["url"]) if link else None,
            image=body.get("image"), edit_of=body.get("edit_of"), dedupe_key=dedupe_key)


@dataclass
class Reply:
    """What a flow wants said, before the engine addresses and stores it."""

    text: str
    buttons: list[Button] = field(default_factory=list)
    link: Link | None = None
    image: str | None = None
