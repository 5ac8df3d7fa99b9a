"""Two `serve` processes in Telegram polling mode on one PostgreSQL database: one polls and
sends (two pollers would hold getUpdates calls open at once); `kill -9` of it, and the other
takes both roles over and answers the next person, once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.bot.test_cli import ROOT, _cli, _env, _free_port, _serve
from tests.channels.test_telegram import TOKEN
from tests.standins.telegram_api import TelegramApi, TgUser

ALICE, BOB = TgUser(4101, "Alice"), TgUser(4102, "Bob")



def _roles(port: int) -> set[str]:
    """The roles a process says it holds (/metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {line.split('role="', 1)[1].split('"', 1)[0] for line in lines
            if line.startswith("autodoctor_roles_held{") and line.endswith(" 1.0")}


async def _answered(api: TelegramApi, user: TgUser) -> list[str]:
    update = api.message(user, "hello")
    await api.inject(update)
    for _ in range(600):
        if api.texts(user.id):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything sent twice would be here by now
    return api.texts(user.id)


def test_killing_the_poller_and_sender_hands_both_roles_to_the_other_process(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    database_url = request.getfixturevalue("pg_database")

    async def scenario() -> None:
        api = TelegramApi(TOKEN)
        await api.start()
        config = (ROOT / "config.toml").read_text().replace(
            'api_base = "https://api.telegram.org"', f'api_base = "{api.base_url}"').replace(
            "leader_retry_seconds = 2", "leader_retry_seconds = 0.5")
        (tmp_path / "config.toml").write_text(config)
        env = _env(tmp_path, AUTODOCTOR_CONFIG=str(tmp_path / "config.toml"),
                   AUTODOCTOR_DATABASE_URL=database_url, TELEGRAM_BOT_TOKEN=TOKEN)
        servers: list[subprocess.Popen[str]] = []
        try:
            assert (await asyncio.to_thread(_cli, "migrate", env=env)).returncode == 0
            ports = [_free_port(), _free_port()]
            for port in ports:
                servers.append(await asyncio.to_thread(_serve, env, port))
            roles = [await asyncio.to_thread(_roles, port) for port in ports]
            assert sorted(map(sorted, roles)) == [[], ["poll:telegram", "send:telegram"]]
            first = await _answered(api, ALICE)
            assert first and len(first) == len(set(first))
            # Both started polling before Alice wrote: two pollers would overlap here.
            assert api.poll_overlaps == 0
            holder = 0 if roles[0] else 1
            servers[holder].send_signal(signal.SIGKILL)
            servers[holder].wait(timeout=10)
            survivor = ports[1 - holder]
            for _ in range(300):
                if await asyncio.to_thread(_roles, survivor) == {"poll:telegram",
                                                                 "send:telegram"}:
                    break
                await asyncio.sleep(0.1)
            assert await asyncio.to_thread(_roles, survivor) == {"poll:telegram",
                                                                 "send:telegram"}
            assert await _answered(api, BOB) == first  # the same greeting, once
        finally:
            for server in servers:
                server.kill()
                server.wait()
            await api.close()

    asyncio.run(scenario())
