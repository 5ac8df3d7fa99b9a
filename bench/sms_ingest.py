"""SMS benchmark: signed inbound webhooks a second, and outbound throughput per sending number.

    .venv/bin/python bench/sms_ingest.py [--phones 100] [--repeat 3] [--numbers 50]
        [--per-number 20] [--skip-inbound] [--skip-outbound]

Inbound: `python -m bot.cli serve` runs in a subprocess on a throwaway PostgreSQL database
(AUTODOCTOR_BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres; a database
bench_<random> is made and dropped), with the SMS channel on and `[twilio] api_base` pointing at
the Twilio stand-in of the tests (tests/standins/twilio_api.py), run in this process. `--phones`
simulated phones each text a whole intake (Hi, 1, a name, VIN, 84000, a problem, skip, 1,
agree) as signed form posts to /webhooks/twilio/sms, each sending its next message as soon
as the answer (empty TwiML) comes back: every request is a signature check, the MessageSid's
idempotent insert and the engine's turn, committed. The requests are built and signed (twilio's own
RequestValidator.compute_signature) before the clock starts. A bare aiohttp handler in its own
subprocess (this file with --bare-server PORT: reads the form, answers empty TwiML) gets the
same requests the same way. The two alternate `--repeat` times; the median run of each is
reported, as webhooks a second and their ratio.

Outbound: in this process, the real OutboxDispatcher and SmsSender (channels/sms_send.py) on
another throwaway PostgreSQL database deliver `--per-number` single-segment messages for each
of `--numbers` sending numbers (TWILIO_FROM_NUMBER as a comma-separated pool; recipients are
chosen so each sending number gets four of them) to the stand-in, which enforces 1 segment a
second per sending number over any sliding second (`--tolerance`, default 20 ms, allowed for
arrival jitter; the gaps between one number's arrivals are printed) and answers 429 past it.
The stand-in runs in its own process (this file with --stand-in). Printed: the rate over the
whole run and while every number was busy, against the limit (numbers x 1/s; target >= 95 %),
the slowest and median number's own rate from its first send to its last, and the 429s
(target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from benchdb import pg_database
from widget_throughput import SECRETS, Proc, free_port, wait_healthy

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
sys.path.insert(0, str(ROOT))

from tests.standins.twilio_api import ACCOUNT_SID, AUTH_TOKEN, TwilioApi  # noqa: E402

PG_URL = os.environ.get("AUTODOCTOR_BENCH_PG_URL",
                        "postgresql://postgres@127.0.0.1:5432/postgres")
OUR_NUMBER = "+15550000000"
VIN = "1HGCM82633A004352"
PROBLEM = "Grinding noise from the front left wheel when braking, worse in the morning"
INTAKE = ["Hi", "1", "Dana", VIN, "84000", PROBLEM, "skip", "1", "agree"]


# --- the bare server (this same file, run with --bare-server PORT) ---------------------------

def run_bare_server(port: int) -> None:
    from aiohttp import web

    async def sms(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(text='<?xml version="1.0" encoding="UTF-8"?><Response />',
                            content_type="text/xml")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/webhooks/twilio/sms", sms)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- inbound -------------------------------------------------------------------------------

def signed_intakes(api: TwilioApi, public_url: str, phones: int, run: int
                   ) -> list[list[tuple[dict[str, str], str]]]:
    """Each phone's intake as (form, signature) pairs, signed for public_url's webhook."""
    url = public_url + "/webhooks/twilio/sms"
    made = []
    for n in range(phones):
        number = f"+1555{run:02d}{n:05d}"
        forms = [api.incoming(number, body, to=OUR_NUMBER) for body in INTAKE]
        made.append([(form, api.sign(url, form)) for form in forms])
    return made


async def drive(http: aiohttp.ClientSession, port: int,
                phones: list[list[tuple[dict[str, str], str]]]) -> tuple[float, int]:
    """Every phone's messages in order, the phones at once: (requests a second, failures)."""
    failures = 0

    async def phone(messages: list[tuple[dict[str, str], str]]) -> None:
        nonlocal failures
        for form, signature in messages:
            async with http.post(f"http://127.0.0.1:{port}/webhooks/twilio/sms", data=form,
                                 headers={"X-Twilio-Signature": signature},
                                 timeout=aiohttp.ClientTimeout(total=30)) as response:
                await response.read()
                failures += response.status != 200

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(phone(m) for m in phones)), 600)
    elapsed = time.perf_counter() - started
    return sum(len(m) for m in phones) / elapsed, failures


