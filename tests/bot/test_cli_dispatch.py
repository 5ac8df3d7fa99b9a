"""The operator's commands: invite a mechanic, sweep, assign a request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import select

from bot.app import build_runtime
from core.config import load_config
from core.db import create_engine
from core.models import AuditLog, SessionRequest
from tests.bot.test_cli import _cli, _env
from tests.conftest import TEST_ENV
from tests.factories import paid_request, sent_to


def test_invite_assign_and_sweep_from_the_command_line(tmp_path: Path) -> None:
    env = {**_env(tmp_path), **TEST_ENV}
    assert _cli("migrate", env=env).returncode == 0
    invited = _cli("mechanic", "invite", "Sam Lee", "--senior", "--json", env=env)
    assert invited.returncode == 0, invited.stderr
    info = json.loads(invited.stdout)
    assert set(info) == {"mechanic_id", "invite_code", "telegram_link", "sms_join", "web_link",
                         "expires_at"}
    assert info["telegram_link"].endswith(f"?start=m_{info['invite_code']}")
    assert info["sms_join"] == f"JOIN {info['invite_code']}"
    assert info["web_link"].endswith(f"/m/{info['invite_code']}")
    human = _cli("mechanic", "invite", "Ann", env=env)
    assert "Telegram: https://t.me/" in human.stdout
    bad = _cli("mechanic", "invite", "Bob", "--phone", "12345", env=env)
    assert bad.returncode == 2 and "E.164" in bad.stderr

    config = load_config(environ=env)

    async def seed() -> str:
        engine = create_engine(config.database_url)
        try:
            request = await paid_request(build_runtime(config, engine))
            return request.ref
        finally:
            await engine.dispose()

    ref = asyncio.run(seed())
    swept = _cli("sweep", "--json", env=env)
    assert swept.returncode == 0
    assert json.loads(swept.stdout)["unattended"] == 0

    assigned = _cli("request", "assign", ref, str(info["mechanic_id"]), env=env)
    assert assigned.returncode == 0, assigned.stderr
    assert "assigned to mechanic" in assigned.stdout
    # Which of the two was not found, in one line.
    no_mechanic = _cli("request", "assign", ref, "999", env=env)
    assert no_mechanic.returncode == 1
    assert no_mechanic.stderr == "error: no mechanic 999; nothing was changed\n"
    no_request = _cli("request", "assign", "r-1", str(info["mechanic_id"]), env=env)
    assert no_request.returncode == 1
    assert no_request.stderr == "error: no request R-1; nothing was changed\n"
    neither = _cli("request", "assign", "R-1", "999", env=env)
    assert neither.returncode == 1
    assert neither.stderr == "error: no request R-1 and no mechanic 999; nothing was changed\n"

    async def check() -> tuple[str, list[str], list[str]]:
        engine = create_engine(config.database_url)
        try:
            runtime = build_runtime(config, engine)
            async with runtime.sessions() as s:
                request = await s.scalar(select(SessionRequest).where(SessionRequest.ref == ref))
                actors = (await s.scalars(select(AuditLog.actor))).all()
            from core.models import Identity
            texts = await sent_to(runtime, Identity(channel="console", address="cust"))
            assert request is not None
            return request.status, list(actors), texts
        finally:
            await engine.dispose()

    status, actors, texts = asyncio.run(check())
    assert status == "accepted"
    assert actors[0].startswith("cli:")
    assert any("Sam, a certified mechanic" in t for t in texts)
