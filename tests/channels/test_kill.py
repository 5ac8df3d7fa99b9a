"""kill -9 right after a widget wrote 300 frames: every frame the server acknowledged is
stored, and the client's resending of the rest (as widget.js does) gets every one handled,
each once. Before acknowledgements, 298 of 300 vanished silently."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from core.db import create_engine
from core.models import Message
from tests.bot.test_cli import ROOT, _cli, _env, _free_port, _serve

FRAMES = 300



async def _write(port: int, visitor: str | None, frames: list[dict[str, Any]],
                 acked: set[str], *, then_wait: float) -> str:
    """Say hello, send the frames not yet acknowledged, and collect acknowledgements for
    `then_wait` seconds (or until the socket drops); returns the visitor token."""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"http://127.0.0.1:{port}/ws/widget") as ws:
        await ws.send_json({"type": "hello", "visitor": visitor, "resume_after": None,
                            "mechanic_invite": None})
        welcome = await ws.receive_json(timeout=10)
        assert welcome["type"] == "welcome"
        for frame in frames:
            if frame["client_id"] not in acked:
                await ws.send_json(frame)
        try:
            async with asyncio.timeout(then_wait):
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = message.json()
                    if data.get("type") == "ack":
                        acked.add(data["client_id"])
                        if len(acked) == len(frames):
                            break
        except TimeoutError:
            pass
        return str(welcome["visitor"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_frames_written_before_a_kill_are_all_handled_once_after_the_restart(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    config = (ROOT / "config.toml").read_text().replace(
        "widget_messages_per_minute = 60", "widget_messages_per_minute = 100000")
    (tmp_path / "config.toml").write_text(config)
    extra = {"AUTODOCTOR_CONFIG": str(tmp_path / "config.toml")}
    if backend == "postgresql":
        extra["AUTODOCTOR_DATABASE_URL"] = request.getfixturevalue("pg_database")
    env = _env(tmp_path, **extra)
    assert _cli("migrate", env=env).returncode == 0
    port = _free_port()
    frames = [{"type": "message", "text": f"note {n}", "client_id": f"c{n}"}
              for n in range(FRAMES)]
    acked: set[str] = set()
    server = _serve(env, port)
    try:
        async def write_then_kill() -> str:
            writing = asyncio.create_task(_write(port, None, frames, acked, then_wait=5))
            await asyncio.sleep(0.3)  # the frames are written; some handled, most not yet
            server.send_signal(signal.SIGKILL)
            return await writing

        visitor = asyncio.run(write_then_kill())
        server.wait(timeout=10)
        assert len(acked) < FRAMES  # the kill came first
        server = _serve(env, port)
        for _ in range(5):  # as widget.js: after reconnecting, resend what is unacknowledged
            if len(acked) == FRAMES:
                break
            asyncio.run(_write(port, visitor, frames, acked, then_wait=20))
        assert len(acked) == FRAMES
    finally:
        server.kill()
        server.wait()

    async def stored() -> list[str]:
        url = env.get("AUTODOCTOR_DATABASE_URL") or \
            f"sqlite+aiosqlite:///{tmp_path / 'data' / 'autodoctor.db'}"
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(select(Message.text).where(
                    Message.direction == "in"))).scalars())
        finally:
            await engine.dispose()

    texts = asyncio.run(stored())
    assert sorted(texts) == sorted(f"note {n}" for n in range(FRAMES))
