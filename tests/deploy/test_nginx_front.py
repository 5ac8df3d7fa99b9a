"""The shipped proxy configuration, run for real: Debian's nginx with deploy/nginx/autodoctor.conf
in front of two `autodoctor serve` processes on one PostgreSQL database.

Skipped without nginx, except under CI=true (.ci/run installs it), where that is a failure."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from core.db import create_engine
from core.models import Identity, Message
from tests.bot.test_cli import ROOT, _cli, _env, _free_port, _serve, _wait_health
from tests.bot.test_first_use import _payment_link
from tests.conftest import IN_CI, TEST_ENV

SHIPPED = ROOT / "deploy" / "nginx" / "autodoctor.conf"
TWILIO_TOKEN = "front-test-auth-token"


def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        if IN_CI:
            pytest.fail("nginx is not installed (CI=true: .ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return found


def front_config(shipped: str, listen: int, upstreams: list[int], tmp: Path) -> str:
    """nginx's main file for this test: the shipped server configuration as it is, with the
    test's ports put in and every path nginx writes under tmp."""
    upstream_lines = re.findall(r"^\s*server 127\.0\.0\.1:\d+ .*;$", shipped, flags=re.M)
    assert len(upstream_lines) == 2, "the shipped upstream names two processes"
    site = shipped.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    for line, port in zip(upstream_lines, upstreams, strict=True):
        site = site.replace(line, re.sub(r":\d+ ", f":{port} ", line))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / kind).mkdir(exist_ok=True)
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
worker_processes 1;
pid {tmp / 'nginx.pid'};
error_log {tmp / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
    access_log {tmp / 'access.log'};
{temp_paths}
{site}
}}
"""


@dataclass
class Front:
    url: str
    env: dict[str, str]
    servers: list[subprocess.Popen[str]]
    tmp: Path



@pytest.fixture
def front(tmp_path: Path, pg_database: str) -> Iterator[Front]:
    nginx = _nginx()
    listen, ports = _free_port(), [_free_port(), _free_port()]
    url = f"http://127.0.0.1:{listen}"
    config = (ROOT / "config.toml").read_text()
    config = config.replace("trusted_proxies = []", 'trusted_proxies = ["127.0.0.1"]')
    config = config.replace("widget_messages_per_minute = 60",
                            "widget_messages_per_minute = 100000")
    config = config.replace('# public_url = "https://autodoctor.example"',
                            f'public_url = "{url}"')
    assert f'public_url = "{url}"' in config and '["127.0.0.1"]' in config
    (tmp_path / "config.toml").write_text(config)
    # Both processes share the database, the data folder (uploads) and the secret key.
    env = _env(tmp_path, AUTODOCTOR_CONFIG=str(tmp_path / "config.toml"),
               AUTODOCTOR_DATABASE_URL=pg_database, TWILIO_ACCOUNT_SID="AC" + "0" * 32,
               TWILIO_AUTH_TOKEN=TWILIO_TOKEN, TWILIO_FROM_NUMBER="+15005550006", **TEST_ENV)
    assert _cli("migrate", env=env).returncode == 0
    servers: list[subprocess.Popen[str]] = []
    proxy: subprocess.Popen[str] | None = None
    try:
        for n, port in enumerate(ports):
            servers.append(_serve(env, port, tmp_path / f"serve{n}.log"))
        (tmp_path / "nginx.conf").write_text(front_config(SHIPPED.read_text(), listen, ports,
                                                          tmp_path))
        check = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf")],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        with (tmp_path / "nginx.out").open("a") as out:
            proxy = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=out, stderr=out, text=True)
        _wait_health(listen, proxy)
        yield Front(url, env, servers, tmp_path)
    finally:
        for proc in [*servers, *([proxy] if proxy else [])]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


async def _count(url: str, query: Any) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


class Customer:
    """A widget customer as widget.js is one: a visitor token kept across reconnects, frames
    with client ids resent until acknowledged."""

    def __init__(self, front: Front, name: str, frames: int) -> None:
        self.front, self.name = front, name
        self.frames = [{"type": "message", "text": f"{name} line {n}", "client_id": f"{name}-{n}"}
                       for n in range(frames)]
        self.visitor: str | None = None
        self.acked: set[str] = set()
        self.replies = 0
        self.connections = 0
        self.progress = asyncio.Event()  # set at each acknowledgement

    async def run(self, http: aiohttp.ClientSession) -> None:
        while len(self.acked) < len(self.frames):
            self.connections += 1
            assert self.connections <= 10, f"{self.name}: reconnected too often"
            try:
                await self._connected(http)
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.2)

    async def _connected(self, http: aiohttp.ClientSession) -> None:
        ws_url = self.front.url.replace("http", "ws", 1) + "/ws/widget"
        async with http.ws_connect(ws_url, headers={"Origin": self.front.url}) as ws:
            await ws.send_json({"type": "hello", "visitor": self.visitor, "resume_after": None,
                                "mechanic_invite": None})
            while True:
                welcome = await ws.receive_json(timeout=10)
                if welcome["type"] == "welcome":
                    break
            self.visitor = str(welcome["visitor"])
            for frame in self.frames:
                if frame["client_id"] in self.acked:
                    continue
                await ws.send_json(frame)
                while frame["client_id"] not in self.acked:  # one at a time, as people type
                    message = await ws.receive(timeout=15)
                    if message.type != aiohttp.WSMsgType.TEXT:
                        raise ConnectionError(f"socket closed: {message.type}")
                    data = message.json()
                    if data.get("type") == "ack":
                        self.acked.add(data["client_id"])
                        self.progress.set()
                    elif data.get("type") == "message":
                        self.replies += 1
                await asyncio.sleep(0.02)


def test_customers_keep_chatting_through_the_proxy_when_one_process_is_killed(
        front: Front) -> None:
    """kill -9 of one of the two processes while 8 customers chat: those on it reconnect
    through nginx to the other, resend what was not acknowledged, and every line is stored
    once and answered."""
    customers = [Customer(front, f"c{n}", 30) for n in range(8)]

    async def chat_then_kill() -> None:
        async with aiohttp.ClientSession() as http:
            chatting = [asyncio.create_task(c.run(http)) for c in customers]
            while sum(len(c.acked) for c in customers) < 60:  # under way on both processes
                done, _pending = await asyncio.wait(
                    [asyncio.create_task(c.progress.wait()) for c in customers],
                    timeout=30, return_when=asyncio.FIRST_COMPLETED)
                assert done, "nobody's lines were acknowledged"
                for c in customers:
                    c.progress.clear()
            front.servers[0].send_signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*chatting), timeout=120)

    asyncio.run(chat_then_kill())
    assert front.servers[0].wait(timeout=10) == -signal.SIGKILL
    assert front.servers[1].poll() is None
    assert any(c.connections > 1 for c in customers), "nobody was on the killed process"
    database = front.env["AUTODOCTOR_DATABASE_URL"]
    for customer in customers:
        assert customer.acked == {f["client_id"] for f in customer.frames}
        stored = asyncio.run(_count(database, select(func.count()).select_from(Message).where(
            Message.direction == "in", Message.text.like(f"{customer.name} line %"))))
        assert stored == len(customer.frames), customer.name  # each line once
        assert customer.replies >= len(customer.frames)  # and answered
    with urllib.request.urlopen(f"{front.url}/healthz", timeout=5) as answer:
        assert answer.status == 200  # nginx took the dead process out by itself


def test_links_and_signatures_stay_right_behind_the_proxy(front: Front) -> None:
    """Twilio signs the public URL it posts to; behind nginx the service checks the signature
    over public_url, not over its own address. A forged X-Forwarded-For does not move a
    client's address: the service reads the one nginx appended."""
    form = {"MessageSid": "SM" + "1" * 32, "AccountSid": "AC" + "0" * 32,
            "From": "+14155550123", "To": "+15005550006", "Body": "hello", "NumMedia": "0"}
    public = f"{front.url}/webhooks/twilio/sms"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(public, form)

    def post(sign: str) -> int:
        request = urllib.request.Request(
            public, data=urllib.parse.urlencode(form).encode(), method="POST",
            headers={"X-Twilio-Signature": sign, "X-Forwarded-For": "203.0.113.9",
                     "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    assert post("forged") == 403
    assert post(signature) == 200
    database = front.env["AUTODOCTOR_DATABASE_URL"]
    assert asyncio.run(_count(database, select(func.count()).select_from(Identity).where(
        Identity.channel == "sms", Identity.address == "+14155550123"))) == 1
    # Links sent in chat name the public URL (nginx's port), not a process's own.
    link = asyncio.run(_payment_link(0, base=front.url))
    assert link.startswith(f"{front.url}/pay/co_"), link
    with urllib.request.urlopen(link, timeout=10) as page:  # and open through the proxy
        assert page.status == 200
    error_log = (front.tmp / "error.log").read_text()
    assert "[emerg]" not in error_log and "[crit]" not in error_log, error_log
    assert os.path.getsize(front.tmp / "access.log") > 0

