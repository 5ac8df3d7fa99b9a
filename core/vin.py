"""VIN checks with replies that say exactly what is wrong, and an offline decode."""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import mul

from vininfo import Vin

_TRANSLIT = {**{str(d): d for d in range(10)},
             **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
             **dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9,
             **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_ALLOWED = frozenset(_TRANSLIT)
_CONFUSABLE = frozenset("IOQ")
# The check digit is mandatory for vehicles made for North America (WMI 1-5) and China (L).
_CHECKED_REGIONS = tuple("12345L")


class VinError(ValueError):
    """The VIN is not valid; str() is a sentence for the customer."""


@dataclass(frozen=True)
class VinInfo:
    vin: str
    year: int | None
    make: str | None


def normalize(raw: str) -> str:
    return re.sub(r"[\s\-]", "", raw).upper()


def check_digit(vin: str) -> str:
    if len(vin) != len(_WEIGHTS):
        raise ValueError("a VIN has 17 characters")
    total = sum(map(mul, map(_TRANSLIT.__getitem__, vin), _WEIGHTS))
    rem = total % 11
    return "X" if rem == 10 else str(rem)


def validate(raw: str, *, current_year: int) -> VinInfo:
    """Check length, characters and check digit; decode model year and maker."""
    vin = normalize(raw)
    if len(vin) != 17:
        raise VinError(f"A VIN has exactly 17 characters; this one has {len(vin)}.")
    banned = sorted(_CONFUSABLE.intersection(vin))
    if banned:
        raise VinError(
            f"A VIN never contains the letters I, O or Q (this one has {', '.join(banned)}); "
            "they are easy to mix up with 1 and 0. Please check those characters.")
    bad = sorted(set(vin) - _ALLOWED)
    if bad:
        raise VinError(f"A VIN has only letters and digits; this one has {' '.join(bad)}.")
    if vin[0] in _CHECKED_REGIONS:
        expected = check_digit(vin)
        if vin[8] != expected:
            raise VinError(
                f"The check digit (9th character) is {vin[8]} but should be {expected} for "
                "the other characters, so one of them is probably mistyped.")
    decoded = Vin(vin)
    years = [y for y in decoded.years if y <= current_year + 1]
    make = decoded.manufacturer
    return VinInfo(vin=vin, year=max(years) if years else None,
                   make=None if not make or make == "UnsupportedBrand" else str(make))
