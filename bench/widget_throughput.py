"""Widget WebSocket benchmark: throughput, reply latency and memory of the real service.

For each database the service runs as `python -m bot.cli serve` in a subprocess (after
`migrate`), on a fresh SQLite file or a fresh PostgreSQL database. C simulated customers each
run complete intakes over real WebSockets (hello, tier, name, VIN, odometer, problem, skip
photos, confirm, agree to the terms): at saturation (each frame sent as soon as the last is
answered), then once more at a
person's pace. A bare aiohttp WebSocket echo server, in its own subprocess, gets the same
clients and the same frames at saturation, as the yardstick; the two alternate, --repeat runs
of each (a single one-second echo run swings by a third on a shared machine), and the median of
each is reported. Server memory (VmRSS) is read
idle after start and with N idle widget connections open.

    .venv/bin/python bench/widget_throughput.py [--customers 200] [--idle 1000]
        [--db sqlite,postgresql] [--intakes 5] [--think SECONDS] [--pace 1] [--repeat 3]

PostgreSQL comes from AUTODOCTOR_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/
postgres); a database bench_<random> is created there and dropped afterwards. All traffic goes to
127.0.0.1. Targets: ours/echo >= 25 % at saturation, p99 < 50 ms at a person's pace (--pace), RSS
with the idle connections < 150 MB. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from benchdb import cpu_seconds, pg_database

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
VIN = "1HGCM82633A004352"
HELLO = {"type": "hello", "visitor": None, "resume_after": None, "mechanic_invite": None}
# One intake: each client frame and the number of server frames it causes.
INTAKE: list[tuple[dict[str, Any], int]] = [
    (HELLO, 2),  # welcome + greeting
    ({"type": "message", "text": "1"}, 1),  # tier: Quick Chat
    ({"type": "message", "text": "Dana"}, 1),  # first name
    ({"type": "message", "text": VIN}, 2),  # decoded vehicle + odometer question
    ({"type": "message", "text": "84000"}, 1),
    ({"type": "message", "text": "Grinding noise from the front left wheel when braking"}, 1),
    ({"type": "action", "payload": "photos:done"}, 1),  # summary
    ({"type": "action", "payload": "confirm"}, 1),  # the terms
    ({"type": "message", "text": "agree"}, 1),  # payment link
]
REPLY_TIMEOUT = 30.0  # one frame's replies
PHASE_TIMEOUT = 600.0  # a whole phase (all customers, or opening the idle connections)
START_TIMEOUT = 60.0  # a subprocess answering on its port
T = TypeVar("T")
SECRETS = ("TELEGRAM_BOT_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER",
           "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "LIVEKIT_URL", "LIVEKIT_API_KEY",
           "LIVEKIT_API_SECRET", "AUTODOCTOR_DATABASE_URL", "AUTODOCTOR_CONFIG")


# --- the echo server (this same file, run with --echo-server PORT) -----------------------------

def run_echo_server(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- subprocesses -------------------------------------------------------------------------------

class Proc:
    """A child process whose output goes to a log file; stopped by stop() whatever happens."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process, all threads."""
        return cpu_seconds(self.popen.pid)

    def queued_seconds(self) -> float | None:
        """Seconds the process's threads have waited, runnable, for a free core (schedstat;
        None where the kernel does not keep it)."""
        total = 0
        try:
            for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return total / 1e9

    def log_count(self, needle: str) -> int:
        return sum(needle in line for line in self.log.read_text(errors="replace").splitlines())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(http: aiohttp.ClientSession, proc: Proc, port: int,
                       start_timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"http://127.0.0.1:{port}/healthz",
                                timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer /healthz in {start_timeout:.0f}s")


# --- load ---------------------------------------------------------------------------------------

@dataclass
class Run:
    latencies: list[float]  # seconds, one per client frame fully answered
    seconds: float
    completed: int
    failures: list[str]
    cpu: float = 0.0  # server CPU seconds during the run
    client_cpu: float = 0.0  # this process's CPU seconds during the run
    queued: float | None = None  # seconds the server waited, runnable, for a free core
    transactions: float | None = None  # engine transactions during the run (ours only)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return percentile_ms(self.latencies, q)


async def converse(http: aiohttp.ClientSession, url: str, script: list[tuple[dict[str, Any], int]],
                   latencies: list[float], think: float) -> dict[str, Any]:
    """Send each frame, wait for the replies it causes; return the last reply."""
    last: dict[str, Any] = {}
    async with asyncio.timeout((REPLY_TIMEOUT + think) * (len(script) + 1)), \
            http.ws_connect(url, autoping=True) as ws:
        for step, (frame, replies) in enumerate(script):
            if think:  # jittered, so that customers do not move in lockstep waves
                await asyncio.sleep(think * random.uniform(0 if step == 0 else 0.5, 1.5))
            start = time.perf_counter()
            await ws.send_str(json.dumps(frame))
            for _ in range(replies):
                msg = await ws.receive(timeout=REPLY_TIMEOUT)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"socket {msg.type.name} after {frame}")
                last = json.loads(msg.data)
                if last.get("type") == "error":
                    raise RuntimeError(f"error frame {last.get('code')} after {frame}")
            latencies.append(time.perf_counter() - start)
    return last


