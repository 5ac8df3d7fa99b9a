"""Who wrote: a batch's contacts found in one query, and met for the first time in a few.

One way for everything that takes in a message or a file: people_for(). A contact seen for
the first time becomes a customer, with an identity and a conversation; someone known without
a conversation (a mechanic linked on the web console) gets one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    case,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import aliased

from core.errors import RaceLost
from core.messages import storable_text
from core.models import Consultation, Conversation, Customer, Identity, Intake, Mechanic, table
from core.store.records import (
    IDENTITY_COLUMNS,
    ConversationState,
    IdentityRow,
    IntakeRecord,
)
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.people")

Key = tuple[str, str]  # (channel, address)

_NAME_CHARS = 200  # customers.display_name and identities.display_name
_CONVERSATION = table(Conversation)
_CONVERSATION_READ = ("id", "identity_id", "flow", "step", "data", "intake_id")
_UNDER_WAY = ("waiting", "live")


@dataclass(frozen=True, slots=True)
class Contact:
    """Someone a message or a file came from."""

    channel: str
    address: str
    display_name: str | None = None
    first_seen: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.channel, self.address)


@dataclass(slots=True)
class Person:
    """A contact as the flows see them: identity, conversation (locked on PostgreSQL), current
    intake and, for a mechanic, their row (an ORM object: mechanics are changed by the cold
    paths)."""

    identity: IdentityRow
    conversation: ConversationState
    intake: IntakeRecord | None
    mechanic: Mechanic | None
    # The consultation under way that this chat is one side of (ORM: the cold paths change it).
    consultation: Consultation | None = None
    # Met in this transaction: nobody wrote to them before.
    new: bool = False
    # The other side's chat in that consultation (None without one, or where it has gone):
    # read with the rest, so relaying a line costs no lookup of its own.
    other_side: IdentityRow | None = None


@dataclass(slots=True)
class _Found:
    identity: IdentityRow
    conversation: ConversationState | None
    intake: IntakeRecord | None
    mechanic: Mechanic | None
    consultation: Consultation | None = None
    new: bool = False
    other_side: IdentityRow | None = None


async def people_for(uow: UnitOfWork, contacts: Sequence[Contact], now: datetime
                     ) -> dict[Key, Person]:
    """Every contact as a Person; first contacts are met. The conversations and intakes are
    tracked by the unit of work, so what the flows change on them is written at its commit.
    Raises RaceLost when another process met one of them at the same moment."""
    keys = sorted({contact.key for contact in contacts})
    found = await _find(uow, keys)
    await _meet(uow, [s for s in {s.key: s for s in contacts}.values() if s.key not in found],
                found, now)
    without = [key for key in keys if found[key].conversation is None]
    if without:
        await _start_conversations(uow, [found[key] for key in without], now)
    people: dict[Key, Person] = {}
    for key in keys:
        row = found[key]
        assert row.conversation is not None
        uow.track(row.conversation)
        if row.intake is not None:
            uow.track(row.intake)
        people[key] = Person(row.identity, row.conversation, row.intake, row.mechanic,
                             row.consultation, row.new, row.other_side)
    return people


async def _find(uow: UnitOfWork, keys: list[Key]) -> dict[Key, _Found]:
    """The known contacts in one query (PostgreSQL: after one that locks their conversations,
    in id order, so concurrent batches cannot deadlock on each other)."""
    name = uow.dialect.name
    params = _identity_params(name, keys)
    if name == "postgresql":
        # Locked first, read by the next statement: a statement that waits for a row lock
        # gets that row as the other transaction committed it, but the rows it joins to it
        # as they were before. A message that waited for a payment's transaction (which pays
        # the intake and moves the conversation on) would see the new step beside an unpaid
        # intake. The next statement, its locks held, reads everything as committed.
        await uow.session.execute(_lock_query(), params)
    found: dict[Key, _Found] = {}
    identity_end = len(IDENTITY_COLUMNS)
    conversation_end = identity_end + len(_CONVERSATION_READ)
    intake_end = conversation_end + len(IntakeRecord.columns())
    for row in (await uow.session.execute(_people_query(name), params)).all():
        identity = IdentityRow(*row[:identity_end])
        conversation = row[identity_end:conversation_end]
        intake = row[conversation_end:intake_end]
        other_side = row[intake_end + 3:]
        found[(identity.channel, identity.address)] = _Found(
            identity,
            ConversationState(*conversation) if conversation[0] is not None else None,
            IntakeRecord(*intake) if intake[0] is not None else None,
            row[intake_end], row[intake_end + 1] or row[intake_end + 2],
            other_side=IdentityRow(*other_side) if other_side[0] is not None else None)
    return found


async def _meet(uow: UnitOfWork, contacts: list[Contact], found: dict[Key, _Found],
                now: datetime) -> None:
    """First contacts become customers with their identities, in two multi-row INSERTs."""
    if not contacts:
        return
    names = [stored_name(s.display_name) for s in contacts]
    created = [s.first_seen or now for s in contacts]
    customers = table(Customer)
    customer_ids = [await uow.new_id(customers) for _contact in contacts]
    await uow.insert_now(customers, ("id", "display_name", "created_at"),
                         list(zip(customer_ids, names, created, strict=True)))
    made = await uow.insert_now(
        table(Identity), ("customer_id", "channel", "address", "display_name", "created_at",
                             "reachable"),
        [(customer_id, s.channel, s.address, name, at, True) for customer_id, s, name, at
         in zip(customer_ids, contacts, names, created, strict=True)],
        returning=("id", "channel", "address"), conflict=("channel", "address"))
    if len(made) < len(contacts):
        raise RaceLost("a first contact was met by another process at the same moment")
    ids = {(channel, address): identity_id for identity_id, channel, address in made}
    for contact, customer_id, name in zip(contacts, customer_ids, names, strict=True):
        identity = IdentityRow(ids[contact.key], contact.channel, contact.address, customer_id,
                               None, name)
        found[contact.key] = _Found(identity, None, None, None, new=True)
    log.info("new customers=%s channels=%s", ",".join(map(str, customer_ids)),
             ",".join(sorted({s.channel for s in contacts})))


async def _start_conversations(uow: UnitOfWork, rows: list[_Found], now: datetime) -> None:
    flows = {row.identity.id: "customer" if row.identity.mechanic_id is None else "mechanic"
             for row in rows}
    made = await uow.insert_now(
        _CONVERSATION, ("identity_id", "flow", "step", "data", "created_at", "updated_at"),
        [(row.identity.id, flows[row.identity.id], "start", {}, now, now) for row in rows],
        returning=("id", "identity_id"), conflict=("identity_id",))
    if len(made) < len(rows):
        raise RaceLost("a conversation was started by another process at the same moment")
    ids = {identity_id: conversation_id for conversation_id, identity_id in made}
    for row in rows:
        row.conversation = ConversationState(ids[row.identity.id], row.identity.id,
                                             flows[row.identity.id], "start", {}, None)


def stored_name(raw: str | None) -> str | None:
    """A contact's name as stored: cleaned (core.messages.storable_text), cut to the column."""
    return storable_text(raw)[:_NAME_CHARS] or None if raw else None


