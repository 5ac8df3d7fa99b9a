"""core.store: the pure SQL builders, the records and the unit of work, on both databases."""

from __future__ import annotations

import contextlib
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.models import (
    Checkout,
    Conversation,
    Customer,
    Identity,
    Intake,
    Message,
    OutboxItem,
)
from core.outbox import outbox_row
from core.runtime import Runtime
from core.store import sql
from core.store.records import (
    OUTBOX_COLUMNS,
    CheckoutRecord,
    ConversationState,
    IntakeRecord,
    MessageRow,
)
from tests.helpers import recording_executions, recording_statements

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
INTAKES = Intake.__table__
OUTBOX = OutboxItem.__table__


# --- the pure builders ----------------------------------------------------------------------


def test_a_mask_names_the_changed_columns_by_their_place() -> None:
    names = ("status", "plan", "vin", "problem")
    assert sql.changed_mask(names, {"plan", "problem"}) == 0b1010
    assert sql.changed_mask(names, set()) == 0
    assert sql.changed_mask(names, {"not_a_column"}) == 0


def test_postgresql_update_writes_a_column_only_where_its_bit_is_set() -> None:
    statement = sql.pg_update_sql(INTAKES, ("plan", "vin"), prefix="w1_")
    assert statement.startswith('UPDATE "intakes" AS t SET "plan" = CASE WHEN')
    assert 'CAST(u."_changed" AS INTEGER) & 1 <> 0 THEN CAST(u."plan" AS VARCHAR(32))' \
        ' ELSE t."plan" END' in statement
    assert '& 2 <> 0 THEN CAST(u."vin" AS VARCHAR(17)) ELSE t."vin" END' in statement
    assert "json_array_elements_text(CAST(:w1_id AS json))" in statement
    assert statement.endswith('WHERE t."id" = CAST(u."id" AS INTEGER)')


def test_sqlite_update_reads_the_mask_once_per_column() -> None:
    assert sql.sqlite_update_sql(INTAKES, ("plan", "vin")) == (
        'UPDATE "intakes" SET "plan" = CASE WHEN ?2 & 1 THEN ?3 ELSE "plan" END, '
        '"vin" = CASE WHEN ?2 & 2 THEN ?4 ELSE "vin" END WHERE "id" = ?1')


def test_postgresql_insert_keeps_the_rows_order_and_its_shape_whatever_the_count() -> None:
    statement = sql.pg_insert_sql(OUTBOX, ("dedupe_key", "payload"), returning=("id",),
                                  conflict=("dedupe_key",))
    assert statement == (
        'INSERT INTO "outbox" ("dedupe_key", "payload") SELECT CAST(r."dedupe_key" AS'
        ' VARCHAR(255)), r."payload" FROM ROWS FROM (json_array_elements_text(CAST(:dedupe_key'
        ' AS json)), json_array_elements(CAST(:payload AS json))) WITH ORDINALITY AS'
        ' r("dedupe_key", "payload", _place) ORDER BY _place'
        ' ON CONFLICT ("dedupe_key") DO NOTHING RETURNING "id"')


def test_postgresql_params_are_one_json_text_per_column() -> None:
    params = sql.pg_params(OUTBOX, ("dedupe_key", "payload", "created_at"),
                           [("a", {"text": "hi", 1: None}, NOW), ("b", None, None)])
    assert {name: orjson.loads(value) for name, value in params.items()} == {
        "dedupe_key": ["a", "b"], "payload": [{"text": "hi", "1": None}, None],
        "created_at": ["2026-03-01T09:30:00+00:00", None]}
    with pytest.raises(ValueError, match="naive datetime"):
        sql.pg_params(OUTBOX, ("created_at",), [(NOW.replace(tzinfo=None),)])


def test_sqlite_insert_takes_as_many_rows_as_its_parameters_allow() -> None:
    names = ("dedupe_key", "payload", "created_at")
    assert sql.sqlite_rows_per_insert(names) == 333
    assert sql.sqlite_insert_sql(OUTBOX, names, 2, returning=("id",)) == (
        'INSERT INTO "outbox" ("dedupe_key", "payload", "created_at") VALUES (?, ?, ?),'
        ' (?, ?, ?) RETURNING "id"')


# --- records --------------------------------------------------------------------------------


def _intake(intake_id: int = 1, customer_id: int = 1) -> IntakeRecord:
    return IntakeRecord(id=intake_id, customer_id=customer_id, channel="web", status="draft",
                        plan=None, vin=None, vehicle_year=None, vehicle_make=None,
                        vehicle_model=None, odometer=None, odometer_unit=None, problem=None,
                        created_at=NOW, updated_at=NOW, submitted_at=None)


