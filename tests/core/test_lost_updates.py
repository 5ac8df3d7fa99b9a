"""Two writers change different columns of one row: each change survives.

A transaction that read a row without a lock and changed one column must write that column
only, never the whole row as it read it (which would undo what another transaction committed
meanwhile). On PostgreSQL the two transactions really overlap; SQLite lets one writer at a
time, so there the first reads in its own transaction and writes in a later one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

import bot.app  # noqa: F401 - the whole service loaded, as `serve` has it
from core.models import Conversation, Intake, SessionRequest
from core.runtime import Runtime
from tests.factories import paid_request


async def _overlapping(runtime: Runtime, model: type[Any], row_id: int,
                       first: Callable[[Any], None], second: Callable[[Any], None]) -> None:
    """`first` changes a row read without a lock; meanwhile `second` changes it and commits;
    then the first commits."""
    async def change_and_commit(change: Callable[[Any], None]) -> None:
        async with runtime.sessions.begin() as other:
            row = await other.get(model, row_id)
            change(row)

    if runtime.engine.dialect.name == "sqlite":
        async with runtime.readers() as reader:
            held = await reader.get(model, row_id)
        await change_and_commit(second)
        async with runtime.sessions.begin() as session:
            row = await session.merge(held, load=False)
            first(row)
        return
    async with runtime.sessions.begin() as session:
        row = await session.get(model, row_id)
        await change_and_commit(second)
        first(row)


async def _read(runtime: Runtime, query: Any) -> Any:
    async with runtime.sessions() as session:
        return (await session.execute(query)).one()


async def test_two_writers_of_one_intake_keep_both_changes(runtime: Runtime) -> None:
    request = await paid_request(runtime)

    def set_vin(intake: Intake) -> None:
        intake.vin = "1HGCM82633A004352"

    def set_problem(intake: Intake) -> None:
        intake.problem = "Squeal from the belt on cold mornings"

    await _overlapping(runtime, Intake, request.intake_id, set_problem, set_vin)
    vin, problem = await _read(runtime, select(Intake.vin, Intake.problem)
                               .where(Intake.id == request.intake_id))
    assert (vin, problem) == ("1HGCM82633A004352", "Squeal from the belt on cold mornings")


async def test_two_writers_of_one_conversation_keep_both_changes(runtime: Runtime) -> None:
    request = await paid_request(runtime)
    async with runtime.sessions() as session:
        conversation_id = await session.scalar(
            select(Conversation.id).where(Conversation.intake_id == request.intake_id))

    def set_step(conversation: Conversation) -> None:
        conversation.step = "rating"

    def set_data(conversation: Conversation) -> None:
        conversation.data = {"note": "kept"}

    await _overlapping(runtime, Conversation, conversation_id, set_step, set_data)
    step, data = await _read(runtime, select(Conversation.step, Conversation.data)
                             .where(Conversation.id == conversation_id))
    assert (step, data) == ("rating", {"note": "kept"})


async def test_two_writers_of_one_request_keep_both_changes(runtime: Runtime) -> None:
    request = await paid_request(runtime)
    now = runtime.clock.now()

    def unattended(row: SessionRequest) -> None:
        row.unattended_at = now

    def close_reason(row: SessionRequest) -> None:
        row.close_reason = "noted"

    await _overlapping(runtime, SessionRequest, request.id, unattended, close_reason)
    unattended_at, reason = await _read(runtime, select(
        SessionRequest.unattended_at, SessionRequest.close_reason)
        .where(SessionRequest.id == request.id))
    assert (unattended_at, reason) == (now, "noted")


