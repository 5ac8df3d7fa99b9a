"""Consultation relay benchmark: C live consultations, customer in the widget, mechanic on the
/m/ console (the same widget WebSocket, with mechanic_invite in hello), on the real service.

For each database the service runs as `python -m bot.cli serve` on a throwaway database, as in
widget_throughput.py (whose helpers this uses). C mechanics are invited through the project's
own core.mechanics.invite_mechanic; then, one consultation at a time (an offer goes to every
available mechanic, and one mechanic holds one job), a mechanic's widget says hello with its
invite, a customer runs the widget intake to the payment link, pays it on the offline checkout
page (POST /pay/{ref}), the mechanic taps Accept on the offer and the customer's first line
starts the session. Then every customer writes lines that reach their mechanic's socket as
"Customer: <text>": back to back (each line sent when the last one has arrived: saturation),
then at a person's pace. Latency is from sending the customer's frame to the mechanic's socket
receiving the relayed one. In the same run, before the consultations and after them, C
customers run intakes at saturation (widget_throughput.load): the server's CPU per relayed
line is printed beside its CPU per intake frame.

    .venv/bin/python bench/relay.py [--consultations 100] [--messages 45] [--paced 20]
        [--pace 1] [--intakes 5] [--db sqlite,postgresql]

PostgreSQL comes from AUTODOCTOR_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/
postgres); a database bench_<random> is created there and dropped afterwards. All traffic goes to
127.0.0.1. Targets: paced p99 < 100 ms; server CPU per relayed line <= per intake frame. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from widget_throughput import (
    INTAKE,
    PHASE_TIMEOUT,
    REPLY_TIMEOUT,
    Proc,
    Run,
    check_databases,
    close_all,
    commit_probe,
    database_arguments,
    each_database,
    load,
    metered,
    percentile_ms,
    raise_nofile,
    service_env,
    start_service,
    wait_healthy,
)

RELAYED = "Dana: "  # how the mechanic sees a customer's line (the intake's first name)
LINE = "It grinds louder above 40 mph and when I turn left, then it goes quiet"
# A customer's messages before the relay (intake steps after hello, and the first line);
# each counts against the widget's per-visitor allowance, as the relayed lines do.
SETUP_MESSAGES = sum(1 for frame, _ in INTAKE if frame["type"] != "hello") + 1
ALLOWANCE_MARGIN = 3  # messages kept in hand: the paced phase's jitter
SPY_RATE = 250  # py-spy samples a second (--py-spy)


# --- one widget connection ----------------------------------------------------------------------

Waits = dict[str, "asyncio.Future[float]"]


class Side:
    """One widget connection. Its reader takes every frame as it comes (so the server's
    heartbeat pings are answered whatever the benchmark is waiting for): a relayed line someone
    waits for resolves the wait with the moment it arrived, anything else is queued."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, waits: Waits) -> None:
        self.ws = ws
        self.waits = waits  # shared by both sides of a consultation
        self.frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                arrived = time.perf_counter()
                frame = json.loads(msg.data)
                text = frame.get("text") or ""
                wait = self.waits.pop(text[len(RELAYED):], None) \
                    if text.startswith(RELAYED) else None
                if wait is not None:
                    if not wait.done():
                        wait.set_result(arrived)
                    continue
                if frame.get("type") == "error":
                    self.fail(f"error frame {frame.get('code')}: {frame.get('message')}")
                self.frames.put_nowait(frame)
        finally:
            self.fail("socket closed")
            self.frames.put_nowait(None)

    def fail(self, reason: str) -> None:
        """End every wait of this consultation: an error frame or a closed socket."""
        for wait in self.waits.values():
            if not wait.done():
                wait.set_exception(RuntimeError(reason))
        self.waits.clear()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def next(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.frames.get(), REPLY_TIMEOUT)
        if frame is None:
            raise RuntimeError("socket closed")
        if frame.get("type") == "error":
            raise RuntimeError(f"error frame {frame.get('code')}: {frame.get('message')}")
        return frame

    async def until(self, wanted: Callable[[dict[str, Any]], bool], what: str
                    ) -> dict[str, Any]:
        """The next frame that is `wanted` (others are passed over)."""
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                while not wanted(frame := await self.next()):
                    pass
        except TimeoutError:
            raise RuntimeError(f"no {what} within {REPLY_TIMEOUT:.0f}s") from None
        return frame