async def customer(http: aiohttp.ClientSession, url: str, script: list[tuple[dict[str, Any], int]],
                   latencies: list[float], think: float, intakes: int) -> list[dict[str, Any]]:
    """One simulated customer: `intakes` whole intakes one after another, each on a new
    connection as a new visitor; the last reply of each."""
    return [await converse(http, url, script, latencies, think) for _ in range(intakes)]


async def engine_transactions(http: aiohttp.ClientSession, metrics_url: str) -> float:
    """The engine's transactions so far (the count of its batch-size histogram, /metrics)."""
    async with http.get(metrics_url) as response:
        body = await response.text()
    return sum(float(line.split()[-1]) for line in body.splitlines()
               if line.startswith("autodoctor_engine_batch_messages_count"))


@contextlib.asynccontextmanager
async def metered(http: aiohttp.ClientSession, server: Proc,
                  metrics_url: str | None = None) -> AsyncIterator[Run]:
    """Measure the block: the Run yielded gets the block's seconds, the server's CPU (and
    time queued for a core), this process's CPU and the engine's transactions (with
    metrics_url) when it ends; its latencies, completed and failures are the caller's."""
    run = Run([], 0.0, 0, [])
    # This client's cyclic garbage collector is off while it measures: its full collections
    # held the echo figure to about half of what the echo server does (the client, not the
    # server, was the limit), and by how much depended on how big this process had grown.
    transactions = await engine_transactions(http, metrics_url) if metrics_url else None
    gc.collect()
    gc.disable()
    try:
        cpu, queued, start = server.cpu_seconds(), server.queued_seconds(), time.perf_counter()
        client_cpu = time.process_time()
        yield run
        run.client_cpu = time.process_time() - client_cpu
    finally:
        gc.enable()
    run.seconds, run.cpu = time.perf_counter() - start, server.cpu_seconds() - cpu
    queued_after = server.queued_seconds()
    run.queued = None if queued is None or queued_after is None else queued_after - queued
    if transactions is not None and metrics_url:
        run.transactions = await engine_transactions(http, metrics_url) - transactions


async def load(http: aiohttp.ClientSession, url: str, server: Proc, customers: int,
               think: float, echo: bool, intakes: int = 1, metrics_url: str | None = None
               ) -> Run:
    script = [(frame, 1) for frame, _ in INTAKE] if echo else INTAKE
    async with metered(http, server, metrics_url) as run, asyncio.timeout(PHASE_TIMEOUT):
        per_customer = await asyncio.gather(*(
            customer(http, url, script, run.latencies, think, intakes)
            for _ in range(customers)), return_exceptions=True)
    results: list[dict[str, Any] | BaseException] = []
    for outcome in per_customer:
        results.extend([outcome] if isinstance(outcome, BaseException) else outcome)
    run.failures = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    done = [r for r in results if isinstance(r, dict)]
    if not echo:  # an intake is complete when its last reply carries the payment link
        bad = [r for r in done if "/pay/" not in str((r.get("link") or {}).get("url", ""))]
        run.failures += [f"no payment link in last reply: {str(r)[:120]}" for r in bad]
        run.completed = len(done) - len(bad)
    else:
        run.completed = len(done)
    return run


