"""Rows the tests start from, made through the same services the product uses."""

from __future__ import annotations

import itertools
from datetime import datetime

from sqlalchemy import select

from core.mechanics import invite_mechanic, redeem_invite
from core.models import (
    Conversation,
    Customer,
    Identity,
    Intake,
    OutboxItem,
    SessionRequest,
    TermsAcceptance,
)
from core.runtime import Runtime

_refs = itertools.count(4821)


async def paid_request(runtime: Runtime, plan: str = "chat10", *, address: str = "cust",
                       channel: str = "console", paid_at: datetime | None = None,
                       problem: str = "Grinding noise from the front wheel when braking"
                       ) -> SessionRequest:
    """A customer who finished the intake and paid: a pending request."""
    now = paid_at or runtime.clock.now()
    async with runtime.sessions.begin() as s:
        customer = Customer(display_name=f"Customer {address}", created_at=now)
        s.add(customer)
        await s.flush()
        identity = Identity(channel=channel, address=address, customer_id=customer.id,
                            created_at=now)
        s.add(identity)
        await s.flush()
        # Paid, so the terms were agreed to first.
        s.add(TermsAcceptance(customer_id=customer.id, identity_id=identity.id,
                              version=runtime.config.terms.version, channel=channel,
                              accepted_at=now))
        intake = Intake(customer_id=customer.id, channel=channel, status="paid", plan=plan,
                        vehicle_year=2015, vehicle_make="Honda", vehicle_model="Civic",
                        problem=problem, created_at=now, updated_at=now)
        s.add(intake)
        await s.flush()
        request = SessionRequest(ref=f"R-{next(_refs)}", intake_id=intake.id,
                                 customer_id=customer.id, plan=plan,
                                 price_cents=runtime.config.plan(plan).price_cents,
                                 status="pending", paid_at=now, created_at=now)
        s.add(request)
        await s.flush()
        s.add(Conversation(identity_id=identity.id, flow="customer", step="matching", data={},
                           intake_id=intake.id, created_at=now, updated_at=now))
    return request


async def linked_mechanic(runtime: Runtime, name: str, *, senior: bool = False,
                          channel: str = "web", address: str | None = None) -> Identity:
    """An invited mechanic who linked one chat."""
    now = runtime.clock.now()
    async with runtime.transaction() as uow:
        s = uow.session
        invitation = await invite_mechanic(s, runtime.config, name, now, senior=senior)
        await redeem_invite(uow, runtime, invitation.invite_code, channel,
                            address or f"mech-{name}", now)
        identity = await s.scalar(select(Identity).where(
            Identity.mechanic_id == invitation.mechanic_id))
        assert identity is not None
        return identity


async def sent_to(runtime: Runtime, identity: Identity) -> list[str]:
    """Texts queued for one person, in order."""
    async with runtime.sessions() as s:
        rows = (await s.scalars(select(OutboxItem).where(
            OutboxItem.channel == identity.channel, OutboxItem.address == identity.address)
            .order_by(OutboxItem.id))).all()
    return [r.payload["text"] for r in rows]
