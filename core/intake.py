"""Intake domain operations: start, attach files, parse answers, cancel before payment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Checkout, File, Intake, table
from core.store.records import IdentityRow, IntakeRecord
from core.store.uow import UnitOfWork

# A problem told in a few clear words ("Battery dies overnight") is enough to start with; a
# single word ("brakes") or a vague pair ("car broken") is asked about.
MIN_PROBLEM_WORDS = 2
MIN_PROBLEM_LETTERS = 10


@dataclass(frozen=True)
class AttachResult:
    attached: int
    refused: int
    total: int


async def start_intake(uow: UnitOfWork, customer_id: int, channel: str,
                       now: datetime) -> IntakeRecord:
    """A new draft intake, written with the unit of work."""
    return uow.add(IntakeRecord(
        id=await uow.new_id(table(Intake)), customer_id=customer_id, channel=channel,
        status="draft", plan=None, vin=None, vehicle_year=None, vehicle_make=None,
        vehicle_model=None, odometer=None, odometer_unit=None, problem=None, created_at=now,
        updated_at=now, submitted_at=None))


async def count_files(session: AsyncSession, intake: IntakeRecord) -> int:
    # attach_files flushes what it attached, and nothing else pending changes the count.
    with session.no_autoflush:
        return int(await session.scalar(
            select(func.count()).select_from(File).where(File.intake_id == intake.id)) or 0)


async def attach_files(session: AsyncSession, intake: IntakeRecord, identity: IdentityRow,
                       public_ids: list[str] | tuple[str, ...], limit: int) -> AttachResult:
    """Attach uploads to the intake; only files this identity uploaded and not yet attached."""
    total = await count_files(session, intake)
    attached = refused = 0
    for public_id in dict.fromkeys(public_ids):
        record = await session.scalar(select(File).where(File.public_id == public_id))
        if (record is None or record.uploaded_by_identity_id != identity.id
                or record.intake_id not in (None, intake.id)):
            refused += 1
            continue
        if record.intake_id == intake.id:
            continue
        if total >= limit:
            refused += 1
            continue
        record.intake_id = intake.id
        attached += 1
        total += 1
    if attached:
        await session.flush()  # so count_files, which does not flush, counts them
    return AttachResult(attached=attached, refused=refused, total=total)


async def cancel_unpaid(session: AsyncSession, intake: IntakeRecord,
                        now: datetime) -> list[Checkout] | None:
    """Drop an intake that is not paid: its open checkouts expire (returned, so the provider's
    pages can be closed too). None if it is already paid."""
    if intake.status not in ("draft", "awaiting_payment"):
        return None
    intake.update(status="cancelled", updated_at=now)
    if intake.submitted_at is None:
        # Never confirmed: no checkout was made for it (the first is made as it is submitted,
        # see core.payments.checkout_for), so there is none to close.
        return []
    return list((await session.scalars(
        update(Checkout).where(Checkout.intake_id == intake.id, Checkout.status == "open")
        .values(status="expired").returning(Checkout))).all())


_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")


@dataclass(frozen=True)
class Vehicle:
    year: int
    make: str
    model: str


def parse_vehicle(text: str, *, max_year: int) -> Vehicle | None:
    """'2015 Honda Civic' or 'Honda Civic 2015' → Vehicle; None unless all three are there."""
    match = _YEAR.search(text)
    if match is None or not 1950 <= int(match.group()) <= max_year:
        return None
    rest = (text[:match.start()] + " " + text[match.end():]).replace(",", " ").split()
    if len(rest) < 2:
        return None
    make = rest[0][:100]
    model = " ".join(rest[1:])[:100]
    return Vehicle(year=int(match.group()), make=make[0].upper() + make[1:], model=model)


_ODOMETER = re.compile(r"^\s*(\d{1,3}(?:[,. ]\d{3})+|\d+(?:\.\d+)?)\s*(k|thousand)?\s*"
                       r"(km|kms|kilometers|kilometres|mi|miles?)?\s*$", re.I)
# What people say around a reading: "about 120,000 km", "~90k", "roughly 85k on the clock".
_ODOMETER_HEDGE = re.compile(r"^\s*(?:about|around|approx(?:\.|imately)?|roughly|nearly|almost|"
                             r"just (?:under|over)|over|under|circa|ca\.?|~)\s*", re.I)
_ODOMETER_TAIL = re.compile(r"\s*(?:on (?:the|it|the clock|the odometer)|odometer|or so)\s*[.!]?"
                            r"\s*$", re.I)


def parse_odometer(text: str) -> tuple[int, str] | None:
    """'84000', '84,000 miles', '130k km' → (value, 'mi' | 'km'); None if unreadable."""
    match = _ODOMETER.match(_ODOMETER_TAIL.sub("", _ODOMETER_HEDGE.sub("", text)))
    if match is None:
        return None
    number, thousands, unit = match.groups()
    if re.fullmatch(r"\d{1,3}(?:[,. ]\d{3})+", number):
        value = float(re.sub(r"[,. ]", "", number))
    else:
        value = float(number)
    if thousands:
        value *= 1000
    if not 0 <= value <= 2_000_000:
        return None
    return int(value), "km" if unit and unit.lower().startswith("k") else "mi"


def problem_is_described(text: str) -> bool:
    words = re.findall(r"\w+", text)
    letters = sum(map(str.isalpha, text))
    return len(words) >= MIN_PROBLEM_WORDS and letters >= MIN_PROBLEM_LETTERS
