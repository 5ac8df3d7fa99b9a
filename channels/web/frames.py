"""The widget protocol's frames from the browser, checked field by field (hello, message,
action; see the README's "Widget protocol"). Anything not of its shape is refused
with an error frame before it reaches the engine or a query."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from core.messages import Inbound
from core.shapes import CLIENT_ID, FILE_ID, INVITE_CODE, VISITOR_TOKEN, fits

CHANNEL = "web"
MAX_ATTACHMENTS_PER_MESSAGE = 10
# Message ids are 64-bit (core.models.base.BIG_ID).
MAX_MESSAGE_ID = 2**63 - 1


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def visitor_address(token: str) -> str:
    """The identity address for a visitor token: a hash, so the database holds no bearer token."""
    return "v_" + hashlib.sha256(token.encode()).hexdigest()[:40]


def new_visitor_token(secret: str) -> str:
    """A new visitor's token: random, and signed by us, so that a visitor who has no record
    yet (nothing written) is still told apart from a token nobody issued."""
    nonce = secrets.token_urlsafe(18)
    return f"{nonce}.{_token_mac(secret, nonce)}"


def issued_by_us(token: str, secret: str) -> bool:
    nonce, _, mac = token.partition(".")
    return bool(nonce) and hmac.compare_digest(mac, _token_mac(secret, nonce))


def _token_mac(secret: str, nonce: str) -> str:
    digest = hmac.new(f"visitor:{secret}".encode(), nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:15]).decode()


@dataclass(frozen=True)
class Hello:
    token: str | None
    resume_after: int | None
    invite: str | None


def hello(frame: dict[str, Any]) -> Hello:
    """A hello frame's fields, checked."""
    token, resume_after, invite = (frame.get("visitor"), frame.get("resume_after"),
                                   frame.get("mechanic_invite"))
    if token is not None and not fits(VISITOR_TOKEN, token):
        raise ProtocolError("bad_visitor", "The visitor token is not valid.")
    if resume_after is not None and (not isinstance(resume_after, int)
                                     or isinstance(resume_after, bool)
                                     or not 0 <= resume_after <= MAX_MESSAGE_ID):
        raise ProtocolError("bad_resume_after", "resume_after must be a message id or null.")
    if invite is not None and not fits(INVITE_CODE, invite):
        raise ProtocolError("invalid_invite", "That mechanic invite is not valid.")
    return Hello(token, resume_after, invite)


def client_id(frame: dict[str, Any]) -> str | None:
    """The client's own id for a frame (acknowledged after the commit), if it gave one."""
    given = frame.get("client_id")
    if given is None:
        return None
    if not fits(CLIENT_ID, given):
        raise ProtocolError("bad_client_id", '"client_id" must be up to 64 letters, digits or '
                                             '"_.:-".')
    return str(given)


def message(frame: dict[str, Any], address: str, max_text: int,
            client: str | None = None) -> Inbound:
    """The message a "message" frame carries, checked."""
    text = frame.get("text", "")
    attachments = frame.get("attachments", [])
    if not isinstance(text, str):
        raise ProtocolError("bad_frame", '"text" must be a string.')
    if len(text) > max_text:
        raise ProtocolError("text_too_long", f"Messages can be up to {max_text} characters; "
                                             "please send a shorter one.")
    if (not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS_PER_MESSAGE
            or not all(fits(FILE_ID, a) for a in attachments)):
        raise ProtocolError("bad_attachments",
                            f'"attachments" must be a list of up to '
                            f"{MAX_ATTACHMENTS_PER_MESSAGE} file ids from POST /widget/upload.")
    if not text.strip() and not attachments:
        raise ProtocolError("empty_message", "That message was empty.")
    return Inbound(channel=CHANNEL, address=address, text=text, attachments=tuple(attachments),
                   provider_id=_event_id(address, frame), client_address=client)


def action(frame: dict[str, Any], address: str, client: str | None = None) -> Inbound:
    """The button tap an "action" frame carries, checked."""
    payload = frame.get("payload")
    if not isinstance(payload, str) or not payload or len(payload) > 255:
        raise ProtocolError("bad_frame", '"payload" must be a non-empty string.')
    return Inbound(channel=CHANNEL, address=address, action=payload,
                   provider_id=_event_id(address, frame), client_address=client)


def _event_id(address: str, frame: dict[str, Any]) -> str | None:
    # A repeated client id (a frame resent after a reconnect) is handled once: the engine
    # records each (channel, provider id) it takes in. Scoped to the visitor.
    given = client_id(frame)
    return f"{address}:{given}" if given is not None else None
