"""The two commands a newcomer runs: migrate, then serve; on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AUTODOCTOR_", "TELEGRAM_", "TWILIO_", "STRIPE_", "LIVEKIT_"))}
    env["AUTODOCTOR_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _wait_health(port: int, proc: subprocess.Popen[str]) -> dict[str, object]:
    import json

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"serve exited early: {err}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not answer /healthz within 30 s")


def _serve(env: dict[str, str], port: int, log: Path | None = None) -> subprocess.Popen[str]:
    """`autodoctor serve` on this port, once it answers /healthz; its output appended to
    `log` (or dropped)."""
    if log is None:
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, text=True)
    else:
        with log.open("a") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)], env=env,
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_health(port, proc)
    except AssertionError:
        proc.kill()  # not left running past a failed test
        proc.wait()
        raise
    return proc


def _serve_and_stop(env: dict[str, str], sig: int) -> str:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert _wait_health(port, proc) == {"status": "ok", "db": "ok"}
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    return stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_migrate_then_serve_on_sqlite_with_no_accounts(tmp_path: Path, sig: int) -> None:
    env = _env(tmp_path)
    result = _cli("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout
    assert (tmp_path / "data" / "autodoctor.db").exists()
    stderr = _serve_and_stop(env, sig)
    # One line per channel at start, and a clean stop.
    assert "channel widget: on" in stderr
    assert "channel telegram: off (set TELEGRAM_BOT_TOKEN to enable)" in stderr
    assert "channel sms: off" in stderr
    assert "video: off (set LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET to enable); " \
           "the video tiers run as chat sessions" in stderr
    assert "stopped" in stderr
    assert "Traceback" not in stderr
    # What start-up loaded is kept out of the collector's way (no long pauses under load).
    frozen = re.search(r"start-up heap settled: (\d+) objects frozen", stderr)
    assert frozen is not None and int(frozen.group(1)) > 10_000, stderr


def test_migrate_then_serve_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    env = _env(tmp_path, AUTODOCTOR_DATABASE_URL=pg_database)
    result = _cli("migrate", env=env)
    assert result.returncode == 0, result.stderr
    stderr = _serve_and_stop(env, signal.SIGTERM)
    assert "stopped" in stderr
    assert not (tmp_path / "data" / "autodoctor.db").exists()


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = _cli("serve", "--port", str(_free_port()), env=_env(tmp_path))
    assert result.returncode == 2
    assert "run `autodoctor migrate` first" in result.stderr


@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_an_unreachable_database_at_start_is_one_line_not_a_traceback(
        tmp_path: Path, command: str) -> None:
    # Nothing listens on this port: PostgreSQL is "down".
    url = f"postgresql://postgres:secret@127.0.0.1:{_free_port()}/test"
    args = [command] + (["--port", str(_free_port())] if command == "serve" else [])
    result = _cli(*args, env=_env(tmp_path, AUTODOCTOR_DATABASE_URL=url))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach the database at postgresql")
    assert "is it running?" in lines[0]
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr  # the password is hidden


def test_serve_freezes_what_start_up_loaded_out_of_the_collectors_way() -> None:
    import gc

    from bot.cli import GC_THRESHOLDS, settle_heap

    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # modules, the app, compiled templates
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_session_observe_prints_a_hidden_watch_link(tmp_path: Path) -> None:
    import asyncio
    import json
    from datetime import datetime, timedelta

    from core.config import load_config
    from core.video import read_join_token

    env = _env(tmp_path, AUTODOCTOR_SECRET_KEY="cli-test-secret-key")
    assert _cli("migrate", env=env).returncode == 0
    ref, room = asyncio.run(_a_video_session(env))
    env.update(LIVEKIT_URL="http://127.0.0.1:9", LIVEKIT_API_KEY="APIstandin",
               LIVEKIT_API_SECRET="a-secret-for-this-test-only-0123456789")
    result = _cli("session", "observe", ref, "--json", env=env)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["ref"] == ref and found["room"] == room
    # An operator's observer link (o0) to this session; its grants: tests/rooms/test_join.py.
    token = found["observe_link"].rsplit("/v/", 1)[1]
    grant = read_join_token(load_config(environ=env), token,
                            datetime.fromisoformat(found["expires_at"]) - timedelta(hours=1))
    assert grant is not None and grant[1].code == "o0"
    assert grant[0].subject == found["consultation_id"]
    missing = _cli("session", "observe", "R-0001", env=env)
    assert missing.returncode == 2 and "error: no request R-0001" in missing.stderr


async def _a_video_session(env: dict[str, str]) -> tuple[str, str]:
    """A matched Standard Video request whose room LiveKit (the stand-in) has made."""
    from bot.flows import route
    from core.config import load_config
    from core.db import create_engine
    from core.engine import Engine
    from tests.core.test_consultations import consultation_of
    from tests.core.test_dispatch import offer, tap_accept
    from tests.factories import linked_mechanic, paid_request
    from tests.standins.livekit_api import LiveKitStandin

    async with LiveKitStandin() as livekit:
        config = load_config(environ={**env, "LIVEKIT_URL": livekit.url,
                                      "LIVEKIT_API_KEY": livekit.api_key,
                                      "LIVEKIT_API_SECRET": livekit.api_secret})
        from bot.app import build_runtime

        engine = create_engine(config.database_url)
        try:
            runtime = build_runtime(config, engine)
            sam = await linked_mechanic(runtime, "Sam Lee")
            request = await paid_request(runtime, "video15")
            await offer(runtime, request)
            await tap_accept(Engine(runtime, route), sam, request.ref)
            consultation = await consultation_of(runtime, request)
        finally:
            await engine.dispose()
    assert consultation.room_status == "ready" and consultation.room_name
    return request.ref, consultation.room_name
