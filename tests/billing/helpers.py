"""Rows for billing tests: a customer who finished the intake and holds a payment link."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from core.models import (
    Checkout,
    Conversation,
    Customer,
    Identity,
    InboundEvent,
    Intake,
    OutboxItem,
    Refund,
    SessionRequest,
)
from core.payments import checkout_for
from core.runtime import Runtime
from core.store.records import IntakeRecord


@dataclass(frozen=True)
class AwaitingPayment:
    checkout: Checkout
    identity: Identity
    intake: Intake
    conversation_id: int


async def awaiting_payment(runtime: Runtime, plan: str = "video15", *, channel: str = "web",
                           address: str = "visitor-1", make: str = "Honda"
                           ) -> AwaitingPayment:
    """A customer at the payment step: intake submitted, a checkout opened by the provider."""
    now = runtime.clock.now()
    async with runtime.transaction() as uow:
        s = uow.session
        customer = Customer(display_name="Dana", created_at=now)
        s.add(customer)
        await s.flush()
        identity = Identity(channel=channel, address=address, customer_id=customer.id,
                            created_at=now)
        intake = Intake(customer_id=customer.id, channel=channel, status="awaiting_payment",
                        plan=plan, vehicle_year=2015, vehicle_make=make, vehicle_model="Civic",
                        problem="Grinding noise from the front wheel when braking",
                        created_at=now, updated_at=now, submitted_at=now)
        s.add_all([identity, intake])
        await s.flush()
        conversation = Conversation(identity_id=identity.id, flow="customer",
                                    step="awaiting_payment", data={}, intake_id=intake.id,
                                    created_at=now, updated_at=now)
        s.add(conversation)
        made = await checkout_for(uow, runtime.payments, runtime.config,
                                  IntakeRecord.of(intake), now)
    async with runtime.sessions() as s:
        checkout = await s.get(Checkout, made.id)
    assert checkout is not None
    return AwaitingPayment(checkout, identity, intake, conversation.id)


async def count(runtime: Runtime, model: type) -> int:
    async with runtime.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def requests(runtime: Runtime) -> list[SessionRequest]:
    async with runtime.sessions() as s:
        return list((await s.scalars(select(SessionRequest).order_by(SessionRequest.id))).all())


async def texts_to(runtime: Runtime, identity: Identity) -> list[str]:
    """What the customer was sent, in order."""
    async with runtime.sessions() as s:
        rows = (await s.scalars(select(OutboxItem).where(
            OutboxItem.identity_id == identity.id).order_by(OutboxItem.id))).all()
    return [row.payload["text"] for row in rows]


async def reload(runtime: Runtime, checkout: Checkout) -> Checkout:
    async with runtime.sessions() as s:
        row = await s.get(Checkout, checkout.id)
        assert row is not None
        return row


async def step_of(runtime: Runtime, conversation_id: int) -> str:
    async with runtime.sessions() as s:
        conversation = await s.get(Conversation, conversation_id)
        assert conversation is not None
        return conversation.step


async def intake_status(runtime: Runtime, intake_id: int) -> str:
    async with runtime.sessions() as s:
        intake = await s.get(Intake, intake_id)
        assert intake is not None
        return intake.status


async def refunds(runtime: Runtime) -> list[Refund]:
    async with runtime.sessions() as s:
        return list((await s.scalars(select(Refund).order_by(Refund.id))).all())


async def inbound_events(runtime: Runtime) -> int:
    return await count(runtime, InboundEvent)
