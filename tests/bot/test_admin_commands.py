"""`autodoctor admin create` and `autodoctor export`, run as a newcomer runs them (SQLite and
PostgreSQL): the admin can log in, and the export is the admin site's CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from admin_web.accounts import log_in
from admin_web.csv_export import intakes_csv
from admin_web.intakes import IntakeFilter, intake_rows
from bot.app import build_runtime
from core.config import load_config
from core.db import create_engine
from core.models import Admin
from tests.billing.helpers import awaiting_payment
from tests.bot.test_cli import ROOT, _env


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    extra = {"AUTODOCTOR_SECRET_KEY": "test-secret-key-not-for-production"}
    if request.param == "postgresql":
        extra["AUTODOCTOR_DATABASE_URL"] = request.getfixturevalue("pg_database")
    return _env(tmp_path, **extra)


def _cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_admin_create_makes_an_admin_who_can_log_in(env: dict[str, str]) -> None:
    assert _cli("migrate", env=env).returncode == 0
    made = _cli("admin", "create", "Ops@Example.com", "--password-stdin", env=env,
                stdin="correct horse battery\n")
    assert made.returncode == 0, made.stderr
    assert "Admin ops@example.com created" in made.stdout and "/admin/login" in made.stdout
    again = _cli("admin", "create", "ops@example.com", "--password-stdin", env=env,
                 stdin="another good password\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    short = _cli("admin", "create", "b@example.com", "--password-stdin", env=env,
                 stdin="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr

    async def check() -> tuple[bool, bool, str]:
        config = load_config(environ=env)
        engine = create_engine(config.database_url)
        try:
            runtime = build_runtime(config, engine)
            async with runtime.transaction() as uow:
                wrong = await log_in(uow.session, config.admin, "ops@example.com", "nope",
                                     "127.0.0.1", runtime.clock.now())
                right = await log_in(uow.session, config.admin, "OPS@example.com ",
                                     "correct horse battery", "127.0.0.1", runtime.clock.now())
                stored = await uow.session.scalar(select(Admin.password_hash))
            return wrong.admin is None, right.admin is not None, str(stored)
        finally:
            await engine.dispose()

    refused, accepted, stored = asyncio.run(check())
    assert refused and accepted
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


def test_export_prints_the_sites_csv_defused(env: dict[str, str]) -> None:
    assert _cli("migrate", env=env).returncode == 0

    async def seed_and_render() -> str:
        config = load_config(environ=env)
        engine = create_engine(config.database_url)
        try:
            runtime = build_runtime(config, engine)
            await awaiting_payment(runtime, "chat10", make="=cmd|' /C calc'!A0", address="x")
            await awaiting_payment(runtime, "video15", make="Toyota", address="y")
            async with runtime.readers() as session:
                return intakes_csv(await intake_rows(
                    session, IntakeFilter.from_query({"tier": "chat10"}, list(config.plans)),
                    limit=None))
        finally:
            await engine.dispose()

    site = asyncio.run(seed_and_render())
    printed = subprocess.run([sys.executable, "-m", "bot.cli", "export", "intakes", "--tier",
                              "chat10"], env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.decode() == site  # byte for byte, CRLF line ends and all
    [row] = list(csv.DictReader(io.StringIO(site)))
    assert row["make"] == "'=cmd|' /C calc'!A0"
    everything = _cli("export", "intakes", env=env).stdout
    assert len(list(csv.DictReader(io.StringIO(everything)))) == 2
    sessions = _cli("export", "sessions", env=env)
    assert sessions.returncode == 0 and sessions.stdout.startswith("session_id,request,tier")
