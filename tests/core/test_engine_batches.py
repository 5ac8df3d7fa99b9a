"""Group commit: messages from different people share a transaction, and still behave as if
each had been handled alone."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.flows import route
from core.context import Context
from core.db import create_engine
from core.engine import Engine
from core.messages import Inbound, Outbound
from core.models import Conversation, Customer, Identity, Intake, Message, TermsAcceptance
from core.runtime import Runtime
from core.turns import KeyedFifoLock
from tests.conftest import PG_URL
from tests.factories import linked_mechanic
from tests.helpers import (
    Chat,
    counting_commits,
    joined,
    recording_executions,
    recording_statements,
)

GOOD_VIN = "1HGCM82633A004352"


async def test_people_writing_at_once_share_transactions_and_get_their_own_answers(
        runtime: Runtime, engine: AsyncEngine) -> None:
    bot = Engine(runtime, route)
    chats = [Chat(bot, channel="web", address=f"v_{i}") for i in range(30)]
    await asyncio.gather(*(chat.send("hi") for chat in chats))

    with counting_commits(engine) as commits:
        answers = await asyncio.gather(*(chat.send(str(1 + i % 3))
                                         for i, chat in enumerate(chats)))

    # 30 messages, far fewer transactions (without batching: one commit each).
    assert 1 <= len(commits) < 10
    for i, (chat, reply) in enumerate(zip(chats, answers, strict=True)):
        plan = ("Quick Chat", "Standard Video", "Full Diagnostic")[i % 3]
        assert plan in joined(reply) and "first name" in joined(reply), (chat.address, reply)
    async with runtime.sessions() as s:
        steps = {c.step for c in (await s.scalars(select(Conversation))).all()}
        inbound = (await s.scalars(select(Message).where(Message.direction == "in"))).all()
    assert steps == {"name"}
    assert len(inbound) == 60


async def test_a_batchs_conversations_are_written_back_in_one_statement(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # The flows change each conversation as plain values; the engine writes them all back
    # with one UPDATE per transaction, whatever changed in each (steps, data, intakes made in
    # the same batch that they now point at).
    bot = Engine(runtime, route)
    chats = [Chat(bot, channel="web", address=f"v_{i}") for i in range(20)]
    await asyncio.gather(*(chat.send("hi") for chat in chats))
    answered_at = runtime.clock.advance(60)  # type: ignore[attr-defined]
    with recording_statements(engine) as statements, counting_commits(engine) as commits:
        await asyncio.gather(*(chat.send("1" if i % 2 else "cancel")
                               for i, chat in enumerate(chats)))
    updates = [x for x in statements if "UPDATE CONVERSATIONS" in x.upper().replace('"', "")]
    assert len(updates) == len(commits), (len(updates), len(commits))
    async with runtime.sessions() as s:
        after = (await s.scalars(select(Conversation).order_by(Conversation.id))).all()
    assert all(c.updated_at == answered_at for c in after)
    steps = sorted((c.step, c.intake_id is None) for c in after)
    assert steps == [("name", False)] * 10 + [("start", True)] * 10
    # A new person's conversation points at the intake made in the same transaction.
    fresh = [Chat(bot, channel="web", address=f"new_{i}") for i in range(5)]
    await asyncio.gather(*(chat.send("hi") for chat in fresh))
    async with runtime.sessions() as s:
        rows = (await s.execute(
            select(Conversation.step, Conversation.data, Conversation.intake_id)
            .join(Identity, Identity.id == Conversation.identity_id)
            .where(Identity.address.like("new_%")))).all()
    assert [(r.step, r.data) for r in rows] == [("plan", {"files": 0})] * 5
    assert all(r.intake_id is not None for r in rows)


async def test_a_failing_message_costs_the_others_in_its_batch_nothing(
        runtime: Runtime, engine: AsyncEngine) -> None:
    async def router(ctx: Context) -> None:
        if ctx.text == "boom":
            raise RuntimeError("a flow bug")
        await route(ctx)

    bot = Engine(runtime, router)
    chats = [Chat(bot, channel="web", address=f"v_{i}") for i in range(12)]

    with counting_commits(engine) as commits:
        results = await asyncio.gather(
            *(chat.send("boom" if i == 5 else "hi") for i, chat in enumerate(chats)),
            return_exceptions=True)

    assert isinstance(results[5], RuntimeError)
    assert all(isinstance(r, list) and "AutoDoctor assistant" in joined(r)
               for i, r in enumerate(results) if i != 5), results
    # The batch was rolled back, the failing message handled alone (and rolled back), and
    # the others together again in one transaction, not one each.
    assert len(commits) <= 2, len(commits)
    async with runtime.sessions() as s:
        senders = set((await s.scalars(
            select(Identity.address).join(Message, Message.identity_id == Identity.id)
            .where(Message.direction == "in"))).all())
    assert senders == {f"v_{i}" for i in range(12)} - {"v_5"}


async def test_one_persons_messages_stay_in_order_while_others_are_batched(
        runtime: Runtime) -> None:
    bot = Engine(runtime, route)
    fast = Chat(bot, channel="web", address="fast")
    others = [Chat(bot, channel="web", address=f"o_{i}") for i in range(10)]
    await asyncio.gather(fast.send("hi"), *(o.send("hi") for o in others))

    answers = ["2", "Dana", GOOD_VIN, "90000", "Car pulls to the right when braking hard",
               "skip"]
    await asyncio.gather(*(fast.send(a) for a in answers),
                         *(o.send("1") for o in others))

    async with runtime.sessions() as s:
        said = (await s.scalars(
            select(Message.text).join(Identity, Identity.id == Message.identity_id)
            .where(Identity.address == "fast", Message.direction == "in")
            .order_by(Message.id))).all()
        step = await s.scalar(select(Conversation.step).join(
            Identity, Identity.id == Conversation.identity_id).where(Identity.address == "fast"))
    assert said[1:] == answers
    assert step == "summary"


@pytest.mark.parametrize("max_batch", [1, 4])
async def test_batch_size_is_bounded(runtime: Runtime, engine: AsyncEngine,
                                     max_batch: int) -> None:
    bot = Engine(runtime, route, max_batch=max_batch)
    chats = [Chat(bot, channel="web", address=f"v_{i}") for i in range(8)]
    with counting_commits(engine) as commits:
        await asyncio.gather(*(chat.send("hi") for chat in chats))
    assert len(commits) == 8 // max_batch


# The database server ending a pooled connection (a restart, a failover) is PostgreSQL's case.
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_connection_killed_under_the_pool_costs_a_retry_not_the_message(
        runtime: Runtime, engine: AsyncEngine, backend: str) -> None:
    chat = Chat(Engine(runtime, route), channel="web", address="v_restart")
    await chat.send("hi")
    async with engine.connect() as conn:  # the pooled connection the next message will use
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    admin = create_engine(PG_URL)
    try:
        async with admin.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await admin.dispose()

    reply = await chat.send("1")

    assert "Quick Chat" in joined(reply)
    async with runtime.sessions() as s:
        step = await s.scalar(select(Conversation.step))
    assert step == "name"


async def test_drain_waits_for_messages_already_handed_in(runtime: Runtime) -> None:
    bot = Engine(runtime, route)
    chats = [Chat(bot, channel="web", address=f"v_{i}") for i in range(5)]
    sending = [asyncio.create_task(chat.send("hi")) for chat in chats]
    await asyncio.sleep(0)  # handed in, not yet handled

    assert await bot.drain()

    async with runtime.sessions() as s:  # stored, whatever became of the callers
        assert len((await s.scalars(select(Message).where(Message.direction == "in"))).all()) == 5
    assert all("AutoDoctor" in joined(reply) for reply in await asyncio.gather(*sending))
    assert await bot.drain()  # nothing under way: at once


async def test_many_first_contacts_in_one_batch_cost_what_a_few_do(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # A crowd of new widget visitors at once: their customers, identities and conversations
    # are made in a few multi-row statements, not three or four round trips each.
    bot = Engine(runtime, route)
    counts = []
    for round_no, how_many in enumerate((3, 30)):
        chats = [Chat(bot, channel="web", address=f"r{round_no}_{i}") for i in range(how_many)]
        with recording_statements(engine) as statements:
            replies = await asyncio.gather(*(chat.send("hi") for chat in chats))
        assert all("AutoDoctor assistant" in joined(r) for r in replies)
        counts.append(len(statements))
    async with runtime.sessions() as s:
        people = (await s.execute(
            select(Identity.address, Identity.customer_id, Conversation.step)
            .join(Conversation, Conversation.identity_id == Identity.id))).all()
    assert len(people) == 33 and len({p.customer_id for p in people}) == 33
    assert {p.step for p in people} == {"plan"}
    # Each new person still starts an intake of their own (one INSERT each); nothing else grows.
    assert counts[1] - counts[0] <= 27, counts


async def test_first_contacts_beside_people_known_without_a_conversation(
        runtime: Runtime, engine: AsyncEngine, backend: str) -> None:
    # A batch of new visitors, with a mechanic who has linked the widget but never written and
    # a customer whose identity another process has just made (neither has a conversation):
    # everyone gets their own first answer, and only the new visitors get customers, made
    # with their identities and conversations by one statement per table and transaction.
    bot = Engine(runtime, route)
    await linked_mechanic(runtime, "Ann")
    now = runtime.clock.now()
    async with runtime.sessions.begin() as s:
        customer = Customer(display_name="Bo", created_at=now)
        s.add(customer)
        await s.flush()
        s.add(Identity(channel="web", address="made-elsewhere", customer_id=customer.id,
                       created_at=now))
    new = [Chat(bot, channel="web", address=f"new_{i}") for i in range(20)]
    mechanic = Chat(bot, channel="web", address="mech-Ann")
    elsewhere = Chat(bot, channel="web", address="made-elsewhere")
    with recording_statements(engine) as statements, counting_commits(engine) as commits:
        replies = await asyncio.gather(mechanic.send("status"), elsewhere.send("hi"),
                                       *(chat.send("hi") for chat in new))
    assert "Ann: available" in joined(replies[0]), replies[0]
    assert all("AutoDoctor assistant" in joined(r) for r in replies[1:]), replies[1:]
    async with runtime.sessions() as s:
        people = (await s.execute(
            select(Identity.address, Identity.customer_id, Identity.mechanic_id,
                   Conversation.flow, Conversation.step)
            .join(Conversation, Conversation.identity_id == Identity.id)
            .order_by(Identity.address))).all()
        customers = (await s.scalars(select(Customer.id))).all()
    assert len(people) == 22
    assert {(p.flow, p.step) for p in people if p.mechanic_id is None} == {("customer", "plan")}
    assert [p.flow for p in people if p.mechanic_id is not None] == ["mechanic"]
    # One customer each for the new visitors, Bo's, and none drawn for the others.
    assert sorted(customers) == sorted(p.customer_id for p in people
                                       if p.customer_id is not None)
    assert len(customers) == 21
    # The new visitors' customers, identities and conversations: one multi-row INSERT each
    # per transaction, however many.
    for table in ("customers", "identities", "conversations"):
        making = [x for x in statements if x.lstrip().startswith(f'INSERT INTO "{table}"')]
        assert 1 <= len(making) <= len(commits), (table, making)


async def test_two_processes_meeting_the_same_new_people_at_once_make_each_once(
        engine_factory: object, runtime: Runtime) -> None:
    # The same first messages reach two processes at once (a provider's retry to another
    # server, say): each person gets answers from both, and ends up with one customer, one
    # identity and one conversation; no customer is left without an identity.
    other = Runtime.build(runtime.config, engine_factory(),  # type: ignore[operator]
                          runtime.payments, runtime.texts, runtime.clock)
    bots = Engine(runtime, route), Engine(other, route)
    for round_no in range(3):
        people = [f"r{round_no}_{i}" for i in range(15)]
        replies = await asyncio.gather(*(
            Chat(bot, channel="telegram", address=address).send("hi")
            for address in people for bot in bots))
        assert all(joined(r) for r in replies), replies
    async with runtime.sessions() as s:
        identities = (await s.execute(select(Identity.address, Identity.customer_id))).all()
        conversations = (await s.scalars(select(Conversation.identity_id))).all()
        customers = (await s.scalars(select(Customer.id))).all()
    assert len(identities) == 45 and len({i.address for i in identities}) == 45
    assert len(conversations) == len(set(conversations)) == 45
    assert sorted(customers) == sorted(i.customer_id for i in identities)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_batch_finds_its_senders_through_the_index_not_by_scanning(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # SQLite planned `(channel, address) IN (VALUES ...)` as a scan of every conversation,
    # so a batch's lookup took longer the more people had ever written. The lookups a batch
    # makes (the senders with their identities, conversations and intakes, known or not)
    # must go through the unique index on (channel, address).
    bot = Engine(runtime, route)
    known = [Chat(bot, channel="web", address=f"known_{i}") for i in range(5)]
    await asyncio.gather(*(chat.send("hi") for chat in known))
    new = [Chat(bot, channel="web", address=f"new_{i}") for i in range(3)]
    with recording_executions(engine) as runs:
        await asyncio.gather(*(chat.send("hi") for chat in known + new))
    lookups = [(sql, params) for sql, params in runs
               if sql.lstrip().upper().startswith("SELECT") and "FROM identities" in sql]
    assert lookups, [sql for sql, _ in runs]
    async with engine.connect() as conn:
        for sql, params in lookups:
            plan = [row[-1] for row in await conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + sql, params)]
            assert any(line.startswith("SEARCH identities USING INDEX") for line in plan), plan
            assert not [line for line in plan
                        if line.startswith(("SCAN identities", "SCAN conversations"))], plan


async def test_a_first_contact_keeps_the_name_it_came_with(runtime: Runtime) -> None:
    bot = Engine(runtime, route)
    await asyncio.gather(*(bot.receive(Inbound(channel="telegram", address=str(100 + i),
                                               text="hi", display_name=name))
                           for i, name in enumerate(["Ann", None, "Bo", "Cy"])))
    async with runtime.sessions() as s:
        rows = (await s.execute(
            select(Identity.address, Identity.display_name, Customer.display_name)
            .join(Customer, Customer.id == Identity.customer_id)
            .order_by(Identity.address))).all()
    assert [tuple(r) for r in rows] == [("100", "Ann", "Ann"), ("101", None, None),
                                        ("102", "Bo", "Bo"), ("103", "Cy", "Cy")]


async def _held_by_a_slow_message(
        runtime: Runtime) -> tuple[Engine, asyncio.Event, asyncio.Task[list[Outbound]]]:
    """An engine whose transaction is held open by the message "slow" (sent already) until
    the event is set."""
    release = asyncio.Event()

    async def router(ctx: Context) -> None:
        if ctx.text == "slow":
            await release.wait()
        await route(ctx)

    bot = Engine(runtime, router)
    slow = asyncio.create_task(Chat(bot, channel="web", address="slow").send("slow"))
    await asyncio.sleep(0.1)
    return bot, release, slow


async def test_on_postgresql_a_second_transaction_runs_beside_a_slow_one(
        runtime: Runtime, backend: str) -> None:
    # PostgreSQL: while one batch waits (on the server, or here on a slow flow), the next
    # person's message is handled in a transaction of its own (after SPARE_AFTER). SQLite has
    # one writer: it waits.
    bot, release, slow = await _held_by_a_slow_message(runtime)
    quick = asyncio.create_task(Chat(bot, channel="web", address="quick").send("hi"))
    done, _ = await asyncio.wait({quick}, timeout=3)
    if backend == "postgresql":
        assert quick in done and "AutoDoctor assistant" in joined(quick.result())
        assert not slow.done()
    else:
        assert not done
    release.set()
    assert "AutoDoctor assistant" in joined(await slow)
    assert "AutoDoctor assistant" in joined(await quick)


# PostgreSQL's case: SQLite runs one transaction at a time.
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_second_transaction_waits_until_enough_messages_want_it(
        runtime: Runtime, backend: str) -> None:
    # Beside a transaction under way, a second starts only for a batch worth its fixed cost
    # (SPARE_MIN_WAITING messages), or once a message has waited SPARE_AFTER.
    bot, release, slow = await _held_by_a_slow_message(runtime)
    bot.SPARE_MIN_WAITING, bot.SPARE_AFTER = 5, 60.0
    few = [asyncio.create_task(Chat(bot, channel="web", address=f"q{i}").send("hi"))
           for i in range(4)]
    done, _ = await asyncio.wait(few, timeout=0.5)
    assert not done  # four wait for the batch after the slow one
    fifth = asyncio.create_task(Chat(bot, channel="web", address="q4").send("hi"))
    done, _ = await asyncio.wait([*few, fifth], timeout=3)
    assert len(done) == 5 and not slow.done()  # five are worth a transaction of their own
    assert all("AutoDoctor assistant" in joined(task.result()) for task in done)
    release.set()
    assert "AutoDoctor assistant" in joined(await slow)


async def test_a_message_waiting_for_a_payment_sees_the_intake_paid(
        runtime: Runtime, backend: str) -> None:
    # The customer types "cancel" while the payment's transaction (another process, or a
    # webhook beside the engine) holds their conversation. Once it commits, the message must
    # see the intake paid, not cancel it as unpaid. (PostgreSQL: a statement that waited for
    # a row lock used to read the rows joined to it as they were before the wait.)
    from billing.payments import mark_paid
    from tests.billing.helpers import awaiting_payment

    waiting = await awaiting_payment(runtime, address="payer")
    bot = Engine(runtime, route)
    async with runtime.transaction() as uow:
        request = await mark_paid(uow, runtime, waiting.checkout.ref, runtime.clock.now())
        assert request is not None
        typed = asyncio.create_task(Chat(bot, channel="web", address="payer").send("cancel"))
        await asyncio.sleep(0.3)  # the message waits for this transaction (SQLite: its lock)
    replies = await typed
    async with runtime.sessions() as s:
        status = await s.scalar(select(Intake.status).where(Intake.id == waiting.intake.id))
    assert status == "paid"
    assert runtime.texts("cancelled") not in joined(replies)


async def test_a_batchs_new_checkouts_are_written_in_one_statement(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # Customers confirming at once: on PostgreSQL their checkouts go in with one INSERT per
    # transaction (core.sql.add_new), outside the ORM's flush; every one gets its own link.
    bot = Engine(runtime, route)
    chats = [Chat(bot, channel="web", address=f"v_{i}") for i in range(12)]
    for step in ("hi", "1", "Dana", GOOD_VIN, "84000",
                 "Grinding noise from the front left wheel when braking"):
        await asyncio.gather(*(chat.send(step) for chat in chats))
    await asyncio.gather(*(chat.send(action="photos:done") for chat in chats))
    await asyncio.gather(*(chat.send(action="confirm") for chat in chats))
    agree = f"terms:agree:{runtime.config.terms.version}"
    with recording_statements(engine) as statements, counting_commits(engine) as commits:
        replies = await asyncio.gather(*(chat.send(action=agree) for chat in chats))
    links = [r[-1].link.url for r in replies if r and r[-1].link is not None]
    assert len(set(links)) == len(chats), replies
    inserts = [x for x in statements if "INSERT INTO" in x.upper() and "checkouts" in x]
    if engine.dialect.name == "postgresql":
        assert len(inserts) <= len(commits) < len(chats), (len(inserts), len(commits))
        # The same SQL whatever the number of rows (one parameter per column), so the server
        # prepares it once; the ORM's multi-row VALUES is a new statement for each count.
        assert all("ROWS FROM (" in x for x in inserts), inserts
    async with runtime.sessions() as s:
        stored = (await s.scalars(select(Intake))).all()
        accepted = (await s.scalars(select(TermsAcceptance.customer_id))).all()
    assert {i.status for i in stored} == {"awaiting_payment"}
    assert sorted(accepted) == sorted(i.customer_id for i in stored)


async def test_a_batchs_writes_at_commit_are_one_statement_on_postgresql(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # Transcript rows, changed intakes and conversations, new rows: at the commit, on
    # PostgreSQL, one statement (core.sql.CombinedWrites), not one each; everything lands.
    bot = Engine(runtime, route)
    chats = [Chat(bot, channel="web", address=f"v_{i}") for i in range(8)]
    await asyncio.gather(*(chat.send("hi") for chat in chats))
    await asyncio.gather(*(chat.send("1") for chat in chats))
    await asyncio.gather(*(chat.send("Dana") for chat in chats))
    with recording_statements(engine) as statements, counting_commits(engine) as commits:
        # Half give a VIN (their intakes change), half start over (new intakes).
        answers = await asyncio.gather(*(chat.send(GOOD_VIN if i % 2 else "start over")
                                         for i, chat in enumerate(chats)))
    writes = [x for x in statements if x.lstrip().upper().startswith(("INSERT", "UPDATE",
                                                                       "WITH"))]
    if engine.dialect.name == "postgresql":
        assert len(writes) == len(commits), writes
        combined = writes[0]
        for part in ('INSERT INTO "messages"', 'INSERT INTO "intakes"', 'UPDATE "intakes"',
                     'UPDATE "conversations"'):
            assert part in combined, (part, combined)
    else:
        assert len(writes) > len(commits)
    for i, reply in enumerate(answers):
        labels = [button.label for r in reply for button in r.buttons]
        assert ("2003" in joined(reply)) if i % 2 else \
            any(label.startswith("Quick Chat") for label in labels), reply
    async with runtime.sessions() as s:
        conversations = (await s.scalars(select(Conversation).order_by(Conversation.id))).all()
        intakes = {i.id: i for i in (await s.scalars(select(Intake))).all()}
        said = (await s.scalars(select(Message).where(Message.direction == "in"))).all()
    assert len(said) == 8 * 4
    for i, conversation in enumerate(conversations):
        intake = intakes[conversation.intake_id]
        if i % 2:
            assert conversation.step == "odometer" and intake.vin == GOOD_VIN
        else:
            assert conversation.step == "plan" and intake.plan is None
            assert intake.status == "draft"
    assert sum(i.status == "cancelled" for i in intakes.values()) == 4


async def test_turns_serve_each_key_in_order_and_skip_those_who_gave_up() -> None:
    turns: KeyedFifoLock[str] = KeyedFifoLock()
    served: list[str] = []

    async def one(name: str, key: str = "a") -> None:
        if not turns.take_now(key):
            await turns.wait(key)
        try:
            served.append(name)
            await asyncio.sleep(0.01)
        finally:
            turns.release(key)

    first = asyncio.create_task(one("first"))
    await asyncio.sleep(0)  # holds the turn
    impatient, second = asyncio.create_task(one("impatient")), asyncio.create_task(one("second"))
    other = asyncio.create_task(one("other key", key="b"))
    await asyncio.sleep(0)  # all waiting, but the other key's, which holds its own
    assert served == ["first", "other key"]
    impatient.cancel()
    await asyncio.wait_for(asyncio.gather(first, second, other, impatient,
                                          return_exceptions=True), 5)
    assert served == ["first", "other key", "second"]
    assert impatient.cancelled() and len(turns) == 0

    # Cancelled just as the turn was handed over: it passes the turn on.
    assert turns.take_now("a")
    late, last = asyncio.create_task(turns.wait("a")), asyncio.create_task(one("last"))
    await asyncio.sleep(0)
    turns.release("a")  # to `late`, which has not run since
    late.cancel()
    await asyncio.wait_for(asyncio.gather(late, last, return_exceptions=True), 5)
    assert late.cancelled() and served[-1] == "last" and len(turns) == 0
