"""Instructions per message through the conversation engine, counted by valgrind (callgrind).

The widget benchmark's figures swing by a third from one run to the next on the shared
machines (other tenants take the CPU); an instruction count does not. This script runs whole
intakes (the widget benchmark's nine messages: hello, tier, name, VIN, odometer, problem,
photos done, confirm, agree to the terms → payment link) for --customers concurrent customers
straight through the engine
(core.engine.Engine with the bot's flows, no WebSocket), in rounds, on a throwaway database:

    .venv/bin/python bench/engine_instructions.py [--db sqlite] [--customers 100]

It runs itself twice under `valgrind --tool=callgrind`, once for one round and once for three,
and prints the difference over the messages of the two extra rounds: the instructions this
process spends per message (the engine, the flows, SQLAlchemy, the driver; start-up and
imports cancel out). On PostgreSQL the database server's own work is not in it. Valgrind
makes the run some 50 times slower (about a minute each here). Compare one tree against
another on the same machine (a git worktree of the other commit): the counts repeated within
1% here.

On PostgreSQL it then runs the same rounds three more times without valgrind and prints the
CPU time the database server's processes spent per message (read from /proc, so on Linux
only, and only if the server runs on this machine): work moved from this process to the
server shows there. That is a timing, noisier than the count.

Without valgrind on the PATH it says so and stops. `--inside ROUNDS` is the run under it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from benchdb import database_url, postgres_seconds

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
STEPS: list[tuple[str, str | None]] = [
    ("hi", None), ("1", None), ("Dana", None), ("1HGCM82633A004352", None), ("84000", None),
    ("Grinding noise from the front left wheel when braking", None), ("", "photos:done"),
    ("", "confirm"), ("agree", None)]


async def rounds_through_engine(url: str, customers: int, rounds: int, data_dir: Path) -> None:
    import migrations
    from bot.app import build_runtime
    from bot.flows import route
    from core.clock import SystemClock
    from core.config import load_config
    from core.db import create_engine
    from core.engine import Engine
    from core.messages import Inbound

    config = load_config(environ={"AUTODOCTOR_SECRET_KEY": "bench-secret-key"},
                         data_dir=data_dir)
    engine = create_engine(url)
    try:
        await migrations.upgrade(engine)
        bot = Engine(build_runtime(config, engine, clock=SystemClock()), route)

        async def customer(address: str) -> None:
            last = []
            for text, action in STEPS:
                last = await bot.receive(Inbound(channel="web", address=address, text=text,
                                                 action=action))
            assert last and last[-1].link is not None and "/pay/" in last[-1].link.url, last

        for round_no in range(rounds):
            await asyncio.gather(*(customer(f"bench:{round_no}:{i}") for i in range(customers)))
        await bot.drain()
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def throwaway(db: str, pg_url: str, folder: Path) -> AsyncIterator[str | None]:
    async with database_url(db, pg_url, folder / "bench.db") as url:
        if url is not None and url.startswith("postgresql://"):
            url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        yield url


async def counted(args: argparse.Namespace, rounds: int) -> int:
    """Instructions of one run of `rounds` rounds under callgrind."""
    with tempfile.TemporaryDirectory(prefix="autodoctor-instructions-") as tmp:
        async with throwaway(args.db, args.pg_url, Path(tmp)) as url:
            if url is None:
                raise SystemExit("postgresql unreachable")
            out = Path(tmp) / "callgrind.out"
            env = {**os.environ, "AUTODOCTOR_BENCH_URL": url, "AUTODOCTOR_DATA_DIR": tmp}
            process = await asyncio.create_subprocess_exec(
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                sys.executable, __file__, "--inside", str(rounds),
                "--customers", str(args.customers), env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            log, _ = await process.communicate()
            found = re.search(rb"Collected : (\d+)", log)
            if process.returncode != 0 or found is None:
                raise SystemExit(log.decode(errors="replace")[-2000:])
            return int(found.group(1))


async def postgres_cpu(args: argparse.Namespace) -> list[float]:
    """Seconds of the server's CPU per message over two extra rounds, three times."""
    per_message = []
    for _ in range(3):
        used = []
        for rounds in (1, 3):
            with tempfile.TemporaryDirectory(prefix="autodoctor-instructions-") as tmp:
                async with throwaway(args.db, args.pg_url, Path(tmp)) as url:
                    if url is None:
                        raise SystemExit("postgresql unreachable")
                    before = postgres_seconds()
                    await rounds_through_engine(url, args.customers, rounds, Path(tmp))
                    used.append(postgres_seconds() - before)
        per_message.append((used[1] - used[0]) / (2 * args.customers * len(STEPS)))
    return per_message


async def main(args: argparse.Namespace) -> None:
    if args.inside is not None:
        await rounds_through_engine(os.environ["AUTODOCTOR_BENCH_URL"], args.customers,
                                    args.inside, Path(os.environ["AUTODOCTOR_DATA_DIR"]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    one, three = await asyncio.gather(counted(args, 1), counted(args, 3))
    messages = 2 * args.customers * len(STEPS)
    print(f"{args.db}: {args.customers} customers, {len(STEPS)} messages each, per round")
    print(f"  one round {one:,} instructions, three rounds {three:,}")
    print(f"  {(three - one) / messages / 1e6:.3f} M instructions per message "
          f"(the two extra rounds' {messages:,} messages)")
    if args.db == "postgresql" and sys.platform == "linux":
        runs = sorted(await postgres_cpu(args))
        print(f"  PostgreSQL's own CPU {1e3 * runs[1]:.3f} ms per message (median; runs "
              + "/".join(f"{1e3 * run:.3f}" for run in runs) + ")")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    parser.add_argument("--inside", type=int, help=argparse.SUPPRESS)
    asyncio.run(main(parser.parse_args()))
