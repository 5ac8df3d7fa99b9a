"""`autodoctor console`: chat with the bot in the terminal as a customer, through the engine."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from sqlalchemy import select

from bot.app import build_runtime
from bot.flows import route
from core.config import Config
from core.db import create_engine
from core.engine import Engine
from core.messages import Button, Inbound, Outbound
from core.models import Identity

CHANNEL = "console"


def render(out: Outbound) -> str:
    """Buttons become a numbered list (reply with the number), links a line with the URL."""
    lines = [out.text]
    lines += [f"  [{i}] {b.label}" for i, b in enumerate(out.buttons, 1)]
    if out.link is not None:
        lines.append(f"  {out.link.label}: {out.link.url}")
    lines += [f"  file {f.name}: {f.url}" for f in out.files]
    return "\n".join(f"bot> {line}" if n == 0 else line for n, line in enumerate(lines))


def to_inbound(line: str, buttons: tuple[Button, ...], address: str) -> Inbound:
    said = line.strip()
    if said.isdigit() and 1 <= int(said) <= len(buttons):
        return Inbound(channel=CHANNEL, address=address, action=buttons[int(said) - 1].payload)
    return Inbound(channel=CHANNEL, address=address, text=said)


async def run_console(config: Config, address: str, stdin: TextIO = sys.stdin,
                      stdout: TextIO = sys.stdout) -> None:
    engine = create_engine(config.database_url,
                           busy_timeout_ms=config.database.sqlite_busy_timeout_ms)
    runtime = build_runtime(config, engine)
    bot = Engine(runtime, route)
    loop = asyncio.get_running_loop()
    buttons: tuple[Button, ...] = ()
    print("Chatting as a customer. Type your messages; an empty line or Ctrl-D quits.",
          file=stdout, flush=True)
    try:
        async with runtime.readers() as session:
            known = await session.scalar(select(Identity.id).where(
                Identity.channel == CHANNEL, Identity.address == address))
        if known is None and runtime.greeting is not None:
            # Greeted as the widget greets: the first answer makes the records.
            words, choices = runtime.greeting()
            replies = [Outbound(CHANNEL, address, words, buttons=choices)]
        else:  # back again: where the request stands
            replies = await bot.receive(Inbound(channel=CHANNEL, address=address,
                                                action="cmd:status"))
        while True:
            for out in replies:
                print(render(out), file=stdout, flush=True)
                buttons = out.buttons or buttons
            print("you> ", end="", file=stdout, flush=True)
            line = await loop.run_in_executor(None, stdin.readline)
            if not line.strip():
                print(file=stdout)
                return
            replies = await bot.receive(to_inbound(line, buttons, address))
            buttons = ()
    finally:
        await engine.dispose()