def starts(prefix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: str(frame.get("text") or "").startswith(prefix)


@dataclass
class Consultation:
    index: int
    customer: Side
    mechanic: Side
    waits: Waits


async def relay_lines(c: Consultation, phase: str, count: int, pace: float,
                      latencies: list[float]) -> None:
    """The customer writes `count` lines, each when the last has reached the mechanic (after
    a jittered pause of about `pace` seconds, if any); one latency per line."""
    loop = asyncio.get_running_loop()
    for k in range(count):
        if pace:  # jittered, so that customers do not move in lockstep waves
            await asyncio.sleep(pace * random.uniform(0.5, 1.5))
        line = f"{phase} {c.index}.{k}: {LINE}"
        arrived = loop.create_future()
        c.waits[line] = arrived
        start = time.perf_counter()
        await c.customer.send({"type": "message", "text": line})
        latencies.append(await asyncio.wait_for(arrived, REPLY_TIMEOUT) - start)


# --- setting the consultations up ---------------------------------------------------------------

async def invite_mechanics(env: dict[str, str], count: int) -> list[str]:
    """`count` mechanics made by the project's own invite_mechanic on the service's database,
    in one transaction; their invite codes."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from core.clock import SystemClock
    from core.config import load_config
    from core.db import create_engine
    from core.mechanics import invite_mechanic

    config = load_config(environ=env)
    engine = create_engine(config.database_url,
                           busy_timeout_ms=config.database.sqlite_busy_timeout_ms)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
            now = SystemClock().now()
            return [(await invite_mechanic(session, config, f"Mechanic{i}", now)).invite_code
                    for i in range(count)]
    finally:
        await engine.dispose()


def widget_allowance(env: dict[str, str]) -> int:
    from core.config import load_config

    return load_config(environ=env).rate_limits.widget_messages_per_minute


async def open_consultation(http: aiohttp.ClientSession, base: str, index: int, invite: str,
                            sockets: list[aiohttp.ClientWebSocketResponse]) -> Consultation:
    """Mechanic linked, customer's intake paid, offer accepted, first line relayed: live."""
    waits: Waits = {}

    async def connect() -> Side:
        ws = await http.ws_connect(f"{base}/ws/widget", autoping=True)
        sockets.append(ws)
        return Side(ws, waits)

    mechanic = await connect()
    await mechanic.send({"type": "hello", "visitor": None, "resume_after": None,
                         "mechanic_invite": invite})
    await mechanic.until(starts("Welcome, "), "greeting on the mechanic's socket")
    customer = await connect()
    last: dict[str, Any] = {}
    for frame, replies in INTAKE:  # the widget benchmark's intake: hello ... confirm
        await customer.send(frame)
        for _ in range(replies):
            last = await customer.next()
    pay_url = str((last.get("link") or {}).get("url", ""))
    if "/pay/" not in pay_url:
        raise RuntimeError(f"no payment link at the end of the intake: {str(last)[:200]}")
    await pay_offline(http, base + urlsplit(pay_url).path)
    receipt = await customer.until(starts("Payment received"), "payment receipt")
    offer = await mechanic.until(
        lambda f: any(b.get("payload", "").startswith("accept:") for b in f.get("buttons") or []),
        "offer with an Accept button")
    accept = next(b["payload"] for b in offer["buttons"] if b["payload"].startswith("accept:"))
    if accept.partition(":")[2] not in receipt["text"]:
        raise RuntimeError(f"mechanic {index} was offered {accept}, not this customer's request")
    await mechanic.send({"type": "action", "payload": accept})
    await customer.until(lambda f: "accepted your" in str(f.get("text")), "match notice")
    consultation = Consultation(index, customer, mechanic, waits)
    await relay_lines(consultation, "start", 1, 0.0, [])  # the first line makes it live
    await customer.until(starts("The session has started"), "session start notice")
    return consultation


async def pay_offline(http: aiohttp.ClientSession, url: str) -> None:
    """Pays on the offline test-mode page as a browser does: opens it and posts its form,
    with the form's token."""
    timeout = aiohttp.ClientTimeout(total=REPLY_TIMEOUT)
    async with http.get(url, timeout=timeout) as page:
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.text())
    if found is None:
        raise RuntimeError(f"GET {urlsplit(url).path}: no payment form (HTTP {page.status})")
    async with http.post(url, data={"csrf": found.group(1)}, timeout=timeout) as paid:
        if paid.status != 200:
            raise RuntimeError(f"POST {urlsplit(url).path}: HTTP {paid.status}")


