"""Poison load: does one bad message slow everyone else? (issue 29, item 1)

The attack that issue measured: 30 widget sockets each sending, about 60 times a second, a
message whose attachment id holds a NUL (which PostgreSQL refuses). Before the hardening the
whole group-commit batch was rolled back and redone one by one, and everyone else's
throughput fell from ~3,800 to ~260 msg/s. Now such a frame is refused at the edge.

For each database the service runs as in bench/widget_throughput.py (its service, load and
clients are reused); the saturated intake load runs alone and beside the poison sockets,
alternately, --repeat times each, and the median of each is printed with their ratio.

    .venv/bin/python bench/poison.py [--db sqlite,postgresql] [--customers 200]
        [--intakes 2] [--poisoners 30] [--per-second 60] [--repeat 2]

Target: the clean customers' msg/s beside the poison at least 80 % of it alone (the poison
sockets' own frames cost the server something too), and no failed intake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import aiohttp
from benchdb import database_url
from widget_throughput import (
    HELLO,
    Proc,
    Run,
    check_databases,
    database_arguments,
    load,
    median_run,
    raise_nofile,
    service_env,
    start_service,
    wait_healthy,
)

POISON = {"type": "message", "text": "hi", "attachments": ["f_abc\x00def00"]}


async def poisoner(http: aiohttp.ClientSession, url: str, per_second: float,
                   stop: asyncio.Event, counts: dict[str, int]) -> None:
    """One socket sending the poison frame `per_second` times a second until `stop`,
    reconnecting if the server closes it; counts what it sent and what came back."""
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ConnectionError):
            async with http.ws_connect(url) as ws:
                await ws.send_str(json.dumps(HELLO))

                async def drain(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            kind = json.loads(msg.data).get("code") or "reply"
                            counts[kind] = counts.get(kind, 0) + 1

                reader = asyncio.create_task(drain())
                try:
                    while not stop.is_set() and not ws.closed:
                        await ws.send_str(json.dumps(POISON))
                        counts["sent"] = counts.get("sent", 0) + 1
                        await asyncio.sleep(1 / per_second)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
        if not stop.is_set():
            await asyncio.sleep(0.1)


async def bench_db(db: str, url_db: str | None, args: argparse.Namespace, tmp: Path) -> None:
    procs: list[Proc] = []
    server, port = await start_service(db, service_env(db, url_db, tmp), procs, tmp)
    url = f"http://127.0.0.1:{port}/ws/widget"
    clean: list[Run] = []
    poisoned: list[Run] = []
    counts: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await wait_healthy(http, server, port)
            await load(http, url, server, 20, 0.0, False, 1)  # warm-up
            for _ in range(args.repeat):
                clean.append(await load(http, url, server, args.customers, 0.0, False,
                                        args.intakes))
                stop = asyncio.Event()
                attackers = [asyncio.create_task(poisoner(http, url, args.per_second, stop,
                                                          counts))
                             for _ in range(args.poisoners)]
                await asyncio.sleep(1)  # the attack under way before the customers come
                try:
                    poisoned.append(await load(http, url, server, args.customers, 0.0, False,
                                               args.intakes))
                finally:
                    stop.set()
                    await asyncio.gather(*attackers, return_exceptions=True)
    finally:
        server.stop()
    alone, beside = median_run(clean), median_run(poisoned)
    failed = sum(len(r.failures) for r in clean + poisoned)
    print(f"{db}: customers alone {alone.rate:,.0f} msg/s (runs "
          f"{', '.join(f'{r.rate:,.0f}' for r in clean)}), beside {args.poisoners} poison "
          f"sockets {beside.rate:,.0f} msg/s (runs "
          f"{', '.join(f'{r.rate:,.0f}' for r in poisoned)}): "
          f"{beside.rate / alone.rate:.0%}; p99 {alone.pct(0.99):.1f} / "
          f"{beside.pct(0.99):.1f} ms; failed intakes {failed}; server ERROR lines "
          f"{server.log_count(' ERROR ')}")
    print(f"{db}: poison frames sent {counts.get('sent', 0):,}, answered "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()) if k != "sent"))


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="autodoctor-poison-") as name:
        tmp = Path(name)
        for db in args.db:
            async with database_url(db, args.pg_url, tmp / "bench.db") as url_db:
                if db == "postgresql" and url_db is None:
                    print("postgresql: not reachable, skipped")
                    continue
                await bench_db(db, url_db, args, tmp)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    database_arguments(parser)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--intakes", type=int, default=2)
    parser.add_argument("--poisoners", type=int, default=30)
    parser.add_argument("--per-second", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    check_databases(parser, args)
    raise_nofile(args.customers + args.poisoners + 100)
    load_average = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average at start: {' '.join(load_average)}")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
