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