def write_config(path: Path, port: int, api_base: str) -> str:
    public_url = f"http://127.0.0.1:{port}"
    text = (ROOT / "config.toml").read_text()
    text = text.replace('public_url = "http://127.0.0.1:8080"', f'public_url = "{public_url}"')
    text = text.replace('[twilio]\napi_base = "https://api.twilio.com"',
                        f'[twilio]\napi_base = "{api_base}"')
    path.write_text(text)
    return public_url


async def inbound(args: argparse.Namespace, tmp: Path, procs: list[Proc]) -> None:
    api = TwilioApi()
    await api.start()
    async with pg_database(PG_URL) as url:
        if url is None:
            return
        port, bare_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in SECRETS}
        public_url = write_config(tmp / "config.toml", port, api.base_url)
        env.update(AUTODOCTOR_DATA_DIR=str(tmp / "data"), AUTODOCTOR_DATABASE_URL=url,
                   AUTODOCTOR_CONFIG=str(tmp / "config.toml"),
                   TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN,
                   TWILIO_FROM_NUMBER=OUR_NUMBER)
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "migrate", cwd=ROOT, env=env)
        if await migrate.wait() != 0:
            raise RuntimeError("migrate failed")
        server = Proc("serve", [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
                      env, tmp / "serve.log")
        bare = Proc("bare", [sys.executable, str(SELF), "--bare-server", str(bare_port)], env,
                    tmp / "bare.log")
        procs += [server, bare]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await wait_healthy(http, server, port)
            await wait_healthy(http, bare, bare_port)
            ours: list[float] = []
            theirs: list[float] = []
            for run in range(args.repeat):
                phones = signed_intakes(api, public_url, args.phones, 2 * run)
                rate, failed = await drive(http, port, phones)
                ours.append(rate)
                phones = signed_intakes(api, f"http://127.0.0.1:{bare_port}", args.phones,
                                        2 * run + 1)
                bare_rate, bare_failed = await drive(http, bare_port, phones)
                theirs.append(bare_rate)
                print(f"  run {run + 1}: ours {rate:7.0f}/s ({failed} failed)   "
                      f"bare {bare_rate:7.0f}/s ({bare_failed} failed)")
        errors = server.log_count("ERROR")
        mid, bare_mid = statistics.median(ours), statistics.median(theirs)
        print(f"inbound on PostgreSQL, {args.phones} phones x {len(INTAKE)} signed webhooks: "
              f"ours {mid:.0f}/s, bare aiohttp {bare_mid:.0f}/s, ratio {mid / bare_mid:.1%}"
              f"{f', {errors} ERROR lines in the server log' if errors else ''}")
    await api.close()


# --- outbound ------------------------------------------------------------------------------

def recipients(numbers: list[str], each: int) -> list[str]:
    """Phone numbers, `each` of them kept on every sending number by the sticky choice."""
    per: dict[str, list[str]] = {n: [] for n in numbers}
    candidate = 0
    while any(len(found) < each for found in per.values()):
        address = f"+1555{candidate:07d}"
        candidate += 1
        sender = numbers[zlib.crc32(address.encode()) % len(numbers)]
        if len(per[sender]) < each:
            per[sender].append(address)
    return [address for found in per.values() for address in found]


async def outbound(args: argparse.Namespace, tmp: Path, procs: list[Proc]) -> None:
    import migrations
    from bot.app import build_runtime
    from bot.flows import route
    from channels.sms import SmsChannel
    from core.config import load_config, with_changes
    from core.db import create_engine
    from core.delivery import OutboxDispatcher
    from core.engine import Engine
    from core.messages import Outbound
    from core.models import Customer, Identity
    from core.outbox import enqueue_many

    # The stand-in runs in its own process, as Twilio is elsewhere: the time it sees a
    # request arrive waits neither on this process's work nor on its interpreter lock.
    port = free_port()
    stand_in = Proc("stand-in", [sys.executable, str(SELF), "--stand-in", str(port),
                                 str(args.limit), str(args.tolerance)], dict(os.environ),
                    tmp / "stand-in.log")
    procs.append(stand_in)
    base_url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(aiohttp.ClientError):
            await _report(base_url)
            break
        await asyncio.sleep(0.1)
    numbers = [f"+1555000{n:04d}" for n in range(args.numbers)]
    async with pg_database(PG_URL) as url:
        if url is None:
            return
        config = load_config(environ={"AUTODOCTOR_SECRET_KEY": "bench",
                                      "AUTODOCTOR_DATABASE_URL": url}, data_dir=tmp)
        config = with_changes(config, twilio={"api_base": base_url},
                              rate_limits={"sms_per_second": 1.0})
        config = replace(config, secrets=replace(
            config.secrets, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
            twilio_from_number=",".join(numbers)))
        engine = create_engine(config.database_url)
        await migrations.upgrade(engine)
        runtime = build_runtime(config, engine)
        channel = SmsChannel(runtime, Engine(runtime, route))
        people = recipients(numbers, 4)
        now = runtime.clock.now()
        async with runtime.transaction() as uow:
            session = uow.session
            identities = []
            for address in people:
                customer = Customer(created_at=now)
                session.add(customer)
                await session.flush()
                identity = Identity(channel="sms", address=address, customer_id=customer.id,
                                    created_at=now)
                session.add(identity)
                identities.append(identity)
            await session.flush()
            per_person = args.per_number // 4
            await enqueue_many(uow, [
                (identity.id, Outbound("sms", identity.address, f"Message {k} to you"))
                for k in range(per_person) for identity in identities], now)
        total = len(people) * per_person
        dispatcher = OutboxDispatcher(runtime, {"sms": channel.sender})
        started = time.monotonic()
        task = asyncio.create_task(dispatcher.run_forever())
        try:
            deadline = time.monotonic() + args.per_number * 3 + 60
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                report = await _report(base_url)
                if len(report["sent"]) >= total:
                    break
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sent = [(m["sender"], m["at"]) for m in report["sent"]]
        first = min(at for _sender, at in sent)
        last = max(at for _sender, at in sent)
        by_number = {n: sorted(at for sender, at in sent if sender == n) for n in numbers}
        rates = [(len(times) - 1) / (times[-1] - times[0]) for times in by_number.values()]
        aggregate = (total - len(numbers)) / (last - first) if last > first else float("nan")
        limit = float(len(numbers))
        too_many = sum(code == 20429 for code in report["rejected"])
        # While every number had messages to send: from the last number's first send to the
        # first number's last send (a number's first and last ones wait on the outbox's
        # claims, one head of a chat at a time).
        busy_from = max(times[0] for times in by_number.values())
        busy_to = min(times[-1] for times in by_number.values())
        busy = sum(busy_from <= at <= busy_to for _sender, at in sent)
        steady = (busy - 1) / (busy_to - busy_from) if busy_to > busy_from else float("nan")
        gaps = sorted(b - a for times in by_number.values()
                      for a, b in itertools.pairwise(times))
        print(f"  arrival gaps per number: min {gaps[0]:.3f}s, 1st percentile "
              f"{gaps[len(gaps) // 100]:.3f}s, median {statistics.median(gaps):.3f}s")
        print(f"outbound: {total} messages from {len(numbers)} numbers at 1 segment/s each "
              f"in {time.monotonic() - started:.1f}s; aggregate {aggregate:.2f}/s of "
              f"{limit:.0f}/s "
              f"({aggregate / limit:.1%}); per number slowest {min(rates):.3f}/s, median "
              f"{statistics.median(rates):.3f}/s; 429s provoked: {too_many}")
        print(f"  while all {len(numbers)} numbers were busy ({busy_to - busy_from:.1f}s): "
              f"{steady:.2f}/s ({steady / limit:.1%} of the limit)")
        await channel.stop()
        await engine.dispose()


async def _report(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{base_url}/stand-in/sent.json") as response:
        return dict(await response.json())


def run_stand_in(port: int, limit: float, tolerance: float) -> None:
    async def serve() -> None:
        api = TwilioApi(per_number_per_second=limit, tolerance=tolerance)
        await api.start(port)
        await asyncio.Event().wait()

    asyncio.run(serve())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--numbers", type=int, default=50)
    parser.add_argument("--per-number", type=int, default=40)
    parser.add_argument("--skip-inbound", action="store_true")
    parser.add_argument("--limit", type=float, default=1.0,
                        help="the stand-in's segments a second per number")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="seconds of arrival jitter the stand-in allows (default 0.02)")
    parser.add_argument("--skip-outbound", action="store_true")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stand-in", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            if not args.skip_inbound:
                await inbound(args, Path(folder), procs)
            if not args.skip_outbound:
                out = Path(folder) / "outbound"
                out.mkdir()
                await outbound(args, out, procs)
        finally:
            for proc in procs:
                proc.stop()


if __name__ == "__main__":
    if "--bare-server" in sys.argv:
        run_bare_server(int(sys.argv[sys.argv.index("--bare-server") + 1]))
    elif "--stand-in" in sys.argv:
        at = sys.argv.index("--stand-in")
        run_stand_in(int(sys.argv[at + 1]), float(sys.argv[at + 2]), float(sys.argv[at + 3]))
    else:
        asyncio.run(main())
