"""Take-over time of a deployment-wide role (core.leadership) between real processes.

Each round a child process takes "send:telegram" on a throwaway PostgreSQL database; this
process then wants the role too, checking every --retry seconds. `kill -9` of the child: how
long until this process holds the role. Then the graceful case: a new child waits for the
role and this process releases it (as the drain does): how long until the child holds it.

    .venv/bin/python bench/takeover.py [--rounds 5] [--retry 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time

from benchdb import pg_database

from core.config import normalize_database_url
from core.db import create_engine
from core.leadership import Leadership

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROLE = "send:telegram"

CHILD = """
import asyncio, sys
from core.db import create_engine
from core.leadership import Leadership

async def main() -> None:
    leadership = Leadership(create_engine(sys.argv[1]), retry_seconds=float(sys.argv[2]))
    leadership.want("send:telegram")
    runner = asyncio.create_task(leadership.run_forever())
    await leadership.wait_held("send:telegram")
    print("held", flush=True)
    await runner

asyncio.run(main())
"""


def child(url: str, retry: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", CHILD, url, str(retry)], env=env,
                            stdout=subprocess.PIPE, text=True)


async def until_held(proc: subprocess.Popen[str]) -> float:
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.strip() == "held", line
    return time.monotonic()


async def rounds(url: str, count: int, retry: float) -> tuple[list[float], list[float]]:
    killed, released = [], []
    for _ in range(count):
        first = child(url, retry)
        await until_held(first)
        engine = create_engine(url)
        here = Leadership(engine, retry_seconds=retry)
        here.want(ROLE)
        runner = asyncio.create_task(here.run_forever())
        # Past a check or two (the child still holds it), at a random point of the period.
        await asyncio.sleep(retry * (1 + random.random()))
        assert not here.holds(ROLE)
        start = time.monotonic()
        first.send_signal(signal.SIGKILL)
        await here.wait_held(ROLE)
        killed.append(time.monotonic() - start)
        first.wait()

        second = child(url, retry)
        await asyncio.sleep(retry * (1 + random.random()))  # it is waiting for the role
        start = time.monotonic()
        await here.release()
        held_at = await until_held(second)
        released.append(held_at - start)
        second.send_signal(signal.SIGKILL)
        second.wait()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await engine.dispose()
    return killed, released


def summary(name: str, seconds: list[float]) -> str:
    return (f"{name:<28} median {statistics.median(seconds):5.2f} s  "
            f"min {min(seconds):5.2f} s  max {max(seconds):5.2f} s  (n={len(seconds)})")


async def main_async(args: argparse.Namespace) -> int:
    async with pg_database(args.pg_url) as url:
        if url is None:
            return 1
        killed, released = await rounds(normalize_database_url(url), args.rounds, args.retry)
    print(f"take-over of {ROLE!r}, leader_retry_seconds = {args.retry:g}")
    print(summary("holder killed (kill -9)", killed))
    print(summary("holder drained (release)", released))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--retry", type=float, default=2.0)
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
