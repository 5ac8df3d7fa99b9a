"""Signed links: a token names what it opens, for whom and until when, and nothing else.

A token is `payload.mac`, both base64url: the payload is the purpose ("f" a file, "s" a
session record), the subject's id, the viewer ("i12" an identity, "c7" a customer) and the
expiry as a Unix time; the MAC is HMAC-SHA256 of the payload under a key derived from the
service's secret and the purpose, so a token for one kind of link opens no other kind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

_MAC_BYTES = 18
MAX_TOKEN_CHARS = 200


@dataclass(frozen=True)
class Grant:
    """What a valid token lets its holder open."""

    purpose: str
    subject: int
    viewer: str
    expires: datetime


def _key(secret: str, purpose: str) -> bytes:
    return hashlib.sha256(f"autodoctor-link:{purpose}:{secret}".encode()).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, purpose: str, subject: int, viewer: str, expires: datetime) -> str:
    """A token for `viewer` to open `subject` (of kind `purpose`) until `expires`."""
    if not secret:
        raise ValueError("no secret key to sign links with (AUTODOCTOR_SECRET_KEY)")
    payload = f"{purpose}.{subject}.{viewer}.{int(expires.timestamp())}".encode()
    mac = hmac.new(_key(secret, purpose), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(secret: str, purpose: str, token: str, now: datetime) -> Grant | None:
    """The grant of a token of this purpose, signed by us and not expired; None otherwise."""
    if not secret or not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    encoded, _, mac_text = token.partition(".")
    try:
        payload, mac = _unb64(encoded), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    expected = hmac.new(_key(secret, purpose), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        kind, subject, viewer, expires = payload.decode().split(".")
        grant = Grant(kind, int(subject), viewer, datetime.fromtimestamp(int(expires), UTC))
    except (UnicodeDecodeError, ValueError):
        return None
    if grant.purpose != purpose or grant.expires <= now:
        return None
    return grant
