"""The `autodoctor` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError

from core.config import Config, load_config
from core.db import create_engine
from core.errors import CoreError

log = logging.getLogger("autodoctor.cli")


def _configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("aiohttp.access", "sqlalchemy.engine", "alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def _migrate(config: Config) -> str | None:
    import migrations

    engine = create_engine(config.database_url)
    try:
        await migrations.upgrade(engine)
        return await migrations.current(engine)
    finally:
        await engine.dispose()


async def _schema_revision(config: Config) -> tuple[str | None, str | None]:
    from alembic.script import ScriptDirectory

    import migrations

    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    engine = create_engine(config.database_url)
    try:
        return await migrations.current(engine), head
    finally:
        await engine.dispose()


def _unreachable(config: Config, exc: Exception) -> int:
    """One line, not a traceback, when the database cannot be reached at start."""
    from sqlalchemy import make_url

    where = make_url(config.database_url).render_as_string(hide_password=True)
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
    print(f"error: cannot reach the database at {where} ({reason}); is it running? Set "
          "AUTODOCTOR_DATABASE_URL or [database] url", file=sys.stderr)
    return 2


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    try:
        revision = asyncio.run(_migrate(config))
    except (OSError, DBAPIError) as exc:
        return _unreachable(config, exc)
    print(f"database at revision {revision}")
    return 0


# Young objects are collected after 5,000 allocations instead of CPython's 700 (one message
# allocates thousands); not much later, or each collection of the middle generation, full of a
# burst's garbage, pauses replies (see bench/README.md).
GC_THRESHOLDS = (5_000, 10, 10)


def settle_heap() -> int:
    """What is loaded at start (modules, the app, compiled statements and templates) lives as
    long as the process: frozen out of the cyclic collector's way, so a full collection under
    load scans only what requests made, not the whole heap (a pause of tens of ms, in the
    middle of someone's reply, otherwise)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_freeze_count()


def _port_taken(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on, or None if it can (checked before start-up, so
    a taken port is one line, not a traceback after the start-up log)."""
    import socket

    try:
        with socket.create_server((host, port), reuse_port=False):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from bot.app import create_app
    from bot.drain import serve

    try:
        current, head = asyncio.run(_schema_revision(config))
    except (OSError, DBAPIError) as exc:
        return _unreachable(config, exc)
    if current != head:
        print(f"error: the database is at revision {current}, the code needs {head}; "
              "run `autodoctor migrate` first", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port or config.server.port
    config = config.served_at(host, port)
    taken = _port_taken(host, port)
    if taken is not None:
        print(f"error: cannot listen on {host}:{port} ({taken}); is another service using "
              "it? Try `serve --port N`", file=sys.stderr)
        return 2
    app = create_app(config)
    log.info("start-up heap settled: %s objects frozen", settle_heap())
    log.info("serving on http://%s:%s", host, port)
    try:
        # SIGTERM or Ctrl-C: drain (bot/drain.py), then stop.
        asyncio.run(serve(app, host, port))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port} ({exc.strerror or exc}); is another "
              "service using it? Try `serve --port N`", file=sys.stderr)
        return 2
    log.info("stopped")
    return 0


def cmd_console(args: argparse.Namespace, config: Config) -> int:
    from bot.console import run_console

    # The terminal is the chat: the service's own log lines stay out of it (warnings only).
    logging.getLogger().setLevel(logging.WARNING)
    asyncio.run(run_console(config, args.as_name or getpass.getuser()))
    return 0


async def _invite(config: Config, args: argparse.Namespace) -> dict[str, object]:
    import dataclasses

    from core.mechanics import invite_mechanic

    engine, runtime = _runtime(config)
    try:
        async with runtime.sessions.begin() as session:
            invitation = await invite_mechanic(session, config, args.name, runtime.clock.now(),
                                               senior=args.senior, phone=args.phone)
    finally:
        await engine.dispose()
    return dataclasses.asdict(invitation)


def cmd_mechanic_invite(args: argparse.Namespace, config: Config) -> int:
    import json

    if args.phone and not re.fullmatch(r"\+[1-9]\d{6,14}", args.phone):
        print("error: --phone must be in E.164 form, e.g. +15551234567", file=sys.stderr)
        return 2
    info = asyncio.run(_invite(config, args))
    if args.json:
        print(json.dumps(info))
    else:
        print(f"Invited {args.name} (mechanic {info['mechanic_id']}). Send them one of:\n"
              f"  Telegram: {info['telegram_link']}\n"
              f"  SMS:      text \"{info['sms_join']}\" to the service number\n"
              f"  Web:      {info['web_link']}\n"
              f"The invite works once, until {info['expires_at']} UTC.")
    return 0


def _runtime(config: Config) -> tuple[Any, Any]:
    from bot.app import build_runtime

    engine = create_engine(config.database_url,
                           busy_timeout_ms=config.database.sqlite_busy_timeout_ms)
    return engine, build_runtime(config, engine)


def cmd_sweep(args: argparse.Namespace, config: Config) -> int:
    import dataclasses
    import json

    from core.sweeps import run_sweeps

    async def run() -> dict[str, int]:
        engine, runtime = _runtime(config)
        try:
            return dataclasses.asdict(await run_sweeps(runtime))
        finally:
            await engine.dispose()

    stats = asyncio.run(run())
    print(json.dumps(stats) if args.json else
          " ".join(f"{name}={count}" for name, count in stats.items()))
    return 0


def cmd_request_assign(args: argparse.Namespace, config: Config) -> int:
    from core.dispatch import Outcome, assign

    ref = args.ref.strip().upper()

    async def run() -> tuple[Outcome, str | None]:
        engine, runtime = _runtime(config)
        try:
            async with runtime.transaction() as uow:
                result = await assign(uow, runtime, ref, args.mechanic,
                                      f"cli:{getpass.getuser()}", runtime.clock.now())
                missing = None
                if result.outcome is Outcome.NOT_FOUND:
                    missing = await _missing_for_assign(uow.session, ref, args.mechanic)
            return result.outcome, missing
        finally:
            await engine.dispose()

    outcome, missing = asyncio.run(run())
    messages = {
        Outcome.ACCEPTED: f"{ref} assigned to mechanic {args.mechanic}; both told",
        Outcome.ALREADY_YOURS: f"{ref} is already with mechanic {args.mechanic}",
        Outcome.TAKEN: f"{ref} was already accepted by another mechanic",
        Outcome.CLOSED: f"{ref} is closed (expired, cancelled or completed)",
        Outcome.BUSY: f"mechanic {args.mechanic} already holds a request or session",
        Outcome.NOT_FOUND: f"error: {missing}; nothing was changed",
    }
    ok = outcome in (Outcome.ACCEPTED, Outcome.ALREADY_YOURS)
    print(messages.get(outcome, outcome.value), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


async def _missing_for_assign(session: Any, ref: str, mechanic_id: int) -> str:
    """Which of the two `request assign` names was not found: the request, the mechanic, or
    both (a mechanic who exists but is deactivated says so)."""
    from sqlalchemy import select

    from core.models import Mechanic, SessionRequest

    problems = []
    if await session.scalar(select(SessionRequest.id).where(SessionRequest.ref == ref)) is None:
        problems.append(f"no request {ref}")
    mechanic = await session.get(Mechanic, mechanic_id)
    if mechanic is None:
        problems.append(f"no mechanic {mechanic_id}")
    elif not mechanic.is_active:
        problems.append(f"mechanic {mechanic_id} is deactivated")
    return " and ".join(problems) or f"no request {ref} for mechanic {mechanic_id}"


def cmd_session_observe(args: argparse.Namespace, config: Config) -> int:
    import json

    from core.video import observer_link

    async def run() -> dict[str, object]:
        engine, runtime = _runtime(config)
        try:
            async with runtime.readers() as session:
                link = await observer_link(session, config, args.ref.upper(),
                                           runtime.clock.now())
        finally:
            await engine.dispose()
        return {"ref": link.ref, "consultation_id": link.consultation_id, "room": link.room,
                "observe_link": link.url, "expires_at": link.expires_at.isoformat()}

    found = asyncio.run(run())
    if args.json:
        print(json.dumps(found))
    else:
        print(f"Watch {found['ref']} (hidden, subscribe-only): {found['observe_link']}\n"
              f"The link works until {found['expires_at']} or the session's end.")
    return 0


def cmd_ledger(args: argparse.Namespace, config: Config) -> int:
    import json

    from billing.ledger import reconcile

    async def run() -> dict[str, Any]:
        engine, runtime = _runtime(config)
        try:
            async with runtime.readers() as session:
                return (await reconcile(session, config.billing.fee_bps)).to_dict()
        finally:
            await engine.dispose()

    ledger = asyncio.run(run())
    if args.json:
        print(json.dumps(ledger))
    else:
        for key, value in ledger.items():
            if key.endswith("_cents"):
                print(f"{key[:-6]:<24} {value / 100:>12,.2f}")
        print(f"{'checkouts':<24} {ledger['checkouts']:>12}")
        print("balanced" if ledger["balanced"] else "NOT BALANCED")
        for problem in ledger["problems"]:
            print(f"  {problem}")
    return 0 if ledger["balanced"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autodoctor", description=__doc__)
    parser.add_argument("--config", help="config file (default: AUTODOCTOR_CONFIG or config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database to the latest schema")
    migrate.set_defaults(func=cmd_migrate)

    mechanic = sub.add_parser("mechanic", help="manage mechanics")
    mechanic_sub = mechanic.add_subparsers(dest="mechanic_command", required=True)
    invite = mechanic_sub.add_parser("invite", help="create a mechanic and a single-use invite")
    invite.add_argument("name")
    invite.add_argument("--senior", action="store_true", help="may take Full Diagnostic")
    invite.add_argument("--phone", help="their mobile number, E.164")
    invite.add_argument("--json", action="store_true", help="print JSON")
    invite.set_defaults(func=cmd_mechanic_invite)

    sweep = sub.add_parser("sweep", help="run the timeouts once (unattended, expiry, no-show)")
    sweep.add_argument("--json", action="store_true", help="print JSON")
    sweep.set_defaults(func=cmd_sweep)

    request = sub.add_parser("request", help="manage session requests")
    request_sub = request.add_subparsers(dest="request_command", required=True)
    assign = request_sub.add_parser("assign", help="give an unattended request to a mechanic")
    assign.add_argument("ref", help="the request reference, e.g. R-4821")
    assign.add_argument("mechanic", type=int, help="the mechanic's id")
    assign.set_defaults(func=cmd_request_assign)

    session = sub.add_parser("session", help="sessions under way")
    session_sub = session.add_subparsers(dest="session_command", required=True)
    observe = session_sub.add_parser(
        "observe", help="print a link to watch a session's video room, hidden")
    observe.add_argument("ref", help="the request reference, e.g. R-4821")
    observe.add_argument("--json", action="store_true", help="print JSON")
    observe.set_defaults(func=cmd_session_observe)

    ledger = sub.add_parser("ledger", help="reconcile charges, refunds, payouts and fees")
    ledger.add_argument("--json", action="store_true", help="print JSON")
    ledger.set_defaults(func=cmd_ledger)

    from bot.admin_commands import add_commands

    add_commands(sub)

    console = sub.add_parser("console", help="chat with the bot in the terminal as a customer")
    console.add_argument("--as", dest="as_name",
                         help="who you are (default: your login); the conversation is kept")
    console.set_defaults(func=cmd_console)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func: Callable[[argparse.Namespace, Config], int] = args.func
    try:
        config = load_config(args.config)
        return func(args, config)
    except CoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
