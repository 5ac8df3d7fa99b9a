"""Instructions per client frame in the whole running service, counted by valgrind (callgrind).

bench/engine_instructions.py counts the conversation engine alone; this counts everything the
service does for a widget customer: aiohttp's HTTP and WebSocket layers, the widget socket,
the engine, SQLAlchemy, the driver, the event loop and the cyclic garbage collector. It runs
`python -m bot.cli serve` under `valgrind --tool=callgrind` on a throwaway database, sends
--customers concurrent simulated customers through one warm-up intake each (the widget
benchmark's seven frames over real WebSockets, each intake a new visitor on a new
connection), zeroes the server's counters (callgrind_control --zero), runs --rounds more
intakes each, and dumps the count (callgrind_control --dump):

    .venv/bin/python bench/server_instructions.py [--db postgresql] [--customers 50] [--rounds 2]

It prints the instructions of those rounds per client frame: start-up and warm-up are left
out; what the server does meanwhile unasked (timers, sweeps) is in. On PostgreSQL the database
server's own work is not in it.

Under valgrind the service is some 50 times slower, so the engine's transactions hold more
messages than at full speed (all the customers' at once, usually), and the figure depends a
little on how the frames happened to fall into them: it repeated within about 1% here.
Compare one tree against another on the same machine and arguments (a git worktree of the
other commit, run with PYTHONPATH set to it). A run takes a few minutes. Without valgrind on
the PATH it says so and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from benchdb import database_url
from widget_throughput import (
    INTAKE,
    PG_URL,
    ROOT,
    SECRETS,
    Proc,
    converse,
    free_port,
    wait_healthy,
)

START_TIMEOUT = 600.0  # the service starting under valgrind


def control(*args: str) -> str:
    done = subprocess.run(["callgrind_control", *args], capture_output=True, text=True,
                          timeout=300, check=True)
    return done.stdout


def dumped_count(folder: Path) -> int | None:
    """The instruction count of callgrind's latest dump in `folder`."""
    dumps = sorted(folder.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
    text = dumps[-1].read_text(errors="replace") if dumps else ""
    found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    return None if found is None else int(found.group(1))


async def intakes(http: aiohttp.ClientSession, url: str, customers: int) -> int:
    """One intake for each customer at once; the client frames sent."""
    latencies: list[float] = []
    last = await asyncio.gather(*(converse(http, url, INTAKE, latencies, 0)
                                  for _ in range(customers)))
    bad = [reply for reply in last if "/pay/" not in str((reply.get("link") or {}).get("url"))]
    if bad:
        raise SystemExit(f"{len(bad)} intakes did not end with a payment link: {bad[0]}")
    return len(latencies)


async def main(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    with tempfile.TemporaryDirectory(prefix="autodoctor-server-instructions-") as tmp:
        folder = Path(tmp)
        async with database_url(args.db, args.pg_url, folder / "bench.db") as url:
            if url is None:
                raise SystemExit("postgresql unreachable")
            env = {k: v for k, v in os.environ.items() if k not in SECRETS}
            env.update(AUTODOCTOR_DATA_DIR=str(folder / "data"), AUTODOCTOR_DATABASE_URL=url)
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "bot.cli", "migrate"], cwd=ROOT,
                env=env, check=True, capture_output=True, timeout=300)
            port, out = free_port(), folder / "callgrind.out"
            server = Proc("serve", ["valgrind", "--tool=callgrind",
                                    f"--callgrind-out-file={out}", sys.executable, "-m",
                                    "bot.cli", "serve", "--port", str(port)],
                          env, folder / "serve.log")
            try:
                widget = f"http://127.0.0.1:{port}/ws/widget"
                connector = aiohttp.TCPConnector(limit=0)
                timeout = aiohttp.ClientTimeout(total=None)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                    await wait_healthy(http, server, port, START_TIMEOUT)
                    await intakes(http, widget, args.customers)  # warm-up
                    await asyncio.sleep(2)
                    await asyncio.to_thread(control, "--zero", str(server.popen.pid))
                    frames = 0
                    for _ in range(args.rounds):
                        frames += await intakes(http, widget, args.customers)
                    await asyncio.to_thread(control, "--dump", str(server.popen.pid))
                count = dumped_count(folder)
                if count is None:
                    raise SystemExit(f"no count in the dump:\n{server.tail()}")
            finally:
                server.stop()
    print(f"{args.db}: {args.customers} customers x {args.rounds} intakes, {frames:,} client "
          f"frames after a warm-up intake each")
    print(f"  {count:,} instructions, {count / frames / 1e6:.3f} M per client frame")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgresql", choices=("sqlite", "postgresql"))
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    asyncio.run(main(parser.parse_args()))