@lru_cache(maxsize=4)
def _people_query(dialect_name: str) -> Select[Any]:
    # Built once: the keys are bound at execution.
    identity = [table(Identity).c[name] for name in IDENTITY_COLUMNS]
    conversation = [_CONVERSATION.c[name] for name in _CONVERSATION_READ]
    intake = [table(Intake).c[name] for name in IntakeRecord.columns()]
    # The consultation under way this chat is the customer's or the mechanic's side of, and
    # the chat on its other side.
    as_customer, as_mechanic = aliased(Consultation), aliased(Consultation)
    other = aliased(Identity)
    other_id = case((as_customer.id.is_not(None), as_customer.mechanic_identity_id),
                    else_=as_mechanic.customer_identity_id)
    return (select(*identity, *conversation, *intake, Mechanic, as_customer, as_mechanic,
                   *(getattr(other, name) for name in IDENTITY_COLUMNS))
            .outerjoin(_CONVERSATION, _CONVERSATION.c.identity_id == Identity.id)
            .outerjoin(Intake, Intake.id == _CONVERSATION.c.intake_id)
            .outerjoin(Mechanic, Mechanic.id == Identity.mechanic_id)
            .outerjoin(as_customer, and_(as_customer.customer_identity_id == Identity.id,
                                         as_customer.status.in_(_UNDER_WAY)))
            .outerjoin(as_mechanic, and_(as_mechanic.mechanic_identity_id == Identity.id,
                                         as_mechanic.status.in_(_UNDER_WAY)))
            .outerjoin(other, other.id == other_id)
            .where(_identity_in(dialect_name)))


@lru_cache(maxsize=1)
def _lock_query() -> Select[Any]:
    return (select(_CONVERSATION.c.id)
            .join(Identity, Identity.id == _CONVERSATION.c.identity_id)
            .where(_identity_in("postgresql"))
            .order_by(_CONVERSATION.c.id)
            .with_for_update(of=_CONVERSATION))


def _identity_in(dialect_name: str) -> ColumnElement[bool]:
    """(channel, address) among the keys bound by _identity_params, found through the unique
    index on the two whatever the number of keys. The keys are one bound value (PostgreSQL:
    two arrays; SQLite: a JSON list of pairs), so the SQL is the same for any batch and is
    planned once per connection. (SQLite planned `IN (VALUES ...)` as a scan of every
    conversation.)"""
    if dialect_name == "postgresql":
        pairs = func.unnest(bindparam("channels", type_=ARRAY(String)),
                            bindparam("addresses", type_=ARRAY(String))
                            ).table_valued("channel", "address").render_derived()
        keys = select(pairs.c.channel, pairs.c.address)
    else:
        pair = func.json_each(bindparam("keys", type_=String)).table_valued("value")
        keys = select(func.json_extract(pair.c.value, "$[0]"),
                      func.json_extract(pair.c.value, "$[1]"))
    return tuple_(Identity.channel, Identity.address).in_(keys)


def _identity_params(dialect_name: str, keys: list[Key]) -> dict[str, Any]:
    if dialect_name == "postgresql":
        return {"channels": [k[0] for k in keys], "addresses": [k[1] for k in keys]}
    return {"keys": json.dumps(keys)}
