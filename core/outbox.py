"""Every message to a person is first a transcript row and, for a provider to deliver it, an
outbox row, written by the unit of work of the change that caused it."""

from __future__ import annotations

import itertools
import os
import uuid
from datetime import datetime
from typing import Any, Protocol

from core.messages import Outbound
from core.store.records import MessageRow, OutboxRow
from core.store.uow import TRANSCRIPT_CHANNELS, UnitOfWork


class Addressee(Protocol):
    """Someone to write to: an identity, as a row or an ORM object."""

    @property
    def id(self) -> int: ...

    @property
    def channel(self) -> str: ...

    @property
    def address(self) -> str: ...


async def enqueue(uow: UnitOfWork, identity: Addressee, outbound: Outbound, now: datetime,
                  *, conversation_id: int | None = None,
                  consultation_id: int | None = None) -> MessageRow | None:
    """Store the message and queue its delivery; None if its dedupe_key was already queued.
    A keyed message is written at once (to know whether it was queued), others at the unit
    of work's next flush."""
    message = MessageRow(identity_id=identity.id, conversation_id=conversation_id,
                         consultation_id=consultation_id, direction="out",
                         channel=identity.channel, text=outbound.text,
                         body=outbound.to_body(), created_at=now)
    if outbound.dedupe_key is None:
        # A fresh message cannot be a duplicate. The widget and the console read it from the
        # transcript, so it needs no outbox row at all; providers get one to deliver.
        uow.add_message(message, None if identity.channel in TRANSCRIPT_CHANNELS
                        else outbox_row(identity.id, fresh_key(), outbound, message.body, now))
        return message
    queued = await uow.add_keyed([(message, outbox_row(
        identity.id, outbound.dedupe_key, outbound, message.body, now))])
    return message if outbound.dedupe_key in queued else None


async def enqueue_many(uow: UnitOfWork, items: list[tuple[int, Outbound]],
                       now: datetime) -> dict[str, int]:
    """Queue many messages (to identity ids) at once: a keyed message already queued is
    skipped, like tell(). Returns the outbox id of each key queued now.

    A fixed handful of multi-row statements whatever the count: offering a request to 1,000
    mechanics or closing 200 offers must not cost thousands of round trips."""
    keyed: dict[str, tuple[MessageRow, OutboxRow]] = {}
    for identity_id, out in items:
        key = out.dedupe_key or fresh_key()
        if key in keyed:
            continue  # the same message twice in one call: queued once
        body = out.to_body()
        keyed[key] = (MessageRow(identity_id=identity_id, direction="out", channel=out.channel,
                                 text=out.text, body=body, created_at=now),
                      outbox_row(identity_id, key, out, body, now))
    return await uow.add_keyed(list(keyed.values()))


def addressed(identity: Addressee, text: str, **kwargs: Any) -> Outbound:
    """A message to this person, on the channel and address of that identity."""
    return Outbound(channel=identity.channel, address=identity.address, text=text, **kwargs)


async def tell(uow: UnitOfWork, identity: Addressee | None, text: str, now: datetime, *,
               key: str, conversation_id: int | None = None,
               consultation_id: int | None = None, **kwargs: Any) -> bool:
    """Queue one message to a person (once per key); False if nobody to tell or already told."""
    if identity is None:
        return False
    return await enqueue(uow, identity, addressed(identity, text, dedupe_key=key, **kwargs),
                         now, conversation_id=conversation_id,
                         consultation_id=consultation_id) is not None


def outbox_row(identity_id: int | None, key: str, outbound: Outbound, body: dict[str, Any],
               now: datetime) -> OutboxRow:
    """The outbox row of a message. On a transcript channel it is born 'sent': there it only
    guards a keyed message against being queued twice."""
    direct = outbound.channel in TRANSCRIPT_CHANNELS
    return OutboxRow(dedupe_key=key, channel=outbound.channel, address=outbound.address,
                     identity_id=identity_id, payload=body,
                     status="sent" if direct else "pending", sent_at=now if direct else None,
                     next_attempt_at=now, created_at=now)


# Unkeyed messages still need a unique dedupe_key: this process's random prefix and a counter
# (uuid4 per message reads the system's random source each time). A forked child draws its own.
_key_prefix = ""
_key_counter = itertools.count(1)


def _new_key_prefix() -> None:
    global _key_prefix, _key_counter
    _key_prefix, _key_counter = f"msg:{uuid.uuid4().hex}:", itertools.count(1)


_new_key_prefix()
os.register_at_fork(after_in_child=_new_key_prefix)


def fresh_key() -> str:
    """A dedupe_key no other message has."""
    return f"{_key_prefix}{next(_key_counter)}"
