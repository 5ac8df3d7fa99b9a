"""The channel-neutral message model: channels parse into Inbound and render Outbound."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Code points no UTF-8 text can hold: a lone surrogate from a JSON body ("\ud800", which
# Python's json module lets through) or from bytes that are not UTF-8 (aiohttp decodes a
# header's with surrogateescape: an upload's file name) could not be stored.
_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(raw: str) -> str:
    """Text from outside as stored: control characters (NUL included) removed, lone
    surrogates replaced by U+FFFD."""
    cleaned = _CONTROL.sub("", raw)
    return cleaned if cleaned.isascii() else _SURROGATE.sub("\ufffd", cleaned)


@dataclass(frozen=True)
class Button:
    label: str
    payload: str


@dataclass(frozen=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True)
class Attachment:
    """A file sent with a message: a link the recipient may open (core.links), and what a
    channel needs to send the file itself where it can (its stored blob's sha256)."""

    name: str
    content_type: str
    url: str
    sha256: str = ""


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
    # The web client's IP address (channels.web.guards.client_address); other channels: None.
    client_address: str | None = None


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
    files: tuple[Attachment, ...] = ()

    def to_body(self) -> dict[str, Any]:
        """The JSON stored in the transcript and the outbox."""
        body: dict[str, Any] = {
            "text": self.text,
            "buttons": [{"label": b.label, "payload": b.payload} for b in self.buttons],
            "link": {"label": self.link.label, "url": self.link.url} if self.link else None,
            "image": self.image,
            "edit_of": self.edit_of,
        }
        if self.files:
            body["files"] = [{"name": f.name, "content_type": f.content_type, "url": f.url,
                              "sha256": f.sha256} for f in self.files]
        return body

    @classmethod
    def from_body(cls, channel: str, address: str, body: dict[str, Any],
                  dedupe_key: str | None = None) -> Outbound:
        link = body.get("link")
        return cls(
            channel=channel, address=address, text=body.get("text", ""),
            buttons=tuple(Button(b["label"], b["payload"]) for b in body.get("buttons", [])),
            link=Link(link["label"], link["url"]) if link else None,
            image=body.get("image"), edit_of=body.get("edit_of"), dedupe_key=dedupe_key,
            files=tuple(Attachment(f["name"], f["content_type"], f["url"], f.get("sha256", ""))
                        for f in body.get("files", [])))


@dataclass
class Reply:
    """What a flow wants said, before the engine addresses and stores it."""

    text: str
    buttons: list[Button] = field(default_factory=list)
    link: Link | None = None
    image: str | None = None
