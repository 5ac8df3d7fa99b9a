"""What a newcomer meets first, from the command line: links that follow the port they
chose, a clear line when the port is taken."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.bot.test_cli import ROOT, _cli, _env, _free_port, _wait_health

GOOD_VIN = "1HGCM82633A004352"


async def _payment_link(port: int, *, base: str | None = None) -> str:
    """A new widget visitor's intake, straight to the payment link (the service at `port`,
    or reached at `base`, e.g. through a proxy)."""
    base = base or f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, http.ws_connect(
            base.replace("http", "ws", 1) + "/ws/widget") as ws:
        await ws.send_json({"type": "hello", "visitor": None, "resume_after": None,
                            "mechanic_invite": None})
        steps = ["1", "Dana", GOOD_VIN, "84000",
                 "Grinding noise from the front left wheel when braking", "done", "confirm",
                 "agree"]
        for n, said in enumerate(steps):
            await ws.send_json({"type": "message", "text": said, "client_id": f"s{n}"})
            while True:
                frame = await ws.receive_json(timeout=10)
                if frame["type"] == "message" and frame.get("link") \
                        and "/pay/" in frame["link"]["url"]:
                    return str(frame["link"]["url"])
                if frame == {"type": "ack", "client_id": f"s{n}"}:
                    break
    raise AssertionError("no payment link")


def test_links_follow_the_port_served_and_a_taken_port_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _cli("migrate", env=env).returncode == 0
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_health(port, proc)
        link = asyncio.run(_payment_link(port))
        assert link.startswith(f"http://127.0.0.1:{port}/pay/co_"), link
        # The same port again, while it is in use: one line, no traceback.
        taken = _cli("serve", "--port", str(port), env=env)
        assert taken.returncode == 2
        assert taken.stderr.strip().count("\n") == 0, taken.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