async def open_idle(http: aiohttp.ClientSession, url: str, count: int,
                    sockets: list[aiohttp.ClientWebSocketResponse]) -> int:
    """Open `count` widget connections that said hello and got the greeting; how many made it."""
    gate = asyncio.Semaphore(50)

    async def one() -> None:
        async with gate, asyncio.timeout(REPLY_TIMEOUT):
            ws = await http.ws_connect(url, autoping=True)
            sockets.append(ws)
            await ws.send_str(json.dumps(HELLO))
            for _ in range(2):
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT or json.loads(msg.data)["type"] == "error":
                    raise RuntimeError(f"hello failed: {msg.data!r}")

    async with asyncio.timeout(PHASE_TIMEOUT):
        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    return sum(1 for r in results if r is None)


async def close_all(sockets: list[aiohttp.ClientWebSocketResponse]) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    sockets.clear()


# --- PostgreSQL ---------------------------------------------------------------------------------

PROBE_INTERVAL = 0.02


@contextlib.asynccontextmanager
async def commit_probe(database_url: str | None, seconds: list[float]) -> AsyncIterator[None]:
    """On PostgreSQL, while the block runs: a one-row INSERT committed every PROBE_INTERVAL on
    its own connection, each commit's duration appended to `seconds`. A commit waits for the
    server to flush its log to disk, and so does each of ours: the yardstick that tells the
    disk's stalls from the service's own latency."""
    if database_url is None:
        yield
        return
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=10)
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (at timestamptz)")

    async def probe() -> None:
        while True:
            start = time.perf_counter()
            await conn.execute("INSERT INTO bench_commit_probe VALUES (now())")  # autocommit
            seconds.append(time.perf_counter() - start)
            await asyncio.sleep(PROBE_INTERVAL)

    task = asyncio.create_task(probe())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await conn.close(timeout=5)


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


# --- one database -------------------------------------------------------------------------------

@dataclass
class Result:
    db: str
    ours: Run
    echo: Run
    rss_start: float
    rss_idle: float
    idle_open: int
    rss_after: float
    paced: Run | None = None  # the same customers at a person's pace (--pace)
    ours_rates: list[float] = field(default_factory=list)  # every saturation run, in order
    echo_rates: list[float] = field(default_factory=list)
    failed: int = 0  # failed intakes over all saturation runs
    # PostgreSQL: seconds of each bare one-row commit on the same server during the paced run
    commits: list[float] = field(default_factory=list)


