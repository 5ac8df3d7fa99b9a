"""Every message to a person is first a transcript row and an outbox row, in one transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, event, insert, inspect, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from core.messages import Outbound
from core.models import Identity, Message, OutboxItem
from core.sql import dialect_insert, insert_ignore

HUB = "autodoctor.hub"
_TOUCHED = "autodoctor.touched"


def wake_after_commit(session: AsyncSession, identity_id: int,
                      message: Message | None = None) -> None:
    """Once this transaction commits, wake whoever waits for this person's messages (an open
    widget socket, the outbox dispatcher), handing over the new message rows. The session's
    info carries the hub (Runtime). Without `message`, the woken read the database."""
    hub = session.info.get(HUB)
    if hub is None:
        return
    touched: dict[int, list[Message] | None] | None = session.info.get(_TOUCHED)
    if touched is None:
        touched = session.info[_TOUCHED] = {}

        def publish(sync_session: Session) -> None:
            done: dict[int, list[Message] | None] = sync_session.info.pop(_TOUCHED, {})
            hub.publish(done, {i: rows for i, rows in done.items()
                               if rows is not None and all(_stored(m) for m in rows)})

        event.listen(session.sync_session, "after_commit", publish, once=True)
    rows = touched.get(identity_id, [])
    if message is None or rows is None:
        touched[identity_id] = None  # the woken must read the database anyway
    else:
        touched[identity_id] = [*rows, message]


def _stored(message: Message) -> bool:
    # Not a row added inside a savepoint that was rolled back.
    return inspect(message).persistent


# Channels delivered straight from the transcript (an open socket, a terminal), not by a
# provider: their outbox rows are born 'sent' and serve only as the dedupe guard.
TRANSCRIPT_CHANNELS = frozenset({"web", "console"})


async def enqueue(session: AsyncSession, identity: Identity, outbound: Outbound, now: datetime,
                  *, conversation_id: int | None = None,
                  consultation_id: int | None = None) -> Message | None:
    """Store the message and queue its delivery; None if its dedupe_key was already queued."""
    direct = identity.channel in TRANSCRIPT_CHANNELS
    message = Message(identity_id=identity.id, conversation_id=conversation_id,
                      consultation_id=consultation_id, direction="out",
                      channel=identity.channel, text=outbound.text, body=outbound.to_body(),
                      created_at=now)
    row = {"channel": identity.channel, "address": identity.address,
           "identity_id": identity.id, "payload": outbound.to_body(),
           "status": "sent" if direct else "pending", "sent_at": now if direct else None,
           "next_attempt_at": now, "created_at": now, "attempts": 0}
    if outbound.dedupe_key is None:
        # A fresh message cannot be a duplicate. The widget and the console read it from the
        # transcript, so it needs no outbox row at all; providers get one to deliver.
        session.add(message)
        wake_after_commit(session, identity.id, message)
        if not direct:
            session.add(OutboxItem(dedupe_key=f"msg:{uuid.uuid4().hex}", message=message, **row))
        return message
    # A keyed message (an offer, a notice) is queued at most once, whoever tries again.
    outbox_id = await insert_ignore(session, OutboxItem,
                                    {"dedupe_key": outbound.dedupe_key, **row}, ["dedupe_key"])
    if outbox_id is None:
        return None
    session.add(message)
    wake_after_commit(session, identity.id, message)
    await session.flush()
    await session.execute(update(OutboxItem).where(OutboxItem.id == outbox_id)
                          .values(message_id=message.id))
    return message


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
    Sockets of these identities are woken to read the rows from the database.
    """
    if not items:
        return {}
    keyed = [(identity_id, out.dedupe_key or f"msg:{uuid.uuid4().hex}", out)
             for identity_id, out in items]
    conn = await session.connection()
    queued = dict((await conn.execute(
        dialect_insert(session, OutboxItem.__table__)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboxItem.dedupe_key, OutboxItem.id),
        [{"dedupe_key": key, "message_id": None, "channel": out.channel,
          "address": out.address, "identity_id": identity_id, "payload": out.to_body(),
          "status": "sent" if out.channel in TRANSCRIPT_CHANNELS else "pending",
          "sent_at": now if out.channel in TRANSCRIPT_CHANNELS else None,
          "next_attempt_at": now, "created_at": now, "attempts": 0, "lease_owner": None,
          "lease_until": None, "provider_message_id": None, "last_error": None}
         for identity_id, key, out in keyed])).all())
    fresh = [(identity_id, key, out) for identity_id, key, out in keyed if key in queued]
    if not fresh:
        return {}
    # In parameter order (PostgreSQL in one statement; SQLite a row at a time), so each
    # outbox row gets its own message's id.
    message_ids = (await conn.execute(
        insert(Message.__table__).returning(Message.id, sort_by_parameter_order=True),
        [{"identity_id": identity_id, "conversation_id": None, "consultation_id": None,
          "direction": "out", "channel": out.channel, "text": out.text, "action": None,
          "body": out.to_body(), "provider_id": None, "created_at": now}
         for identity_id, _key, out in fresh])).scalars().all()
    outbox = OutboxItem.__table__
    await conn.execute(
        update(outbox).where(outbox.c.id == bindparam("outbox_id"))
        .values(message_id=bindparam("new_message_id")),
        [{"outbox_id": queued[key], "new_message_id": message_id}
         for (_identity, key, _out), message_id in zip(fresh, message_ids, strict=True)])
    for identity_id, _key, _out in fresh:
        wake_after_commit(session, identity_id)
    return {key: queued[key] for _identity, key, _out in fresh}
