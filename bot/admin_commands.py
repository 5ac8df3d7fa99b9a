"""`autodoctor admin create EMAIL` and `autodoctor export intakes|sessions` (the admin site's
CSV, printed)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from core.config import Config
from core.db import create_engine


def _runtime(config: Config) -> tuple[Any, Any]:
    from bot.app import build_runtime

    engine = create_engine(config.database_url,
                           busy_timeout_ms=config.database.sqlite_busy_timeout_ms)
    return engine, build_runtime(config, engine)


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        print("error: the two passwords differ; nothing was changed", file=sys.stderr)
        return None
    return first


def cmd_admin_create(args: argparse.Namespace, config: Config) -> int:
    from admin_web.accounts import AccountError, create_admin

    password = _read_password(args.password_stdin)
    if password is None:
        return 1

    async def run() -> int:
        engine, runtime = _runtime(config)
        try:
            async with runtime.transaction() as uow:
                admin = await create_admin(uow.session, args.email, password,
                                           runtime.clock.now())
            return int(admin.id)
        finally:
            await engine.dispose()

    try:
        admin_id = asyncio.run(run())
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Admin {args.email.strip().lower()} created (id {admin_id}). Log in at "
          f"{config.public_url.rstrip('/')}/admin/login")
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from admin_web import csv_export
    from admin_web.intakes import IntakeFilter, intake_rows
    from admin_web.sessions import SessionFilter, session_rows

    query = {key: value for key, value in (("status", args.status), ("tier", args.tier),
                                           ("since", args.since), ("until", args.until),
                                           ("q", args.q)) if value}
    plans = list(config.plans)

    async def run() -> str:
        engine, runtime = _runtime(config)
        try:
            async with runtime.readers() as session:
                if args.what == "intakes":
                    return csv_export.intakes_csv(await intake_rows(
                        session, IntakeFilter.from_query(query, plans), limit=None))
                return csv_export.sessions_csv(await session_rows(
                    session, SessionFilter.from_query(query, plans), limit=None))
        finally:
            await engine.dispose()

    sys.stdout.write(asyncio.run(run()))
    return 0


def add_commands(sub: Any) -> None:
    """The `admin` and `export` commands, on the CLI's subparsers."""
    admin = sub.add_parser("admin", help="manage admin accounts")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser("create", help="make an admin who logs in to /admin")
    create.add_argument("email")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input "
                             "(otherwise it is asked for twice)")
    create.set_defaults(func=cmd_admin_create)

    export = sub.add_parser("export", help="print intakes or sessions as CSV (as the admin "
                                           "site's download)")
    export.add_argument("what", choices=("intakes", "sessions"))
    export.add_argument("--status", help="only this status")
    export.add_argument("--tier", help="only this tier (plan code)")
    export.add_argument("--since", help="from this day, YYYY-MM-DD (UTC)")
    export.add_argument("--until", help="to this day, YYYY-MM-DD (UTC), inclusive")
    export.add_argument("--q", help="intakes: search VIN, vehicle, problem, customer")
    export.set_defaults(func=cmd_export)
