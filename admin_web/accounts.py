"""Admin accounts: argon2 password hashes, the login check with its lockout, the audit log."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import AdminConfig
from core.errors import CoreError
from core.models import Admin, AdminLogin, AuditLog

log = logging.getLogger("autodoctor.admin")

MIN_PASSWORD_CHARS = 10


class AccountError(CoreError):
    """An admin account could not be made; the message says what to change."""


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@cache
def _decoy_hash() -> str:
    # Checked against when nobody has the email, so an unknown email takes as long to refuse.
    return _hasher().hash("no admin has this password")


def normal_email(email: str) -> str:
    return email.strip().lower()[:320]


def actor(admin: Admin) -> str:
    """How the audit log names an admin."""
    return f"admin:{admin.id}"


def audit(session: AsyncSession, who: str, action: str, subject: str | None, now: datetime,
          **details: Any) -> None:
    """One audit-log row, written with the transaction's other changes."""
    session.add(AuditLog(actor=who[:64], action=action[:64],
                         subject=subject[:64] if subject else None, details=details,
                         created_at=now))


async def create_admin(session: AsyncSession, email: str, password: str,
                       now: datetime) -> Admin:
    """A new admin who logs in with this email and password."""
    email = normal_email(email)
    if "@" not in email or email.startswith("@") or email.endswith("@") or " " in email:
        raise AccountError(f"{email!r} is not an email address")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_CHARS} characters")
    if await session.scalar(select(Admin.id).where(Admin.email == email)) is not None:
        raise AccountError(f"an admin with the email {email} already exists")
    password_hash = await asyncio.to_thread(_hasher().hash, password)
    admin = Admin(email=email, password_hash=password_hash, is_active=True, created_at=now)
    session.add(admin)
    await session.flush()
    audit(session, "cli", "admin_create", email, now, admin_id=admin.id)
    log.info("admin=%s created", admin.id)
    return admin


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class LoginResult:
    admin: Admin | None
    locked_until: datetime | None = None
    # Failures left before the lockout (for the page), when it failed.
    left: int | None = None


def locked_until(failures: list[datetime], max_failures: int,
                 window: timedelta) -> datetime | None:
    """The end of the latest lock in these failures (oldest first): `max_failures` of them
    within `window` lock for `window` from the last of them; what fails meanwhile (refused
    unchecked) does not count, nor extend it."""
    until: datetime | None = None
    recent: deque[datetime] = deque()
    for at in failures:
        if until is not None and at < until:
            continue
        recent.append(at)
        while at - recent[0] >= window:
            recent.popleft()
        if len(recent) >= max_failures:
            until, recent = at + window, deque()
    return until


async def _failures(session: AsyncSession, column: Any, value: str,
                    since: datetime) -> list[datetime]:
    """Failed tries of one email or address since `since` and since its last success."""
    last_ok = await session.scalar(select(func.max(AdminLogin.created_at)).where(
        column == value, AdminLogin.succeeded, AdminLogin.created_at >= since))
    start = max(since, last_ok) if last_ok is not None else since
    return list((await session.scalars(select(AdminLogin.created_at).where(
        column == value, AdminLogin.succeeded.is_(False), AdminLogin.failure != "locked",
        AdminLogin.created_at > start).order_by(AdminLogin.created_at))).all())


async def lock_state(session: AsyncSession, settings: AdminConfig, email: str, address: str,
                     now: datetime) -> tuple[datetime | None, int]:
    """Until when this email or address is locked (None: not), and how many failures are
    left before it is."""
    window = timedelta(minutes=settings.lockout_minutes)
    left = settings.login_max_failures
    latest: datetime | None = None
    for column, value in ((AdminLogin.email, email), (AdminLogin.address, address)):
        failures = await _failures(session, column, value, now - 2 * window)
        until = locked_until(failures, settings.login_max_failures, window)
        if until is not None and until > now:
            latest = max(latest, until) if latest is not None else until
            continue
        counted = [at for at in failures if (until is None or at >= until)
                   and now - at < window]
        left = min(left, settings.login_max_failures - len(counted))
    return latest, max(left, 0)


async def log_in(session: AsyncSession, settings: AdminConfig, email: str, password: str,
                 address: str, now: datetime) -> LoginResult:
    """Check one login attempt; every attempt is recorded (and audit-logged) with its result."""
    email = normal_email(email)
    address = address[:64]
    until, left = await lock_state(session, settings, email, address, now)
    if until is not None:
        _record(session, email, address, now, failure="locked")
        log.warning("admin login refused: locked email=%s address=%s until=%s", email,
                    address, until.isoformat())
        return LoginResult(None, locked_until=until)
    admin = await session.scalar(select(Admin).where(Admin.email == email))
    ok = await asyncio.to_thread(
        _verify, admin.password_hash if admin is not None else _decoy_hash(), password[:1024])
    if admin is None or not ok or not admin.is_active:
        failure = "inactive" if admin is not None and ok else "password"
        _record(session, email, address, now, failure=failure)
        log.warning("admin login failed email=%s address=%s reason=%s", email, address,
                    failure)
        left -= 1
        if left <= 0:
            until, _left = await lock_state(session, settings, email, address, now)
            return LoginResult(None, locked_until=until)
        return LoginResult(None, left=left)
    if _hasher().check_needs_rehash(admin.password_hash):
        admin.password_hash = await asyncio.to_thread(_hasher().hash, password)
    admin.last_login_at = now
    _record(session, email, address, now, admin=admin)
    log.info("admin=%s logged in address=%s", admin.id, address)
    return LoginResult(admin)


def _record(session: AsyncSession, email: str, address: str, now: datetime, *,
            failure: str | None = None, admin: Admin | None = None) -> None:
    session.add(AdminLogin(email=email, address=address, succeeded=failure is None,
                           failure=failure, created_at=now))
    if admin is not None:
        audit(session, actor(admin), "login", email, now, address=address)
    else:
        audit(session, f"login:{email}", "login_failed", email, now, address=address,
              reason=failure)


async def log_out(session: AsyncSession, admin: Admin, now: datetime) -> None:
    """Every session cookie of this admin stops working (the epoch moves on)."""
    await session.execute(update(Admin).where(Admin.id == admin.id).values(
        session_epoch=Admin.session_epoch + 1))
    audit(session, actor(admin), "logout", admin.email, now)
    log.info("admin=%s logged out", admin.id)