def service_env(db: str, database_url: str | None, tmp: Path) -> dict[str, str]:
    """The service's environment: no provider secrets, its data in tmp/db, and the
    PostgreSQL database if any (else SQLite in the data folder)."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env["AUTODOCTOR_DATA_DIR"] = str(tmp / db)
    env["AUTODOCTOR_CONFIG"] = str(bench_config(tmp))
    if database_url:
        env["AUTODOCTOR_DATABASE_URL"] = database_url
    return env


def bench_config(tmp: Path) -> Path:
    """The project's config.toml with the per-address limits on new visitors and uploads
    lifted: every simulated person comes from 127.0.0.1, which the service would otherwise
    take for one address opening thousands of chats (issue 29's abuse limit)."""
    path = tmp / "bench-config.toml"
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    for key in ("new_visitors_per_hour", "uploads_per_hour"):
        text, found = re.subn(rf"^{key} = \d+$", f"{key} = 100000000", text, flags=re.M)
        if found != 1:
            raise RuntimeError(f"config.toml has no single {key} line to lift for the bench")
    path.write_text(text, encoding="utf-8")
    return path


async def start_service(db: str, env: dict[str, str], procs: list[Proc],
                        tmp: Path) -> tuple[Proc, int]:
    """`migrate`, then `serve` on a free port (logging to tmp/db.log), added to procs; the
    process and its port (not yet answering: see wait_healthy)."""
    migrate = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot.cli", "migrate"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120)
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate failed on {db}:\n{migrate.stderr[-2000:]}")
    port = free_port()
    server = Proc(f"serve ({db})", [sys.executable, "-m", "bot.cli", "serve", "--port",
                                    str(port)], env, tmp / f"{db}.log")
    procs.append(server)
    return server, port


async def bench_db(db: str, database_url: str | None, args: argparse.Namespace,
                   procs: list[Proc], tmp: Path) -> Result:
    env = service_env(db, database_url, tmp)
    server, port = await start_service(db, env, procs, tmp)
    echo_port = free_port()
    echo = Proc("echo", [sys.executable, str(SELF), "--echo-server",
                         str(echo_port)], env, tmp / f"echo-{db}.log")
    procs.append(echo)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            await wait_healthy(http, server, port)
            await wait_healthy(http, echo, echo_port)
            await asyncio.sleep(1)
            rss_start = server.rss_mb()
            idle_open = await open_idle(http, f"http://127.0.0.1:{port}/ws/widget", args.idle,
                                        sockets)
            await asyncio.sleep(2)
            rss_idle = server.rss_mb()
            await close_all(sockets)
            await asyncio.sleep(1)
            url = f"http://127.0.0.1:{port}/ws/widget"
            # Saturation runs of ours and of the echo server, alternating, `repeat` of each:
            # a one-second echo run alone swings by a third on a shared machine.
            ours_runs: list[Run] = []
            echo_runs: list[Run] = []
            for _ in range(args.repeat):
                ours_runs.append(await load(http, url, server, args.customers, args.think,
                                            False, args.intakes,
                                            f"http://127.0.0.1:{port}/metrics"))
                echo_runs.append(await load(http, f"http://127.0.0.1:{echo_port}/ws", echo,
                                            args.customers, args.think, True, args.intakes))
            paced: Run | None = None
            commits: list[float] = []
            if args.pace:
                async with commit_probe(database_url, commits):
                    paced = await load(http, url, server, args.customers, args.pace, False)
            rss_after = server.rss_mb()
        finally:
            await close_all(sockets)
            for proc in (server, echo):
                proc.stop()
    errors, locked = server.log_count(" ERROR "), server.log_count("database is locked")
    failures = [f for run in ours_runs for f in run.failures] + (paced.failures if paced else [])
    ours, theirs = median_run(ours_runs), median_run(echo_runs)
    if failures or errors:
        print(f"{db}: {len(failures)} failed intakes{', e.g. ' if failures else ''}"
              f"{failures[0] if failures else ''}; server log: {errors} ERROR lines, "
              f"{locked} lines 'database is locked'")
    return Result(db, ours, theirs, rss_start, rss_idle, idle_open, rss_after, paced,
                  [r.rate for r in ours_runs], [r.rate for r in echo_runs],
                  sum(len(r.failures) for r in ours_runs), commits)


def median_run(runs: list[Run]) -> Run:
    """The run with the median rate (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]


def report(results: list[Result], args: argparse.Namespace) -> None:
    frames = len(INTAKE)
    print(f"\n{args.customers} concurrent customers x {args.intakes} intake(s) x {frames} "
          f"client frames (hello + 6 intake steps), think time {args.think:g}s; "
          f"{args.idle} idle connections")
    head = (f"{'db':<11}{'ok':>10}{'msg/s':>7}{'echo/s':>8}{'ours/echo':>10}"
            f"{'p50':>7}{'p99':>7}{'paced p50':>10}{'p99':>7}{'<50':>4}"
            f"{'RSS0':>6}{'idle':>6}{'<150':>5}{'run':>5}")
    print(head)
    print("-" * len(head))
    for r in results:
        o, e, p = r.ours, r.echo, r.paced
        ratio = o.rate / e.rate if e.rate else 0.0
        expected = args.customers * args.intakes
        print(f"{r.db:<11}{f'{o.completed}/{expected}':>10}{o.rate:>7.0f}{e.rate:>8.0f}"
              f"{f'{ratio:.0%} ' + ('ok' if ratio >= 0.25 else 'NO'):>10}"
              f"{o.pct(0.50):>7.1f}{o.pct(0.99):>7.1f}"
              + (f"{p.pct(0.50):>10.1f}{p.pct(0.99):>7.1f}"
                 f"{'ok' if p.pct(0.99) < 50 else 'NO':>4}" if p else f"{'-':>10}{'-':>7}{'':>4}")
              + f"{r.rss_start:>6.0f}{r.rss_idle:>6.0f}"
              f"{'ok' if r.rss_idle < 150 else 'NO':>5}{r.rss_after:>5.0f}")
        if len(r.ours_rates) > 1:
            print(f"{'':<11}{len(r.ours_rates)} alternating runs, median shown: ours "
                  + "/".join(f"{x:.0f}" for x in r.ours_rates) + " msg/s, echo "
                  + "/".join(f"{x:.0f}" for x in r.echo_rates) + " msg/s; ours/echo per pair "
                  + "/".join(f"{o / e:.0%}" for o, e in zip(r.ours_rates, r.echo_rates,
                                                            strict=True) if e))
        if r.idle_open < args.idle:
            print(f"{'':<11}only {r.idle_open}/{args.idle} idle connections opened")
        print(f"{'':<11}server CPU {o.cpu:.1f}s = {o.cpu / max(len(o.latencies), 1) * 1000:.2f}"
              f" ms/msg, {o.cpu / o.seconds:.0%} of a core"
              + (f" (and {o.queued / o.seconds:.0%} of the run waiting for a free core)"
                 if o.queued is not None else "")
              + f"; client {o.client_cpu / o.seconds:.0%} of a core; run {o.seconds:.1f}s")
        if o.transactions:
            print(f"{'':<11}{o.transactions:.0f} engine transactions, "
                  f"{len(o.latencies) / o.transactions:.0f} client frames per transaction")
        if p:
            print(f"{'':<11}paced: {p.completed}/{args.customers} ok, {p.rate:.0f} msg/s, "
                  f"max {p.pct(1.0):.1f} ms, server {p.cpu / p.seconds:.0%} of a core")
        if p and r.commits:
            c = r.commits
            print(f"{'':<11}meanwhile a bare one-row commit on the same server: p50 "
                  f"{percentile_ms(c, 0.5):.1f} ms, p99 {percentile_ms(c, 0.99):.1f} ms, "
                  f"max {percentile_ms(c, 1.0):.1f} ms ({len(c)} commits)")
        print(f"{'':<11}echo: {e.completed}/{expected} ok, p50 {e.pct(0.5):.1f} ms, "
              f"p99 {e.pct(0.99):.1f} ms, CPU {e.cpu / max(len(e.latencies), 1) * 1000:.2f}"
              f" ms/msg, {e.cpu / e.seconds:.0%} of a core; client {e.client_cpu / e.seconds:.0%}"
              f" of a core; run {e.seconds:.2f}s")
    print("msg/s: client frames answered per second, customers sending each next frame as soon\n"
          "as the replies arrive (saturation; connects included); ours/echo: against the bare\n"
          "echo server under the same load (target >= 25%). Latency (ms): frame sent -> last\n"
          "reply it causes; at saturation it is queueing (p50 ~ customers / msg/s, Little's\n"
          f"law); 'paced': the same customers each pausing ~{args.pace:g}s before a message, as\n"
          "people do (target p99 < 50). RSS MB: after start, with the idle connections\n"
          "(target < 150), after the run.")


async def each_database(args: argparse.Namespace,
                        bench: Callable[[str, str | None, argparse.Namespace, list[Proc], Path],
                                        Awaitable[T]]) -> list[T]:
    """bench(db, database_url, args, procs, tmp) for each of args.db: SQLite (url None: the
    service's file in its data folder) or a throwaway PostgreSQL database (skipped when the
    server is unreachable). The subprocesses it adds to procs are stopped and the temporary
    folder removed whatever happens."""
    procs: list[Proc] = []
    results: list[T] = []
    with tempfile.TemporaryDirectory(prefix="autodoctor-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            for db in args.db:
                if db == "sqlite":
                    results.append(await bench(db, None, args, procs, tmp))
                    continue
                async with pg_database(args.pg_url) as url:
                    if url is not None:
                        results.append(await bench(db, url, args, procs, tmp))
        finally:
            for proc in procs:
                proc.stop()
    return results


async def main_async(args: argparse.Namespace) -> int:
    results = await each_database(args, bench_db)
    report(results, args)
    return 0 if all(not r.failed for r in results) else 1


def database_arguments(parser: argparse.ArgumentParser) -> None:
    """--db (a comma-separated list of sqlite, postgresql) and --pg-url."""
    parser.add_argument("--db", default="sqlite,postgresql",
                        type=lambda s: [d.strip() for d in s.split(",") if d.strip()])
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))


def check_databases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    unknown = set(args.db) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown --db {', '.join(sorted(unknown))}")


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # children inherit it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds a customer waits before each message (default 0: "
                             "the next message goes as soon as the replies arrive)")
    parser.add_argument("--intakes", type=int, default=5,
                        help="intakes each customer runs one after another, each as a new "
                             "visitor, at saturation (default 5)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="mean seconds between a customer's messages in the paced phase "
                             "(default 1; 0 leaves the phase out)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="saturation runs of ours and of the echo server, alternating; the "
                             "median of each is reported (default 3)")
    database_arguments(parser)
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        run_echo_server(args.echo_server)
        return 0
    check_databases(parser, args)
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat takes 1..20")
    raise_nofile(2 * max(args.idle, args.customers) + 1024)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
