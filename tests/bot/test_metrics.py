"""/metrics for operators, scraped after provoking each series: the outbox's depth and the age
of its oldest due message per channel, delivery failures by reason, sweep counts by kind,
the time from payment to accept, live consultations."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.http import RUNTIME
from core.clock import ManualClock
from core.config import Config
from core.consultations import start_session
from core.delivery import OutboxDispatcher
from core.dispatch.accept import Outcome, assign
from core.errors import PermanentFailure, RetryLater
from core.models import Consultation
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.core.test_delivery import ScriptedProvider, queue
from tests.factories import linked_mechanic, paid_request


async def scrape(client: TestClient) -> dict[str, float]:
    """Every sample of /metrics: 'name{labels}' -> value."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples = {}
    for line in (await resp.text()).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_outbox_depth_and_age_of_the_oldest_due_message_per_channel(
        make_client: Any, config: Config, clock: ManualClock) -> None:
    client = await make_client(config)
    runtime: Runtime = client.app[RUNTIME]
    before = await scrape(client)
    assert not any(name.startswith("autodoctor_outbox_depth{") for name in before)
    await queue(runtime, "A", "a1", "a2")
    clock.advance(30)
    await queue(runtime, "B", "b1")
    clock.advance(15)
    samples = await scrape(client)
    assert samples['autodoctor_outbox_depth{channel="flaky"}'] == 3
    assert samples['autodoctor_outbox_oldest_due_seconds{channel="flaky"}'] == 45
    # The head of each chat delivered: a2 waits, and is due since it was queued.
    assert (await OutboxDispatcher(runtime, {"flaky": ScriptedProvider(clock)})
            .run_once()).sent == 2  # the head of each chat
    clock.advance(5)
    samples = await scrape(client)
    assert samples['autodoctor_outbox_depth{channel="flaky"}'] == 1
    assert samples['autodoctor_outbox_oldest_due_seconds{channel="flaky"}'] == 50  # a2


async def test_a_message_waiting_for_its_retry_is_counted_but_not_due(
        make_client: Any, config: Config, clock: ManualClock) -> None:
    client = await make_client(config)
    runtime: Runtime = client.app[RUNTIME]
    await queue(runtime, "A", "a1")
    provider = ScriptedProvider(clock, [RetryLater("HTTP 502")])
    await OutboxDispatcher(runtime, {"flaky": provider}).run_once()
    samples = await scrape(client)
    assert samples['autodoctor_outbox_depth{channel="flaky"}'] == 1
    assert samples['autodoctor_outbox_oldest_due_seconds{channel="flaky"}'] == 0


async def test_delivery_failures_by_channel_and_reason(make_client: Any, config: Config,
                                                       clock: ManualClock) -> None:
    client = await make_client(config)
    runtime: Runtime = client.app[RUNTIME]
    await queue(runtime, "A", "a1")
    await queue(runtime, "B", "b1")
    provider = ScriptedProvider(clock, [RetryLater("HTTP 429", retry_after=1),
                                        RetryLater("HTTP 502"), RuntimeError("boom"),
                                        PermanentFailure("blocked")])
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider})
    for _ in range(6):
        await dispatcher.run_once()
        clock.advance(10)
    failures = {name: value for name, value in (await scrape(client)).items()
                if name.startswith("autodoctor_delivery_failures_total")}
    assert failures == {
        f'autodoctor_delivery_failures_total{{channel="flaky",reason="{reason}"}}': 1.0
        for reason in ("rate_limited", "temporary", "error", "permanent")}


async def test_sweeps_by_kind_accept_latency_and_live_consultations(
        make_client: Any, config: Config, clock: ManualClock) -> None:
    client = await make_client(config)
    runtime: Runtime = client.app[RUNTIME]
    mechanic = await linked_mechanic(runtime, "Sam")
    request = await paid_request(runtime)
    await paid_request(runtime, address="other")
    clock.advance(301)  # both unattended
    assert (await run_sweeps(runtime)).unattended == 2
    clock.advance(99)  # accepted 400 s after payment
    async with runtime.transaction() as uow:
        result = await assign(uow, runtime, request.ref, mechanic.mechanic_id or 0, "ops",
                              clock.now())
    assert result.outcome is Outcome.ACCEPTED
    samples = await scrape(client)
    assert samples['autodoctor_sweep_rows_total{kind="unattended"}'] == 2
    assert samples["autodoctor_accept_seconds_count"] == 1
    assert samples["autodoctor_accept_seconds_sum"] == 400
    assert samples['autodoctor_accept_seconds_bucket{le="300.0"}'] == 0
    assert samples['autodoctor_accept_seconds_bucket{le="600.0"}'] == 1
    assert samples["autodoctor_consultations_live"] == 0
    async with runtime.transaction() as uow:
        consultation = await uow.session.scalar(select(Consultation))
        assert consultation is not None
        assert await start_session(uow, runtime, consultation, clock.now())
    assert (await scrape(client))["autodoctor_consultations_live"] == 1
    clock.advance(31 * 60)  # the Quick Chat's 30 minutes are up
    assert (await run_sweeps(runtime)).completed == 1
    samples = await scrape(client)
    assert samples["autodoctor_consultations_live"] == 0
    assert samples['autodoctor_sweep_rows_total{kind="completed"}'] == 1
    # A transaction rolled back counts nothing: the accept below is undone.
    other = await paid_request(runtime, address="third")
    second = await linked_mechanic(runtime, "Kim")
    try:
        async with runtime.transaction() as uow:
            await assign(uow, runtime, other.ref, second.mechanic_id or 0, "ops", clock.now())
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    assert (await scrape(client))["autodoctor_accept_seconds_count"] == 1


async def test_the_draining_gauge_and_metrics_names_documented(make_client: Any,
                                                                config: Config) -> None:
    from tests.bot.test_cli import ROOT

    client = await make_client(config)
    samples = await scrape(client)
    assert samples["autodoctor_draining"] == 0
    readme = (ROOT / "README.md").read_text()
    for name in ("autodoctor_outbox_depth", "autodoctor_outbox_oldest_due_seconds",
                 "autodoctor_delivery_failures_total", "autodoctor_sweep_rows_total",
                 "autodoctor_accept_seconds_bucket", "autodoctor_consultations_live"):
        assert re.search(rf"\b{name}\b", readme), name