def test_a_record_changes_only_through_update_which_remembers_what_changed() -> None:
    intake = _intake()
    assert intake.changed == set()
    intake.update(plan="chat10", updated_at=NOW)
    assert intake.plan == "chat10" and intake.changed == {"plan", "updated_at"}
    with pytest.raises(FrozenInstanceError):
        intake.vin = "1HGCM82633A004352"  # type: ignore[misc]
    assert IntakeRecord.columns()[:3] == ("id", "customer_id", "channel")


# --- the unit of work -----------------------------------------------------------------------


async def _person(runtime: Runtime) -> tuple[int, int, int]:
    """(customer, identity, conversation) ids of someone known."""
    async with runtime.sessions.begin() as s:
        customer = Customer(created_at=NOW)
        s.add(customer)
        await s.flush()
        identity = Identity(channel="telegram", address="42", customer_id=customer.id,
                            created_at=NOW)
        s.add(identity)
        await s.flush()
        conversation = Conversation(identity_id=identity.id, flow="customer", step="start",
                                    data={}, created_at=NOW, updated_at=NOW)
        s.add(conversation)
        await s.flush()
        return customer.id, identity.id, conversation.id


async def test_the_unit_of_work_writes_new_changed_and_untouched_rows_in_its_order(
        runtime: Runtime, engine: AsyncEngine) -> None:
    customer_id, identity_id, conversation_id = await _person(runtime)
    async with runtime.transaction() as uow:
        old = uow.add(IntakeRecord.of(_intake(await uow.new_id(INTAKES), customer_id)))
    untouched = ConversationState(conversation_id, identity_id, "customer", "start", {}, None)
    hub = runtime.hub
    mailbox = hub.subscribe(identity_id)
    hub.outbox_wakeup.clear()
    with recording_statements(engine) as statements:
        async with runtime.transaction() as uow:
            conversation = uow.track(ConversationState(
                conversation_id, identity_id, "customer", "start", {}, None))
            uow.track(untouched)
            changed = uow.track(IntakeRecord.of(old))
            changed.update(plan="video15")
            intake = uow.add(_intake(await uow.new_id(INTAKES), customer_id))
            assert intake.id > old.id  # known before it is written
            conversation.update(intake_id=intake.id, step="plan", data={"files": 0})
            checkout = uow.add(CheckoutRecord(
                id=await uow.new_id(Checkout.__table__), ref="co_unit", intake_id=intake.id,
                customer_id=customer_id, plan="chat10", amount_cents=999, currency="usd",
                provider="offline", status="open", created_at=NOW, expires_at=None))
            intake.update(problem="Squeal when cold")  # before it is written: in its INSERT
            message = MessageRow(identity_id=identity_id, channel="telegram", direction="out",
                                 text="Hi", created_at=NOW, conversation_id=conversation_id)
            uow.add_message(message, outbox_row(identity_id, "k:unit", _out("Hi"), {}, NOW))
            assert message.id is None and not mailbox.event.is_set()
    writes = [" ".join(x.split())[:40] for x in statements
              if x.lstrip().upper().startswith(("INSERT", "UPDATE", "WITH"))]
    if engine.dialect.name == "postgresql":
        # Parts 2-4 in one statement, in their order; then the outbox rows.
        combined = [x for x in statements if x.startswith("WITH")]
        assert len(combined) == 1 and len(writes) == 2, writes
        order = [combined[0].index(part) for part in (
            'INSERT INTO "intakes"', 'INSERT INTO "checkouts"', 'UPDATE "intakes"',
            'UPDATE "conversations"', 'INSERT INTO "messages"')]
        assert order == sorted(order)
        assert writes[1].startswith('INSERT INTO "outbox"')
    else:
        assert [w.split("(")[0].split(" SET")[0].strip() for w in writes] == [
            'INSERT INTO "intakes"', 'INSERT INTO "checkouts"', 'UPDATE "intakes"',
            'UPDATE "conversations"', 'INSERT INTO "messages"', 'INSERT INTO "outbox"']
    assert message.id is not None
    rows, reread = mailbox.take()
    assert rows == [message] and not reread and hub.outbox_wakeup.is_set()
    async with runtime.sessions() as s:
        stored = {i.id: i for i in (await s.scalars(select(Intake))).all()}
        stored_conversation = await s.get(Conversation, conversation_id)
        stored_checkout = await s.get(Checkout, checkout.id)
        stored_outbox = await s.scalar(select(OutboxItem))
    assert stored[old.id].plan == "video15" and stored[old.id].created_at == NOW
    assert (stored[intake.id].status, stored[intake.id].problem) == ("draft", "Squeal when cold")
    assert stored_conversation is not None
    assert (stored_conversation.intake_id, stored_conversation.step,
            stored_conversation.data) == (intake.id, "plan", {"files": 0})
    assert stored_checkout is not None and stored_checkout.ref == "co_unit"
    assert stored_outbox is not None and stored_outbox.message_id == message.id


