"""SIGTERM drains `autodoctor serve` (bot/drain.py), for real: widget clients mid-conversation
on a served process, SIGTERM, /healthz says draining, new sockets and webhooks get 503, the
sockets close with 1012, the process exits 0; a new process takes the clients back and every
frame sent got exactly one reply."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from sqlalchemy import func, select, text

from channels.web.frames import visitor_address
from core.db import create_engine
from core.models import Identity, Message
from tests.bot.test_cli import ROOT, _cli, _env, _free_port, _serve

T = TypeVar("T")
CLIENTS = 4
FRAMES = 12  # per client, sent just before the SIGTERM
WAIT = 30.0  # how long anything here may take before the test fails


class Widget:
    """As widget.js: keeps its visitor token, the last message id and the frames not yet
    acknowledged; after reconnecting it resumes and sends those again."""

    def __init__(self) -> None:
        self.visitor: str | None = None
        self.last_id = 0
        self.frames: list[dict[str, Any]] = []
        self.acked: set[str] = set()
        self.replies: dict[int, str] = {}
        self.close_codes: list[int | None] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    async def connect(self, http: aiohttp.ClientSession, port: int) -> None:
        self.ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws/widget")
        await self.ws.send_json({"type": "hello", "visitor": self.visitor,
                                 "resume_after": self.last_id or None,
                                 "mechanic_invite": None})
        welcome = await self.ws.receive_json(timeout=WAIT)
        assert welcome["type"] == "welcome", welcome
        self.visitor = welcome["visitor"]
        self.reader = asyncio.create_task(self._read(self.ws))
        for frame in self.frames:
            if frame["client_id"] not in self.acked:
                await self.ws.send_json(frame)

    async def say(self, text: str) -> None:
        frame = {"type": "message", "text": text, "client_id": f"f{len(self.frames)}"}
        self.frames.append(frame)
        assert self.ws is not None
        await self.ws.send_json(frame)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = message.json()
            if frame["type"] == "ack":
                self.acked.add(frame["client_id"])
            elif frame["type"] == "message" and frame["id"] is not None:
                # Told apart by id, as widget.js does: a replay shows nothing twice.
                self.replies[frame["id"]] = frame["text"]
                self.last_id = max(self.last_id, frame["id"])
        self.close_codes.append(ws.close_code)

    def settled(self) -> bool:
        return len(self.acked) == len(self.frames) == len(self.replies)


async def _eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Probe until done says so (within WAIT); the last value."""
    for _ in range(int(WAIT / 0.02)):
        value = await probe()
        if done(value):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened; last {value!r}")