@contextlib.asynccontextmanager
async def profiled(server: Proc, out: Path | None) -> AsyncIterator[None]:
    """With `out`, py-spy samples the server's stacks while the block runs (--py-spy)."""
    if out is None:
        yield
        return
    spy = await asyncio.create_subprocess_exec(
        py_spy(), "record", "--pid", str(server.popen.pid), "--rate", str(SPY_RATE),
        "--nonblocking", "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # writes the folded stacks and ends
        try:
            await asyncio.wait_for(spy.wait(), 60)
        except TimeoutError:
            spy.kill()


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--py-spy needs py-spy on the PATH (pip install py-spy)")
    return found


async def relay_phase(http: aiohttp.ClientSession, server: Proc, metrics_url: str,
                      consultations: list[Consultation], phase: str, count: int,
                      pace: float) -> Run:
    async with metered(http, server, metrics_url) as run, asyncio.timeout(PHASE_TIMEOUT):
        outcomes = await asyncio.gather(*(
            relay_lines(c, phase, count, pace, run.latencies) for c in consultations),
            return_exceptions=True)
    run.failures = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    run.completed = len(outcomes) - len(run.failures)
    return run


# --- one database -------------------------------------------------------------------------------

@dataclass
class Result:
    db: str
    relay: Run  # saturated
    paced: Run
    intakes: list[Run]  # at saturation: before the consultations, and after them
    paced_intake: Run  # one intake each at a person's pace
    opened: int  # consultations made live
    setup_seconds: float
    commits: list[float] = field(default_factory=list)  # PostgreSQL: a bare commit's seconds
    errors: int = 0  # ERROR lines in the server's log

    @property
    def failures(self) -> list[str]:
        return [f for run in (self.relay, self.paced, *self.intakes, self.paced_intake)
                for f in run.failures]


async def bench_db(db: str, database_url: str | None, args: argparse.Namespace,
                   procs: list[Proc], tmp: Path) -> Result:
    env = service_env(db, database_url, tmp)
    # A visitor may send a minute's allowance at once, then one per 60/allowance seconds:
    # the saturated lines must fit in what the set-up left, the paced ones come no faster.
    per_minute = widget_allowance(env)
    most = per_minute - SETUP_MESSAGES - ALLOWANCE_MARGIN
    if args.messages > most or args.pace < 60 / per_minute:
        raise SystemExit(f"--messages can be at most {most} and --pace at least "
                         f"{60 / per_minute:g}: a visitor may send {per_minute} messages a "
                         "minute ([rate_limits])")
    server, port = await start_service(db, env, procs, tmp)
    base = f"http://127.0.0.1:{port}"
    url, metrics = f"{base}/ws/widget", f"{base}/metrics"
    spy: Path | None = args.py_spy
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    consultations: list[Consultation] = []
    commits: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        try:
            await wait_healthy(http, server, port)
            await load(http, url, server, args.consultations, 0.0, False)  # warm-up, not counted
            intakes = [await load(http, url, server, args.consultations, 0.0, False,
                                  args.intakes, metrics)]
            paced_intake = await load(http, url, server, args.consultations, args.pace, False,
                                      1, metrics)
            codes = await invite_mechanics(env, args.consultations)
            start = time.perf_counter()
            async with asyncio.timeout(PHASE_TIMEOUT):
                for index, code in enumerate(codes):
                    consultations.append(await open_consultation(http, base, index, code,
                                                                 sockets))
            setup_seconds = time.perf_counter() - start
            async with profiled(server, spy and spy / f"{db}-relay.txt"):
                relay = await relay_phase(http, server, metrics, consultations, "saturated",
                                          args.messages, 0.0)
            async with commit_probe(database_url, commits):
                paced = await relay_phase(http, server, metrics, consultations, "paced",
                                          args.paced, args.pace)
            async with profiled(server, spy and spy / f"{db}-intake.txt"):
                intakes.append(await load(http, url, server, args.consultations, 0.0, False,
                                          args.intakes, metrics))
        finally:
            await close_all(sockets)
            for c in consultations:
                for side in (c.customer, c.mechanic):
                    side.reader.cancel()
            server.stop()
    return Result(db, relay, paced, intakes, paced_intake, len(consultations), setup_seconds,
                  commits, server.log_count(" ERROR "))


def cpu_ms(run: Run) -> float:
    return run.cpu / max(len(run.latencies), 1) * 1000


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\n{args.consultations} live consultations (widget customer -> /m/ mechanic): "
          f"{args.messages} lines each back to back (saturated), then {args.paced} each "
          f"~{args.pace:g}s apart (paced); intakes: {args.consultations} customers x "
          f"{args.intakes} x {len(INTAKE)} frames at saturation, before and after, and x 1 "
          "paced")
    head = (f"{'db':<11}{'ok':>8}{'relay/s':>8}{'p50':>7}{'p99':>7}{'paced p50':>10}"
            f"{'p99':>7}{'<100':>5}{'ms CPU/line':>12}{'/intake frame':>14}{'ratio':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        s, p = r.relay, r.paced
        intake = sum(cpu_ms(i) for i in r.intakes) / len(r.intakes)
        ratio = cpu_ms(s) / intake if intake else 0.0
        print(f"{r.db:<11}{f'{s.completed}/{args.consultations}':>8}{s.rate:>8.0f}"
              f"{s.pct(0.5):>7.1f}{s.pct(0.99):>7.1f}{p.pct(0.5):>10.1f}{p.pct(0.99):>7.1f}"
              f"{'ok' if p.pct(0.99) < 100 else 'NO':>5}{cpu_ms(s):>12.3f}{intake:>14.3f}"
              f"{f'{ratio:.2f} ' + ('ok' if ratio <= 1 else 'NO'):>9}")
        print(f"{'':<11}saturated: {len(s.latencies)} lines in {s.seconds:.1f}s, max "
              f"{s.pct(1.0):.1f} ms; server {s.cpu / s.seconds:.0%} of a core"
              + (f" (and {s.queued / s.seconds:.0%} waiting for one)" if s.queued is not None
                 else "")
              + f", client {s.client_cpu / s.seconds:.0%}"
              + (f"; {s.transactions:.0f} engine transactions, "
                 f"{len(s.latencies) / s.transactions:.0f} lines each" if s.transactions
                 else ""))
        for label, i in zip(("before", "after"), r.intakes, strict=False):
            print(f"{'':<11}intakes {label}: {i.completed}/{args.consultations * args.intakes}"
                  f" ok, {i.rate:.0f} frames/s, {cpu_ms(i):.3f} ms CPU per frame, server "
                  f"{i.cpu / i.seconds:.0%} of a core"
                  + (f"; {len(i.latencies) / i.transactions:.0f} frames per transaction"
                     if i.transactions else ""))
        i = r.paced_intake
        print(f"{'':<11}paced: {len(p.latencies)} lines, {p.rate:.0f}/s, max {p.pct(1.0):.1f}"
              f" ms, server {cpu_ms(p):.3f} ms CPU per line, {p.cpu / p.seconds:.0%} of a core"
              + (f" (and {p.queued / p.seconds:.0%} waiting for one)" if p.queued is not None
                 else "") + ";"
              f" paced intakes ({i.completed}/{args.consultations} ok, {i.rate:.0f} frames/s): "
              f"{cpu_ms(i):.3f} ms per frame, p99 {i.pct(0.99):.1f} ms")
        if r.commits:
            c = r.commits
            print(f"{'':<11}meanwhile a bare one-row commit on the same server: p50 "
                  f"{percentile_ms(c, 0.5):.1f} ms, p99 {percentile_ms(c, 0.99):.1f} ms, "
                  f"max {percentile_ms(c, 1.0):.1f} ms ({len(c)} commits)")
        print(f"{'':<11}set-up: {r.opened} consultations live in {r.setup_seconds:.1f}s"
              + (f"; server log: {r.errors} ERROR lines" if r.errors else ""))
        for failure in r.failures[:3]:
            print(f"{'':<11}failed: {failure[:200]}")
    print("relay/s: customers' lines reaching the mechanics' sockets per second, each customer\n"
          "sending the next as soon as the last arrived (saturation). Latency (ms): customer's\n"
          "frame sent -> the relayed frame received on the mechanic's socket; at saturation it\n"
          "is queueing; 'paced': each customer pausing ~pace seconds between lines (target p99\n"
          "< 100). ms CPU: the server process's CPU per relayed line (saturated) and per intake\n"
          "frame (the mean of the intake runs before and after); ratio: line / intake frame\n"
          "(target <= 1).")


async def main_async(args: argparse.Namespace) -> int:
    results = await each_database(args, bench_db)
    report(results, args)
    return 0 if all(not r.failures and r.opened == args.consultations for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consultations", type=int, default=100)
    parser.add_argument("--messages", type=int, default=45,
                        help="lines each customer sends back to back (default 45)")
    parser.add_argument("--paced", type=int, default=20,
                        help="lines each customer then sends at a person's pace (default 20)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="mean seconds between a customer's paced lines (default 1)")
    parser.add_argument("--intakes", type=int, default=5,
                        help="intakes each of C customers runs at saturation, before and after "
                             "the consultations, to price an intake frame (default 5)")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="sample the server with py-spy during the saturated relay and the "
                             "intakes after it; folded stacks to DIR/{db}-relay.txt and "
                             "DIR/{db}-intake.txt (the sampling slows the server a little)")
    database_arguments(parser)
    args = parser.parse_args()
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    check_databases(parser, args)
    if args.consultations < 1 or args.messages < 1 or args.paced < 1 or args.pace <= 0:
        parser.error("--consultations, --messages, --paced and --pace must be positive")
    raise_nofile(4 * args.consultations + 1024)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
