"""VIN checks: the check digit is enforced where it is mandatory, and only there."""

from __future__ import annotations

import pytest

from core.vin import VinError, check_digit, validate


def _wrong_digit(vin: str) -> str:
    """The VIN with a check digit that is not its own."""
    wrong = "1" if check_digit(vin) != "1" else "2"
    return vin[:8] + wrong + vin[9:]


def test_a_check_digit_of_x_is_a_valid_check_digit() -> None:
    vin = "1HGCM826X3A100009"
    assert check_digit(vin) == "X"
    assert validate(vin, current_year=2026).make == "Honda"
    with pytest.raises(VinError, match="check digit"):
        validate(_wrong_digit(vin), current_year=2026)


def test_outside_north_america_and_china_the_check_digit_is_not_required() -> None:
    # Europe's VINs put no check digit in position 9 (Volkswagen writes Z there).
    vin = "WVWZZZ1JZXW000001"
    assert check_digit(vin) != vin[8]
    assert validate(vin, current_year=2026).make == "Volkswagen"


@pytest.mark.parametrize("vin", ["1HGCM82633A004352", "LVSHCAMB1CE000001"])
def test_in_north_america_and_china_a_wrong_check_digit_is_refused(vin: str) -> None:
    with pytest.raises(VinError, match="check digit"):
        validate(_wrong_digit(vin), current_year=2026)
