"""Mechanics' weekly availability windows, as they type them: "mon-fri 9-17; sat 10-14"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import CoreError
from core.models import Availability, Mechanic

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_ALIASES = {"weekdays": "mon-fri", "weekends": "sat-sun", "daily": "mon-sun",
            "everyday": "mon-sun"}
_TIME = r"(\d{1,2})(?::(\d{2}))?"
_SEGMENT = re.compile(rf"^\s*([a-z,\- ]+?)\s+{_TIME}\s*-\s*{_TIME}\s*$")


class AvailabilityError(CoreError):
    """The schedule could not be read; str() says how to write it."""


@dataclass(frozen=True)
class Window:
    weekday: int
    start_minute: int
    end_minute: int

    def describe(self) -> str:
        return (f"{DAYS[self.weekday].capitalize()} {self.start_minute // 60:02d}:"
                f"{self.start_minute % 60:02d}-{self.end_minute // 60:02d}:"
                f"{self.end_minute % 60:02d}")


HELP = ('Write it like "mon-fri 9-17" or "mon,wed 08:30-12:00; sat 10-14" (24-hour times, '
        'in your timezone), or "clear" for no restriction.')


def _days(spec: str) -> list[int]:
    days: list[int] = []
    for part in _ALIASES.get(spec.strip(), spec).replace(" ", "").split(","):
        if "-" in part:
            first, _, last = part.partition("-")
            if first[:3] not in DAYS or last[:3] not in DAYS:
                raise AvailabilityError(f"I don't know the day {part!r}. {HELP}")
            a, b = DAYS.index(first[:3]), DAYS.index(last[:3])
            days += list(range(a, b + 1)) if a <= b else list(range(a, 7)) + list(range(b + 1))
        elif part[:3] in DAYS:
            days.append(DAYS.index(part[:3]))
        else:
            raise AvailabilityError(f"I don't know the day {part!r}. {HELP}")
    return days


def parse_schedule(text: str) -> list[Window]:
    """'mon-fri 9-17; sat 10-14' → windows; an empty list for 'clear'."""
    text = text.strip().lower()
    if text in ("clear", "none", "any", "always"):
        return []
    windows: list[Window] = []
    for segment in filter(None, (s.strip() for s in text.split(";"))):
        match = _SEGMENT.match(segment)
        if match is None:
            raise AvailabilityError(f"I couldn't read {segment!r}. {HELP}")
        spec, h1, m1, h2, m2 = match.groups()
        start, end = int(h1) * 60 + int(m1 or 0), int(h2) * 60 + int(m2 or 0)
        if not (0 <= start < end <= 1440) or int(m1 or 0) > 59 or int(m2 or 0) > 59:
            raise AvailabilityError(f"{segment!r}: the start must be before the end, within "
                                    f"one day. {HELP}")
        windows += [Window(day, start, end) for day in _days(spec)]
    if not windows:
        raise AvailabilityError(HELP)
    return windows


async def set_schedule(session: AsyncSession, mechanic_id: int,
                       windows: list[Window]) -> None:
    """Replace the mechanic's windows (none = available at any time when marked available)."""
    await session.execute(delete(Availability).where(Availability.mechanic_id == mechanic_id))
    session.add_all(Availability(mechanic_id=mechanic_id, weekday=w.weekday,
                                 start_minute=w.start_minute, end_minute=w.end_minute)
                    for w in windows)


async def schedule_of(session: AsyncSession, mechanic_id: int) -> list[Window]:
    rows = (await session.scalars(select(Availability).where(
        Availability.mechanic_id == mechanic_id).order_by(
        Availability.weekday, Availability.start_minute))).all()
    return [Window(r.weekday, r.start_minute, r.end_minute) for r in rows]


def set_timezone(mechanic: Mechanic, name: str) -> str:
    """Check and set an IANA timezone such as Europe/Berlin; returns the canonical name."""
    name = name.strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AvailabilityError(f"{name!r} is not a timezone I know; use a name like "
                                "America/New_York or Europe/Berlin.") from None
    mechanic.timezone = name
    return name
