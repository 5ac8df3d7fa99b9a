"""`autodoctor console`: a whole intake typed into the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bot.test_cli import ROOT, _cli, _env


def test_console_intake_to_payment_link(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _cli("migrate", env=env).returncode == 0
    # The tier, the name, the car, the problem, no photos, confirm, agree to the terms.
    typed = "\n".join(["1", "Dana", "1HGCM82633A004352", "84000",
                       "Squeaking from the rear axle over speed bumps", "1", "1", "1", ""]) + "\n"
    result = subprocess.run([sys.executable, "-m", "bot.cli", "console", "--as", "dana"],
                            input=typed, env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Greeted as the widget greets, the tiers once (as numbered buttons), no log lines.
    assert out.count("Which kind of help do you need?") == 1
    assert "[1] Quick Chat · 30 min · $9.99" in out
    assert " INFO " not in result.stdout + result.stderr
    assert "2003 Honda" in out
    assert "Problem: Squeaking from the rear axle over speed bumps" in out
    assert "Pay $9.99: http://127.0.0.1:8080/pay/co_" in out
    # The conversation is kept: coming back shows where it stands.
    again = subprocess.run([sys.executable, "-m", "bot.cli", "console", "--as", "dana"],
                           input="\n", env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert "waiting for payment" in again.stdout
