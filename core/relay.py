"""The relay between a consultation's two sides, and extensions of its time.

What either side writes reaches the other through the outbox, on whatever channel each is on,
labelled with the sender's first name, in order, once. Files go along: the recipient gets a
link that opens for them only (core.links), and a channel that can carry files sends the file
itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from core.config import EXTENSION_PLAN
from core.consultations import (
    attachments,
    start_session,
    tell_both,
)
from core.messages import Outbound
from core.models import Checkout, Consultation, Extension, File, SessionRequest, table
from core.outbox import Addressee, enqueue
from core.payments import PaymentPort, new_checkout_ref
from core.runtime import Runtime
from core.store.records import CheckoutRecord
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.relay")

@dataclass(frozen=True)
class Relayed:
    """What came of one relayed message."""

    delivered: bool  # queued for the other side (False: their chat is gone)
    started: bool  # this message started the session (the customer's first)
    files: int  # files sent along
    refused_files: int  # file ids that were not this sender's own uploads


async def relay(uow: UnitOfWork, runtime: Runtime, consultation: Consultation,
                sender_id: int, sender_name: str, other: Addressee | None, text: str,
                file_ids: tuple[str, ...], now: datetime) -> Relayed:
    """Pass one message from `sender_id` (one of the two chats) to `other`, the other side's
    chat (None where it has gone), as the engine read it with the sender
    (core.store.people.Person.other_side)."""
    from_customer = sender_id == consultation.customer_identity_id
    started = False
    if from_customer and consultation.status == "waiting":
        # A video tier starts here too: the customer may write before joining the video.
        started = await start_session(uow, runtime, consultation, now)
    files, refused = await _take_files(uow, consultation, sender_id, file_ids)
    if other is None:
        return Relayed(False, started, 0, refused)
    body = runtime.texts("relayed", name=sender_name, text=text, files=len(files))
    await enqueue(uow, other, Outbound(
        other.channel, other.address, body,
        files=attachments(runtime.config, files, other.id, now)),
        now, consultation_id=consultation.id)
    return Relayed(True, started, len(files), refused)


async def _take_files(uow: UnitOfWork, consultation: Consultation, sender_id: int,
                      file_ids: tuple[str, ...]) -> tuple[list[File], int]:
    """The sender's own uploads among `file_ids`, now part of this consultation; and how many
    were refused (someone else's, unknown, or another session's)."""
    if not file_ids:
        return [], 0
    found = {f.public_id: f for f in (await uow.session.scalars(
        select(File).where(File.public_id.in_(set(file_ids))))).all()}
    taken: list[File] = []
    for public_id in dict.fromkeys(file_ids):
        record = found.get(public_id)
        if record is None or record.uploaded_by_identity_id != sender_id or \
                record.consultation_id not in (None, consultation.id):
            continue
        record.consultation_id = consultation.id
        taken.append(record)
    return taken, len(dict.fromkeys(file_ids)) - len(taken)


async def offer_extension(uow: UnitOfWork, runtime: Runtime, consultation: Consultation,
                          now: datetime) -> CheckoutRecord:
    """A payment link for [extensions] more minutes of this consultation."""
    request = await uow.session.get(SessionRequest, consultation.request_id)
    assert request is not None
    for made in reversed(uow.new_rows(CheckoutRecord)):
        if made.plan == EXTENSION_PLAN and made.intake_id == request.intake_id:
            return made  # asked twice in one transaction
    config = runtime.config
    port: PaymentPort = runtime.payments
    checkout = CheckoutRecord(
        id=await uow.new_id(table(Checkout)), ref=new_checkout_ref(),
        intake_id=request.intake_id, customer_id=consultation.customer_id,
        plan=EXTENSION_PLAN, amount_cents=config.extensions.price_cents,
        currency=config.billing.currency, provider=port.provider, status="open",
        created_at=now, expires_at=now + timedelta(seconds=config.billing.checkout_ttl_seconds))
    checkout.update(url=await port.create_checkout(uow.session, checkout))
    uow.add(checkout)
    await uow.flush()  # the checkout row first: the extension points at it
    uow.session.add(Extension(consultation_id=consultation.id, checkout_id=checkout.id,
                              minutes=config.extensions.minutes,
                              amount_cents=config.extensions.price_cents, status="open",
                              created_at=now))
    log.info("consultation=%s extension checkout=%s offered", consultation.id, checkout.ref)
    return checkout


async def apply_extension(uow: UnitOfWork, runtime: Runtime, checkout: Checkout,
                          now: datetime) -> bool:
    """A paid extension: the session's time grows and both are told. Paid after the session
    ended, it is marked late and refunded (core.sweeps.refund_due). False if there is no
    open extension for this checkout."""
    session = uow.session
    extension = await session.scalar(select(Extension).where(
        Extension.checkout_id == checkout.id, Extension.status == "open").with_for_update())
    if extension is None:
        return False
    consultation = await session.get(Consultation, extension.consultation_id,
                                     with_for_update=True, populate_existing=True)
    assert consultation is not None
    if consultation.status not in ("waiting", "live"):
        extension.status, extension.paid_at = "late", now
        log.info("consultation=%s extension paid after the end: refunded", consultation.id)
        return True
    extension.status, extension.paid_at = "paid", now
    consultation.extra_minutes += extension.minutes
    if consultation.ends_at is not None:  # live: the row is locked, so this is safe
        consultation.ends_at = consultation.ends_at + timedelta(minutes=extension.minutes)
        consultation.warned_minutes = None
    text = runtime.texts("extended", minutes=extension.minutes, ends_at=consultation.ends_at)
    await tell_both(uow, consultation, now, f"extended:{extension.id}", text, text)
    log.info("consultation=%s extended by %s min", consultation.id, extension.minutes)
    return True
