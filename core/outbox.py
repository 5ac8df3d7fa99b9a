"""Every message to a person is first a transcript row and an outbox row, in one transaction."""

from __future__ import annotations

import itertools
import os
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from core import transcript
from core.messages import Outbound
from core.models import Identity
from core.sql import transaction_scoped
from core.transcript import MessageRow

HUB = "autodoctor.hub"
_TOUCHED = "autodoctor.touched"
_OUTBOX_DUE = "autodoctor.outbox_due"  # a row was queued for a provider to deliver


def wake_after_commit(session: AsyncSession, identity_id: int,
                      message: MessageRow | None = None) -> None:
    """Once this transaction commits, wake whoever waits for this person's messages (an open
    widget socket), handing over the new message rows, and the outbox dispatcher unless the
    message is one the transcript delivers (TRANSCRIPT_CHANNELS). The session's info carries
    the hub (Runtime). Without `message`, the woken read the database."""
    info = session.sync_session.info
    if HUB not in info:
        return
    if message is None or message.channel not in TRANSCRIPT_CHANNELS:
        info[_OUTBOX_DUE] = True
    touched: dict[int, list[MessageRow] | None] = info.setdefault(_TOUCHED, {})
    rows = touched.get(identity_id, [])
    if message is None or rows is None:
        touched[identity_id] = None  # the woken must read the database anyway
    else:
        touched[identity_id] = [*rows, message]


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    touched: dict[int, list[MessageRow] | None] | None = session.info.pop(_TOUCHED, None)
    due = session.info.pop(_OUTBOX_DUE, False)
    if touched:
        # A row without an id was in a savepoint rolled back: the woken read the database.
        # The dispatcher is left asleep when nothing was queued for a provider (widget
        # replies are read from the transcript): each wake-up is a claim query.
        session.info[HUB].publish(touched, {
            i: rows for i, rows in touched.items()
            if rows is not None and all(m.id is not None for m in rows)}, outbox=due)


transaction_scoped(_TOUCHED)  # rolled back: nobody is woken
transaction_scoped(_OUTBOX_DUE)


# Channels delivered straight from the transcript (an open socket, a terminal), not by a
# provider: their outbox rows are born 'sent' and serve only as the dedupe guard.
TRANSCRIPT_CHANNELS = frozenset({"web", "console"})


async def enqueue(session: AsyncSession, identity: Identity, outbound: Outbound, now: datetime,
                  *, conversation_id: int | None = None,
                  consultation_id: int | None = None) -> MessageRow | None:
    """Store the message and queue its delivery; None if its dedupe_key was already queued.
    The rows are written with the session's next flush, a keyed message's at once
    (core.transcript)."""
    identity_id, channel = identity.id, identity.channel  # ORM attributes: read once
    direct = channel in TRANSCRIPT_CHANNELS
    body = outbound.to_body()
    message = MessageRow(identity_id=identity_id, conversation_id=conversation_id,
                         consultation_id=consultation_id, direction="out",
                         channel=channel, text=outbound.text, body=body,
                         created_at=now)
    if outbound.dedupe_key is None:
        # A fresh message cannot be a duplicate. The widget and the console read it from the
        # transcript, so it needs no outbox row at all; providers get one to deliver.
        transcript.add(session, message, outbox=None if direct else _outbox_values(
            identity_id, _fresh_key(), outbound, body, now))
    else:
        # A keyed message (an offer, a notice) is queued at most once, whoever tries again.
        queued = await transcript.add_keyed(session, [(message, _outbox_values(
            identity_id, outbound.dedupe_key, outbound, body, now))])
        if outbound.dedupe_key not in queued:
            return None
    wake_after_commit(session, identity_id, message)
    return message


# Unkeyed messages still need a unique dedupe_key: this process's random prefix and a counter
# (uuid4 per message reads the system's random source each time). A forked child draws its own.
_key_prefix = ""
_key_counter = itertools.count(1)


def _new_key_prefix() -> None:
    global _key_prefix, _key_counter
    _key_prefix, _key_counter = f"msg:{uuid.uuid4().hex}:", itertools.count(1)


_new_key_prefix()
os.register_at_fork(after_in_child=_new_key_prefix)


def _fresh_key() -> str:
    return f"{_key_prefix}{next(_key_counter)}"


def _outbox_values(identity_id: int, key: str, outbound: Outbound, body: dict[str, Any],
                   now: datetime) -> dict[str, Any]:
    direct = outbound.channel in TRANSCRIPT_CHANNELS
    return {"dedupe_key": key, "channel": outbound.channel, "address": outbound.address,
            "identity_id": identity_id, "payload": body,
            "status": "sent" if direct else "pending", "sent_at": now if direct else None,
            "next_attempt_at": now, "created_at": now, "attempts": 0}


def addressed(identity: Identity, text: str, **kwargs: Any) -> Outbound:
    """A message to this person, on the channel and address of that identity."""
    return Outbound(channel=identity.channel, address=identity.address, text=text, **kwargs)


async def tell(session: AsyncSession, identity: Identity | None, text: str, now: datetime, *,
               key: str, conversation_id: int | None = None, **kwargs: Any) -> bool:
    """Queue one message to a person (once per key); False if nobody to tell or already told."""
    if identity is None:
        return False
    return await enqueue(session, identity, addressed(identity, text, dedupe_key=key, **kwargs),
                         now, conversation_id=conversation_id) is not None


async def enqueue_many(session: AsyncSession, items: list[tuple[int, Outbound]],
                       now: datetime) -> dict[str, int]:
    """Queue many messages (to identity ids) at once: a keyed message already queued is
    skipped, like tell(). Returns the outbox id of each key queued now.

    Multi-row statements that bypass the ORM, a fixed handful whatever the count: offering a
    request to 1,000 mechanics or closing 200 offers must not cost thousands of round trips.
    The messages are written at once, with whatever else waits to be (core.transcript).
    """
    if not items:
        return {}
    keyed: dict[str, tuple[MessageRow, dict[str, Any]]] = {}
    for identity_id, out in items:
        key = out.dedupe_key or _fresh_key()
        if key in keyed:
            continue  # the same message twice in one call: queued once
        body = out.to_body()
        keyed[key] = (MessageRow(identity_id=identity_id, direction="out", channel=out.channel,
                                 text=out.text, body=body, created_at=now),
                      _outbox_values(identity_id, key, out, body, now))
    queued = await transcript.add_keyed(session, list(keyed.values()))
    for key, (message, _values) in keyed.items():
        if key in queued:
            wake_after_commit(session, message.identity_id, message)
    return queued