def _out(text_value: str) -> object:
    from core.messages import Outbound

    return Outbound("telegram", "42", text_value)


async def test_a_failed_unit_of_work_leaves_nothing_behind_and_wakes_nobody(
        runtime: Runtime) -> None:
    customer_id, identity_id, conversation_id = await _person(runtime)
    mailbox = runtime.hub.subscribe(identity_id)
    runtime.hub.outbox_wakeup.clear()
    with contextlib.suppress(RuntimeError):
        async with runtime.transaction() as uow:
            conversation = uow.track(ConversationState(
                conversation_id, identity_id, "customer", "start", {}, None))
            intake = uow.add(_intake(await uow.new_id(INTAKES), customer_id))
            conversation.update(intake_id=intake.id, step="plan")
            uow.add_message(MessageRow(identity_id=identity_id, channel="telegram",
                                       direction="out", text="lost", created_at=NOW),
                            outbox_row(identity_id, "k:lost", _out("lost"), {}, NOW))
            await uow.flush()  # written, then rolled back with the transaction
            raise RuntimeError("the batch failed")
    async with runtime.sessions() as s:
        assert (await s.scalars(select(Intake))).all() == []
        assert (await s.scalars(select(Message))).all() == []
        assert (await s.scalars(select(OutboxItem))).all() == []
        stored = await s.get(Conversation, conversation_id)
        assert stored is not None and (stored.step, stored.intake_id) == ("start", None)
    assert not mailbox.event.is_set() and not runtime.hub.outbox_wakeup.is_set()


async def test_a_loaded_record_writes_only_what_it_changed(runtime: Runtime) -> None:
    # The lost update: a record read without a lock, changed in one column, must not write
    # back the others as it read them while another transaction has changed them.
    customer_id, _identity_id, _conversation_id = await _person(runtime)
    async with runtime.transaction() as uow:
        made = uow.add(_intake(await uow.new_id(INTAKES), customer_id))
    held = IntakeRecord.of(made)  # read earlier, no lock held
    async with runtime.sessions.begin() as other:
        stored = await other.get(Intake, held.id)
        assert stored is not None
        stored.vin = "1HGCM82633A004352"
    async with runtime.transaction() as uow:
        uow.track(held).update(problem="Squeal when cold")
    async with runtime.sessions() as s:
        stored = await s.get(Intake, held.id)
    assert stored is not None
    assert (stored.vin, stored.problem) == ("1HGCM82633A004352", "Squeal when cold")


async def test_keyed_messages_are_queued_once_and_wake_only_when_queued(
        runtime: Runtime) -> None:
    _customer_id, identity_id, _conversation_id = await _person(runtime)

    def keyed(key: str) -> tuple[MessageRow, object]:
        return (MessageRow(identity_id=identity_id, channel="telegram", direction="out",
                           text=key, created_at=NOW),
                outbox_row(identity_id, key, _out(key), {"text": key}, NOW))

    async with runtime.transaction() as uow:
        first = await uow.add_keyed([keyed("a"), keyed("b")])  # type: ignore[list-item]
    mailbox = runtime.hub.subscribe(identity_id)
    async with runtime.transaction() as uow:
        again = await uow.add_keyed([keyed("b"), keyed("c")])  # type: ignore[list-item]
    assert sorted(first) == ["a", "b"] and sorted(again) == ["c"]
    rows, reread = mailbox.take()
    assert [row.text for row in rows] == ["c"] and not reread
    async with runtime.sessions() as s:
        texts = (await s.scalars(select(Message.text).order_by(Message.id))).all()
    assert texts == ["a", "b", "c"]  # the second "b" left no message behind


async def test_multi_row_writes_of_any_size_keep_every_value(runtime: Runtime) -> None:
    # More values than one SQLite statement may bind (it takes several); each value stored as
    # its type stores it; a conflict skips the row and the others go in; RETURNING comes back
    # for the rows inserted, in order.
    rows = [(f"k{i}", "web", f"a{i}", None, {"text": f"t{i}", "n": [i]}, "pending",
             NOW, NOW + timedelta(microseconds=i), None, 0, None) for i in range(300)]
    async with runtime.transaction() as uow:
        first = await uow.insert_now(OUTBOX, OUTBOX_COLUMNS, rows[:250],
                                     returning=("dedupe_key", "id"))
        second = await uow.insert_now(OUTBOX, OUTBOX_COLUMNS, rows[200:],
                                      returning=("dedupe_key", "id"), conflict=("dedupe_key",))
    assert [key for key, _ in first] == [f"k{i}" for i in range(250)]
    assert [key for key, _ in second] == [f"k{i}" for i in range(250, 300)]
    ids = dict(first) | dict(second)
    async with runtime.sessions() as s:
        stored = {row.dedupe_key: row for row in (await s.scalars(select(OutboxItem))).all()}
    assert len(stored) == 300 and all(stored[key].id == ids[key] for key in ids)
    assert stored["k299"].payload == {"text": "t299", "n": [299]}
    assert stored["k299"].created_at == NOW + timedelta(microseconds=299)


