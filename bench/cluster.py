"""Several processes behind nginx: the widget load through the shipped proxy to 1 and then 2
`serve` processes, and the offer fan-out to N mechanics from 2 processes, on PostgreSQL.

One run, one throwaway database bench_<random> (as bench/benchdb.py makes it):

1. widget: nginx with deploy/nginx/autodoctor.conf (as tests/deploy/test_nginx_front.py runs
   it) in front of 1, then 2 `serve` processes; --clients customers run whole intakes at
   saturation (bench/widget_throughput.py's load), then once at a person's pace (--pace):
   msg/s and p99 reply latency for each, and the CPU each process used;
2. fan-out: 2 `serve` processes with Telegram, against bench/fanout.py's Bot API stand-in
   (30 msg/s per bot, 1 msg/s per chat, 429 + retry_after past either); N mechanics linked,
   one paid request offered to all from this process: seconds from the offer's commit to the
   stand-in accepting the last offer, against the floor N/30, and the 429s provoked (target 0);
3. the load average, the CPU count and each process's CPU share of the phases.

    .venv/bin/python bench/cluster.py [--clients 100] [--messages 9000] [--mechanics 1000]
        [--pace 1] [--skip-widget] [--skip-fanout]

PostgreSQL comes from AUTODOCTOR_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/
postgres). nginx from PATH or /usr/sbin/nginx. All traffic stays on 127.0.0.1.
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
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from benchdb import cpu_seconds, pg_database, postgres_seconds
from fanout import TOKEN, BotApiStandIn, seed
from widget_throughput import (
    INTAKE,
    PG_URL,
    ROOT,
    Proc,
    bench_config,
    commit_probe,
    free_port,
    load,
    percentile_ms,
    raise_nofile,
    service_env,
    wait_healthy,
)

SHIPPED = ROOT / "deploy" / "nginx" / "autodoctor.conf"


class StandIn(BotApiStandIn):
    """fanout.py's stand-in, also answering what a `serve` process asks at start (getMe,
    setWebhook), which are not messages and count against no limit."""

    async def _method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method == "getMe":
            return web.json_response({"ok": True, "result": {
                "id": 123456789, "is_bot": True, "first_name": "Bench",
                "username": "AutoDoctorBot"}})
        if method in ("setWebhook", "deleteWebhook"):
            return web.json_response({"ok": True, "result": True})
        return await super()._method(request)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                     else None)


def front_config(listen: int, ports: list[int], tmp: Path) -> str:
    """The test's nginx main file (tests/deploy/test_nginx_front.py); with one process, both
    upstream lines name it."""
    sys.path.insert(0, str(ROOT))
    from tests.deploy.test_nginx_front import front_config as shipped_front

    return shipped_front(SHIPPED.read_text(), listen, (ports * 2)[:2], tmp)


def cluster_config(tmp: Path, public_url: str, api_base: str | None, wave: int) -> Path:
    """bench_config's file behind the proxy: X-Forwarded-For trusted from 127.0.0.1, the
    per-visitor message limit lifted, links on nginx's address, Telegram (webhook mode, so no
    polling) on the stand-in, and (wave > 0) one offer wave of `wave` mechanics."""
    path = bench_config(tmp)
    text = path.read_text(encoding="utf-8")
    edits = [(r"^trusted_proxies = \[\]$", 'trusted_proxies = ["127.0.0.1"]'),
             (r"^widget_messages_per_minute = \d+$", "widget_messages_per_minute = 100000"),
             (r'^# public_url = ".*"$', f'public_url = "{public_url}"')]
    if api_base:
        edits += [(r'^mode = "polling"$', 'mode = "webhook"'),
                  (r'^api_base = "https://api\.telegram\.org"$', f'api_base = "{api_base}"')]
    for pattern, line in edits:
        text, found = re.subn(pattern, line, text, count=1, flags=re.M)
        if found != 1:
            raise RuntimeError(f"config.toml: no line {pattern!r} to change for the bench")
    # One wave of everyone, and a wave long enough for Telegram's budget to hold it (30/s,
    # two messages an offer): the fan-out measures the senders; bench/waves.py the waves.
    if wave:
        text = re.sub(r"^wave_size = \d+$", f"wave_size = {wave}", text, flags=re.M)
        text = re.sub(r"^wave_seconds = \d+$", f"wave_seconds = {max(10, -(-wave * 2 // 30))}",
                      text, flags=re.M)
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Cluster:
    """nginx in front of `serve` processes, all children of this one."""

    url: str
    servers: list[Proc]
    nginx: Proc

    def stop(self) -> None:
        for proc in [self.nginx, *self.servers]:
            proc.stop()


async def start_cluster(http: aiohttp.ClientSession, count: int, env: dict[str, str],
                        tmp: Path, label: str, nginx: str) -> Cluster:
    listen, ports = free_port(), [free_port() for _ in range(count)]
    servers: list[Proc] = []
    proxy: Proc | None = None
    try:
        for n, port in enumerate(ports):
            servers.append(Proc(f"serve {n}", [sys.executable, "-m", "bot.cli", "serve",
                                               "--port", str(port)], env,
                                tmp / f"{label}-serve{n}.log"))
        for proc, port in zip(servers, ports, strict=True):
            await wait_healthy(http, proc, port)
        conf = tmp / f"{label}-nginx.conf"
        conf.write_text(front_config(listen, ports, tmp))
        proxy = Proc("nginx", [nginx, "-c", str(conf), "-g", "daemon off;"], env,
                     tmp / f"{label}-nginx.out")
        await wait_healthy(http, proxy, listen)
    except BaseException:
        for proc in [*servers, *([proxy] if proxy else [])]:
            proc.stop()
        raise
    return Cluster(f"http://127.0.0.1:{listen}", servers, proxy)


class CpuMeter:
    """CPU seconds of the serve processes, nginx (master and workers), PostgreSQL and this
    process over a block, and the seconds the serve processes waited for a free core."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def _nginx(self) -> float:
        master = self.cluster.nginx.popen.pid
        total = cpu_seconds(master)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == master:
                total += cpu_seconds(int(pid))
        return total

    def read(self) -> dict[str, float]:
        out = {f"serve {n}": p.cpu_seconds() for n, p in enumerate(self.cluster.servers)}
        out |= {f"serve {n} waiting for a core": p.queued_seconds() or 0.0
                for n, p in enumerate(self.cluster.servers)}
        out |= {"nginx": self._nginx(), "postgres": postgres_seconds(),
                "bench": time.process_time(), "wall": time.perf_counter()}
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        out["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        return out

    def __enter__(self) -> CpuMeter:
        self.start = self.read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self.read()
        self.used = {k: end[k] - self.start[k] for k in end}

    def line(self) -> str:
        wall = self.used["wall"] or 1.0
        ours = {k: v for k, v in self.used.items() if k not in ("wall", "machine")}
        parts = [f"{k} {v / wall:.0%}" for k, v in ours.items()]
        busy = sum(v for k, v in ours.items() if "waiting" not in k)
        return (f"share of one core: {', '.join(parts)}; these {busy / wall:.2f} cores, the "
                f"whole machine {self.used['machine'] / wall:.2f} of {os.cpu_count()}")


async def widget_phase(http: aiohttp.ClientSession, count: int, env: dict[str, str],
                       tmp: Path, args: argparse.Namespace, nginx: str) -> str:
    cluster = await start_cluster(http, count, env, tmp, f"widget{count}", nginx)
    url = cluster.url.replace("http", "ws", 1) + "/ws/widget"
    try:
        await asyncio.sleep(1)
        with CpuMeter(cluster) as meter:
            sat = await load(http, url, cluster.servers[0], args.clients, 0.0, False,
                             args.intakes)
        paced, commits = None, []
        if args.pace:  # with widget_throughput's bare one-row commit beside it, as yardstick
            async with commit_probe(env["AUTODOCTOR_DATABASE_URL"], commits):
                paced = await load(http, url, cluster.servers[0], args.clients, args.pace,
                                   False)
    finally:
        cluster.stop()
    failures = sat.failures + (paced.failures if paced else [])
    errors = sum(p.log_count(" ERROR ") for p in cluster.servers)
    line = (f"widget through nginx, {count} process{'es' if count > 1 else ''}: "
            f"{sat.rate:.0f} msg/s (p50 {sat.pct(0.5):.0f} ms, p99 {sat.pct(0.99):.0f} ms "
            f"closed loop, {args.clients} clients x {args.intakes} intakes)")
    if paced:
        line += (f"; paced {args.pace:g} s: p99 {paced.pct(0.99):.0f} ms (a bare one-row "
                 f"commit meanwhile: p99 {percentile_ms(commits, 0.99):.0f} ms, max "
                 f"{percentile_ms(commits, 1.0):.0f} ms)")
    line += f"\n  {meter.line()}"
    if failures or errors:
        line += (f"\n  {len(failures)} failed intakes{': ' + failures[0] if failures else ''}"
                 f"; {errors} ERROR lines in the serve logs")
    return line


async def fanout_phase(http: aiohttp.ClientSession, env: dict[str, str], tmp: Path,
                       database_url: str, args: argparse.Namespace, nginx: str) -> str:
    from bot.app import build_runtime
    from core import dispatch
    from core.clock import SystemClock
    from core.config import load_config
    from core.db import create_engine
    from core.models import SessionRequest

    n = args.mechanics
    standin = StandIn(30, 1)
    base = standin.start()
    public = f"http://127.0.0.1:{free_port()}"  # links only; the cluster listens elsewhere
    config_path = cluster_config(tmp, public, base, max(1000, n))
    env = env | {"AUTODOCTOR_CONFIG": str(config_path), "TELEGRAM_BOT_TOKEN": TOKEN}
    config = load_config(config_path, env)
    engine = create_engine(database_url)
    cluster: Cluster | None = None
    try:
        runtime = build_runtime(config, engine, clock=SystemClock())
        request = await seed(runtime, n)
        cluster = await start_cluster(http, 2, env, tmp, "fanout", nginx)
        await asyncio.sleep(2)  # both dispatchers idle
        before_429 = standin.rejected
        with CpuMeter(cluster) as meter:
            async with runtime.transaction() as uow:
                fresh = await uow.session.get(SessionRequest, request.id)
                assert fresh is not None
                offered = await dispatch.offer_request(uow, runtime, fresh, datetime.now(UTC))
            committed = time.monotonic()
            deadline = committed + n / 30 * 3 + 60
            marker = f"New request {request.ref}"
            while time.monotonic() < deadline:
                delivered, first, last = standin.offers_delivered(marker)
                if delivered >= n:
                    break
                await asyncio.sleep(0.05)
    finally:
        if cluster is not None:
            cluster.stop()
        standin.stop()
        await engine.dispose()
    floor = n / 30
    provoked = standin.rejected - before_429
    head, wait = f"fanout {n} mechanics, 2 processes: ", ""
    if delivered >= n and last is not None:
        elapsed = last - committed
        head += f"{elapsed:.1f} s (floor {floor:.1f} s, ratio {elapsed / floor:.2f})"
        wait = f"first offer {first - committed:.1f} s after the commit; " if first else ""
    else:
        head += f"only {delivered}/{n} offers accepted in {deadline - committed:.0f} s"
    head += (f", 429s: {provoked} ({standin.too_many_bot} bot, {standin.too_many_chat} chat)"
             f"\n  offered {offered}; {wait}{meter.line()}")
    return head


def loadavg() -> str:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average {one} {five} {fifteen}, {os.cpu_count()} CPUs"


async def main_async(args: argparse.Namespace) -> int:
    nginx = nginx_binary()
    if nginx is None:
        print("nginx is not installed (apt-get install nginx-light)")
        return 1
    print(f"before: {loadavg()}")
    lines: list[str] = []
    async with pg_database(args.pg_url) as url:
        if url is None:
            return 1
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as name:
            tmp = Path(name)
            env = service_env("postgresql", url, tmp)
            env["AUTODOCTOR_CONFIG"] = str(cluster_config(tmp, "http://127.0.0.1", None, 0))
            migrate = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "bot.cli", "migrate"], cwd=ROOT, env=env,
                capture_output=True, text=True, timeout=120)
            if migrate.returncode != 0:
                print(f"migrate failed:\n{migrate.stderr[-2000:]}")
                return 1
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                if not args.skip_widget:
                    for count in (1, 2):
                        lines.append(await widget_phase(http, count, env, tmp, args, nginx))
                        print(lines[-1], flush=True)
                if not args.skip_fanout:
                    lines.append(await fanout_phase(http, env, tmp, url, args, nginx))
                    print(lines[-1], flush=True)
    print(f"after: {loadavg()}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="widget customers (100)")
    parser.add_argument("--messages", type=int, default=9000,
                        help="client frames per saturation run, about: each client runs "
                             "messages / clients / 9 whole intakes, at least one (9000)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="mean seconds between messages in the paced run (1; 0: none)")
    parser.add_argument("--mechanics", type=int, default=1000)
    parser.add_argument("--skip-widget", action="store_true")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    args = parser.parse_args()
    if args.clients < 1 or args.mechanics < 1:
        parser.error("--clients and --mechanics take at least 1")
    args.intakes = max(1, round(args.messages / args.clients / len(INTAKE)))
    raise_nofile(4 * args.clients + 1024)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