async def _until(check: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return check()

    await _eventually(probe, bool)


async def _batches(http: aiohttp.ClientSession, base: str) -> float:
    """How many messages the engine's transactions have taken (counted as each starts)."""
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    return float(re.search(r"^autodoctor_engine_batch_messages_sum (\S+)$", text,
                           re.MULTILINE).group(1))  # type: ignore[union-attr]


@asynccontextmanager
async def _holding_the_write_lock(env: dict[str, str], tmp_path: Path) -> AsyncIterator[None]:
    """Hold what the engine's next transaction needs: SQLite's write lock, or on PostgreSQL
    the table of inbound events (every frame with a client_id is recorded there)."""
    url = env.get("AUTODOCTOR_DATABASE_URL")
    if url is None:
        holder = sqlite3.connect(tmp_path / "data" / "autodoctor.db", timeout=WAIT,
                                 isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        return
    engine = create_engine(url)
    try:
        async with engine.connect() as conn, conn.begin():
            await conn.execute(text("LOCK TABLE inbound_events IN EXCLUSIVE MODE"))
            yield
    finally:
        await engine.dispose()



@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_drains_and_a_new_process_answers_every_frame_once(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    config = (ROOT / "config.toml").read_text().replace(
        "widget_messages_per_minute = 60", "widget_messages_per_minute = 100000").replace(
        "sqlite_busy_timeout_ms = 5000", "sqlite_busy_timeout_ms = 60000")
    (tmp_path / "config.toml").write_text(config)
    extra = {"AUTODOCTOR_CONFIG": str(tmp_path / "config.toml")}
    if backend == "postgresql":
        extra["AUTODOCTOR_DATABASE_URL"] = request.getfixturevalue("pg_database")
    env = _env(tmp_path, **extra)
    assert _cli("migrate", env=env).returncode == 0
    port, log = _free_port(), tmp_path / "serve.log"
    widgets = [Widget() for _ in range(CLIENTS)]
    base = f"http://127.0.0.1:{port}"
    server = _serve(env, port, log)
    try:
        started = 0.0

        async def first_process() -> None:
            nonlocal started
            async with aiohttp.ClientSession() as http:
                for widget in widgets:
                    await widget.connect(http, port)
                    await widget.say("hello")
                await _until(lambda: all(w.settled() for w in widgets))
                batches = await _batches(http, base)
                # A transaction under way at the SIGTERM: the frames' batch waits for a lock
                # this test holds, so the drain waits for it, and the draining process can be
                # looked at meanwhile.
                async with _holding_the_write_lock(env, tmp_path):
                    for n in range(FRAMES):
                        for widget in widgets:
                            await widget.say(f"note {n}")
                    started = await _eventually(lambda: _batches(http, base),
                                                lambda n: n > batches) - batches
                    server.send_signal(signal.SIGTERM)

                    async def health() -> tuple[int, dict[str, Any], str | None]:
                        async with http.get(f"{base}/healthz") as r:
                            return r.status, await r.json(), r.headers.get("Retry-After")

                    status = await _eventually(health, lambda answer: answer[0] != 200)
                    assert status[:2] == (503, {"status": "draining", "db": "ok"})
                    assert status[2] is not None and int(status[2]) >= 1
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await http.ws_connect(f"{base}/ws/widget")
                    assert refused.value.status == 503
                    async with http.post(f"{base}/webhooks/stripe", data=b"{}") as r:
                        assert r.status == 503 and r.headers["Retry-After"]
                    async with asyncio.timeout(WAIT):
                        await asyncio.gather(*(w.reader for w in widgets if w.reader))
                    assert [w.close_codes for w in widgets] == [[1012]] * CLIENTS
                    assert server.poll() is None  # the transaction is still under way

        asyncio.run(first_process())
        assert server.wait(timeout=WAIT) == 0
        output = log.read_text()
        assert f"{CLIENTS} widget sockets closed (1012)" in output, output
        assert "Traceback" not in output, output

        # The transaction under way at the SIGTERM finished: each first note is stored, though
        # its socket closed before it could be acknowledged (its widget sends it again).
        early = asyncio.run(_stored(env, tmp_path))
        assert all("f1" not in w.acked for w in widgets)
        assert sum("note 0" in early[visitor_address(w.visitor or "")][0]
                   for w in widgets) >= started >= 1
        server = _serve(env, port, log)  # behind a proxy: another process

        async def second_process() -> None:
            async with aiohttp.ClientSession() as http:
                for widget in widgets:
                    await widget.connect(http, port)
                await _until(lambda: all(w.settled() for w in widgets))
                for widget in widgets:
                    await widget.ws.close()  # type: ignore[union-attr]

        asyncio.run(second_process())
    finally:
        server.terminate()
        server.wait(timeout=WAIT)

    sent = [f["text"] for f in widgets[0].frames]
    assert sent == ["hello"] + [f"note {n}" for n in range(FRAMES)]
    stored = asyncio.run(_stored(env, tmp_path))
    for widget in widgets:
        # Every frame acknowledged, stored once, and answered once.
        assert widget.acked == {f["client_id"] for f in widget.frames}
        assert widget.visitor is not None
        inbound, replies = stored[visitor_address(widget.visitor)]
        assert sorted(inbound) == sorted(sent)
        assert replies == sorted(widget.replies) and len(replies) == len(sent)


async def _stored(env: dict[str, str], tmp_path: Path) -> dict[str, tuple[list[str], list[int]]]:
    """Per visitor address: the texts received, the ids of the messages sent."""
    url = env.get("AUTODOCTOR_DATABASE_URL") or \
        f"sqlite+aiosqlite:///{tmp_path / 'data' / 'autodoctor.db'}"
    engine = create_engine(url)
    found: dict[str, tuple[list[str], list[int]]] = {}
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(Identity.address, Message.direction, Message.text, Message.id)
                .join(Identity, Identity.id == Message.identity_id)
                .order_by(Message.id))).all()
            assert (await conn.scalar(select(func.count()).select_from(Message))) == len(rows)
    finally:
        await engine.dispose()
    for address, direction, said, message_id in rows:
        inbound, replies = found.setdefault(address, ([], []))
        if direction == "in":
            inbound.append(said)
        else:
            replies.append(message_id)
    return found


def test_a_drain_that_cannot_finish_still_exits_in_bounded_time(tmp_path: Path) -> None:
    """A transaction stuck on a lock held elsewhere: the drain gives up after drain_seconds
    and the process still exits 0 (the stuck message is not acknowledged: its widget sends
    it again to the next process)."""
    config = (ROOT / "config.toml").read_text().replace("drain_seconds = 10",
                                                        "drain_seconds = 1")
    (tmp_path / "config.toml").write_text(config)
    env = _env(tmp_path, AUTODOCTOR_CONFIG=str(tmp_path / "config.toml"))
    assert _cli("migrate", env=env).returncode == 0
    port, log = _free_port(), tmp_path / "serve.log"
    server = _serve(env, port, log)
    widget = Widget()

    async def stuck() -> None:
        async with aiohttp.ClientSession() as http:
            await widget.connect(http, port)
            before = await _batches(http, f"http://127.0.0.1:{port}")
            async with _holding_the_write_lock(env, tmp_path):
                await widget.say("hello")
                await _eventually(lambda: _batches(http, f"http://127.0.0.1:{port}"),
                                  lambda n: n > before)
                server.send_signal(signal.SIGTERM)
                # Exits while the lock is still held: after the drain's 1 s, the shutdown
                # waits at most its own bounds (the engine's 10 s, a sweep's 10 s, 5 s for
                # requests), whatever the lock does.
                assert await asyncio.to_thread(server.wait, 2 * WAIT) == 0

    try:
        asyncio.run(stuck())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert widget.close_codes == [1012] and widget.acked == set()
    assert "drain: not finished after 1s; stopping anyway" in log.read_text()