_AWKWARD = ["", "plain", 'quotes " and \\ backslash', "{braces,commas}", "NULL", "null",
            "ünïcödé ✓ 🚗", "tab\tnew\nline", "x" * 5000]


class _Instant(datetime):
    """A datetime subclass, as a test clock or a library may hand over."""

    @classmethod
    def of(cls, t: datetime) -> _Instant:
        return cls(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond,
                   t.tzinfo)


async def test_multi_row_writes_keep_awkward_values_exactly(runtime: Runtime) -> None:
    # Text comes back as it went, SQL NULL stays NULL and JSON's null in a JSON column stays
    # JSON's null, timestamps keep their microseconds and their instant (given in another
    # offset, and as a datetime subclass), and integers their values; an UPDATE too.
    plus_two = timezone(timedelta(hours=2))
    names = ("dedupe_key", "channel", "address", "payload", "status", "attempts",
             "next_attempt_at", "lease_until", "last_error", "created_at")
    rows = [(f"awk{i}", "web", value[:255],
             {"text": value, "n": [i, None, True, 2**53], 7: {"k": None}}, "pending",
             2**31 - 1 - i, _Instant.of((NOW + timedelta(microseconds=i)).astimezone(plus_two)),
             NOW if i % 2 else None, value, NOW) for i, value in enumerate(_AWKWARD)]
    rows.append(("awk-null-json", *rows[0][1:3], None, *rows[0][4:]))
    async with runtime.transaction() as uow:
        ids = dict(await uow.insert_now(OUTBOX, names, rows, returning=("dedupe_key", "id")))
        await uow.update_now(OUTBOX, ("last_error", "attempts"), [
            (ids["awk2"], 0b01, _AWKWARD[6], 0)])  # only last_error's bit set
    async with runtime.sessions() as s:
        stored = {row.dedupe_key: row for row in (await s.scalars(select(OutboxItem))).all()}
        json_nulls = (await s.execute(text(
            "SELECT count(*) FROM outbox WHERE dedupe_key = 'awk-null-json'"
            " AND payload IS NOT NULL"))).scalar_one()
    for i, value in enumerate(_AWKWARD):
        row = stored[f"awk{i}"]
        assert row.address == value[:255]
        assert row.last_error == (_AWKWARD[6] if i == 2 else value)
        assert row.payload == {"text": value, "n": [i, None, True, 2**53], "7": {"k": None}}
        assert row.attempts == 2**31 - 1 - i  # the UPDATE left it: its bit was not set
        assert row.next_attempt_at == NOW + timedelta(microseconds=i)
        assert row.lease_until == (NOW if i % 2 else None)
    assert stored["awk-null-json"].payload is None and json_nulls == 1  # JSON null, not NULL


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_postgresql_sends_each_column_as_one_json_text(runtime: Runtime,
                                                             engine: AsyncEngine) -> None:
    customer_id, _identity_id, _conversation_id = await _person(runtime)
    with recording_executions(engine) as runs:
        async with runtime.transaction() as uow:
            await uow.insert_now(Identity.__table__, ("channel", "address", "customer_id",
                                                      "reachable", "created_at"),
                                 [("web", f"v_json{i}", customer_id, True, NOW)
                                  for i in range(3)])
    [(statement, parameters)] = [run for run in runs if "INSERT" in run[0]]
    assert "json_array_elements_text(" in statement
    assert all(isinstance(value, str) for value in parameters), parameters
    assert ["web"] * 3 in [orjson.loads(value) for value in parameters]


async def test_drawn_ids_are_new_and_a_naive_time_is_refused(runtime: Runtime) -> None:
    customer_id, _identity_id, _conversation_id = await _person(runtime)
    async with runtime.transaction() as uow:
        ids = [await uow.new_id(INTAKES) for _ in range(3)]
        uow.add(_intake(ids[0], customer_id))
    assert len(set(ids)) == 3
    with pytest.raises(Exception, match="naive datetime"):
        async with runtime.transaction() as uow:
            naive = _intake(await uow.new_id(INTAKES), customer_id)
            naive.update(created_at=datetime(2026, 1, 1))
            uow.add(naive)
    async with runtime.sessions() as s:
        assert [i.id for i in (await s.scalars(select(Intake))).all()] == [ids[0]]
