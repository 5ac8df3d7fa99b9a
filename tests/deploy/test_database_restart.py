"""The database restarted under load (issue 28's faults). The test starts its own throw-away
PostgreSQL cluster on a free port (never the shared one), runs `serve` on it with widget
visitors chatting and Telegram delivering updates (to the webhook, or to getUpdates in polling
mode), stops the database (pg_ctl stop -m fast) and starts it again, without touching the
service:

- while it is down, /healthz answers 503 and the webhook's deliveries are answered non-2xx,
  so Telegram redelivers them; in polling mode the updates fetched are not confirmed, so
  getUpdates gives them again;
- once it is back, /healthz is ok again (the service reconnected by itself), every update
  redelivered is handled (each sender gets the bot's answer) and every widget message is
  stored once and answered.

PostgreSQL's binaries are looked up under /usr/lib/postgresql/*/bin; initdb refuses root, so
the cluster runs as the `postgres` OS user. Without them the test is skipped, except under
CI=true where that is a failure."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from channels.telegram import SECRET_HEADER, webhook_secret
from channels.telegram_inbound import NOT_PROCESSED
from core.db import create_engine
from core.models import Identity, Message
from tests.bot.test_cli import ROOT, _cli, _env, _free_port, _serve
from tests.channels.test_fanout_kill import StandInThread
from tests.channels.test_telegram import TOKEN
from tests.conftest import IN_CI
from tests.standins.telegram_api import TelegramApi, TgUser

SECRET = "test-secret-key-not-for-production"
UPDATES = 30  # Telegram updates, one new user each, spread over before/during/after
HELLO = "Hello, my car makes a noise"
VISITORS, EACH = 4, 6  # widget visitors, messages each
TIMEOUT = 240.0


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_postgres(*args: str | Path) -> list[str]:
    command = [str(a) for a in args]
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        assert runuser, "runuser is needed to run PostgreSQL as the postgres user"
        return [runuser, "-u", "postgres", "--", *command]
    return command


class Cluster:
    """A throw-away PostgreSQL cluster: initdb in a temporary directory, trust auth."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.data, self.port = bindir, root / "data", _free_port()
        self.root = root
        self.log = root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str | Path) -> None:
        done = subprocess.run(_as_postgres(*args), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[0]}: {done.stdout}\n{done.stderr}"

    def init(self) -> None:
        self._run(self.bindir / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off")
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60",
                  "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        if IN_CI:
            pytest.fail("PostgreSQL's initdb/pg_ctl not found (CI=true: PostgreSQL is required)")
        pytest.skip("PostgreSQL's initdb/pg_ctl not found")
    root = Path(tempfile.mkdtemp(prefix="autodoctor-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = Cluster(bindir, root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(_as_postgres(bindir / "pg_ctl", "-D", cluster.data, "-m",
                                        "immediate", "-w", "stop"), capture_output=True,
                           timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def api() -> Iterator[StandInThread]:
    standin = StandInThread(TelegramApi(TOKEN))
    standin.__enter__()
    try:
        yield standin
    finally:
        standin.__exit__()


class Load:
    """Telegram deliveries and widget visitors against one process, each retried until the
    service takes it, as Telegram and widget.js do. In polling mode Telegram queues each
    update for getUpdates instead, and keeps it until the service confirms it."""

    def __init__(self, port: int, standin: StandInThread, mode: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.standin, self.api, self.mode = standin, standin.api, mode
        self.users = [TgUser(720_000_000 + n, f"Driver{n}") for n in range(UPDATES)]
        self.webhook_answers: list[int] = []
        self.queued_at: list[float] = []  # polling: when each update was queued
        self.widget_failures = 0
        self.visitors: list[str] = []
        self.replies: dict[str, set[int]] = {}

    async def deliver(self, http: aiohttp.ClientSession, user: TgUser) -> None:
        if self.mode == "polling":
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                self.api.inject(self.api.message(user, HELLO)), self.standin.loop))
            self.queued_at.append(time.monotonic())
            return
        update = self.api.message(user, HELLO)
        headers = {SECRET_HEADER: webhook_secret(SECRET)}
        while True:
            try:
                async with http.post(f"{self.base}/webhooks/telegram", json=update,
                                     headers=headers) as resp:
                    self.webhook_answers.append(resp.status)
                    if 200 <= resp.status < 300:
                        return
            except (aiohttp.ClientError, TimeoutError):
                self.webhook_answers.append(0)
            await asyncio.sleep(0.5)  # Telegram backs off; sooner here

    async def telegram(self, gap: float) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            pending = []
            for user in self.users:
                pending.append(asyncio.create_task(self.deliver(http, user)))
                await asyncio.sleep(gap)
            await asyncio.gather(*pending)

    async def visitor(self, n: int, gap: float) -> None:
        """One visitor: EACH messages, each resent (same client_id) until acknowledged,
        then the next once the bot has answered."""
        token: str | None = None
        seen = 0
        for k in range(EACH):
            frame = {"type": "message", "text": f"visitor {n} note {k}", "client_id": f"v{n}-{k}"}
            before = seen  # the bot's answer to this one comes after what was seen so far
            acked = False
            while True:
                try:
                    async with aiohttp.ClientSession() as http, http.ws_connect(
                            f"{self.base}/ws/widget", timeout=aiohttp.ClientWSTimeout(
                                ws_close=5)) as ws:
                        await ws.send_json({"type": "hello", "visitor": token,
                                            "resume_after": seen or None,
                                            "mechanic_invite": None})
                        async with asyncio.timeout(20):
                            if not acked:
                                await ws.send_json(frame)
                            async for message in ws:
                                if message.type != aiohttp.WSMsgType.TEXT:
                                    break
                                data = json.loads(message.data)
                                if data["type"] == "welcome":
                                    token = data["visitor"]
                                elif data["type"] == "ack":
                                    acked = True
                                elif data["type"] == "message" and data.get("id"):
                                    seen = max(seen, data["id"])
                                if acked and seen > before:
                                    break
                        if acked and seen > before:
                            break
                except (aiohttp.ClientError, TimeoutError, OSError, KeyError):
                    pass
                self.widget_failures += 1
                await asyncio.sleep(0.5)
            await asyncio.sleep(gap)
        assert token is not None
        self.visitors.append(token)


async def _health(port: int) -> int:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def _until(what: str, check: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("mode", ["webhook", "polling"])
def test_a_database_restart_under_load_loses_nothing_and_needs_no_service_restart(
        tmp_path: Path, cluster: Cluster, api: StandInThread, mode: str) -> None:
    config = (ROOT / "config.toml").read_text()
    config = config.replace('api_base = "https://api.telegram.org"', f'api_base = "{api.base}"')
    config = config.replace('mode = "polling"', f'mode = "{mode}"')
    config = config.replace('# public_url = "https://autodoctor.example"',
                            'public_url = "https://autodoctor.example"')
    config = config.replace("widget_messages_per_minute = 60",
                            "widget_messages_per_minute = 100000")
    (tmp_path / "config.toml").write_text(config)
    env = _env(tmp_path, AUTODOCTOR_CONFIG=str(tmp_path / "config.toml"),
               AUTODOCTOR_DATABASE_URL=cluster.url, TELEGRAM_BOT_TOKEN=TOKEN,
               AUTODOCTOR_SECRET_KEY=SECRET)
    migrated = _cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    port = _free_port()
    server = _serve(env, port, tmp_path / "serve.log")
    load = Load(port, api, mode)
    figures: dict[str, Any] = {}
    try:
        async def scenario() -> None:
            traffic = [asyncio.create_task(load.telegram(gap=0.3))] + [
                asyncio.create_task(load.visitor(n, gap=0.8)) for n in range(VISITORS)]
            await _until("traffic before the outage", lambda: _true(
                len(load.webhook_answers) + len(load.queued_at) >= UPDATES // 3))
            await asyncio.to_thread(cluster.stop)
            stopped = time.monotonic()
            await _until("/healthz 503", lambda: _eq(_health(port), 503))
            if mode == "webhook":
                answers_before = len(load.webhook_answers)
                await _until("a webhook delivery refused while the database is down",
                             lambda: _true(any(s >= 300 for s in
                                               load.webhook_answers[answers_before:])))
                figures["refused_during"] = [s for s in load.webhook_answers[answers_before:]]
            await asyncio.sleep(3)  # the load keeps coming against the stopped database
            figures["health_during"] = await _health(port)
            restarting = time.monotonic()
            figures["queued_while_down"] = sum(
                1 for t in load.queued_at if stopped <= t <= restarting)
            await asyncio.to_thread(cluster.start)
            figures["down_seconds"] = round(time.monotonic() - stopped, 1)
            started = time.monotonic()
            await _until("/healthz ok again", lambda: _eq(_health(port), 200))
            figures["healthy_after"] = round(time.monotonic() - started, 1)
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(*traffic)

        asyncio.run(scenario())
        assert server.poll() is None  # the same process throughout
        answered = {user.id for user in load.users}

        def replied() -> set[int]:
            return {c.chat_id for c in list(api.api.calls) if c.method.lower() ==
                    "sendmessage" and c.status == 200 and c.chat_id is not None}
        deadline = time.monotonic() + TIMEOUT
        while not answered <= replied() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answered <= replied(), f"{len(answered - replied())} updates never answered"
        # Each person got the bot's greeting, once, and nobody was told their message was
        # lost (what the service said before it left the update for Telegram to give again).
        greetings = {user.id: api.api.texts(user.id) for user in load.users}
        first = greetings[load.users[0].id]
        assert first and all(texts == first for texts in greetings.values()), greetings
        assert not any(NOT_PROCESSED in text for text in first)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    stored = asyncio.run(_widget_messages(cluster.url))
    statuses = sorted(set(load.webhook_answers))
    refused = sum(1 for s in load.webhook_answers if not 200 <= s < 300)
    telegram = (f"webhook answers {statuses}, {refused} refused of "
                f"{len(load.webhook_answers)}" if mode == "webhook" else
                f"{figures['queued_while_down']} updates queued while down")
    print(f"\n{mode}: database down {figures['down_seconds']} s; /healthz while down: "
          f"{figures['health_during']}; ok again {figures['healthy_after']} s after the "
          f"start; {telegram}; {UPDATES} updates, each answered once; widget: "
          f"{load.widget_failures} retries, {VISITORS * EACH} messages stored once and "
          f"answered")
    assert figures["health_during"] == 503
    if mode == "webhook":
        assert any(s >= 300 for s in figures["refused_during"])
    else:  # some updates came while the database was down, and they too were answered
        assert figures["queued_while_down"] > 0
    for n in range(VISITORS):
        inbound = [text for direction, text in stored[n] if direction == "in"]
        assert inbound == [f"visitor {n} note {k}" for k in range(EACH)]
        assert stored[n][-1][0] == "out"  # the last message too got its answer


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _widget_messages(url: str) -> dict[int, list[tuple[str, str]]]:
    """Each visitor's transcript (by the number in their texts), in order."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(Message.identity_id, Message.direction, Message.text)
                .join(Identity, Identity.id == Message.identity_id)
                .where(Identity.channel == "web").order_by(Message.id))).all()
    finally:
        await engine.dispose()
    by_identity: dict[int, list[tuple[str, str]]] = {}
    for identity_id, direction, text in rows:
        by_identity.setdefault(identity_id, []).append((direction, text or ""))
    out: dict[int, list[tuple[str, str]]] = {}
    for transcript in by_identity.values():
        first = next(text for direction, text in transcript if direction == "in")
        out[int(first.split()[1])] = transcript
    return out
