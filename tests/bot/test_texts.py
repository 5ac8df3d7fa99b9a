"""bot.texts: rendering by name, and the rendered texts kept for reuse."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

from bot import texts
from bot.texts import text
from core.config import Plan

PLAN = Plan(name="Quick Chat", price_cents=999, minutes=30)


def _intake(**fields: object) -> SimpleNamespace:
    base = {"vehicle_year": 2015, "vehicle_make": "Honda", "vehicle_model": "Civic",
            "vin": None, "odometer": 84000, "odometer_unit": "mi", "problem": "Grinding noise"}
    return SimpleNamespace(**{**base, **fields})


def test_a_text_of_plain_values_is_rendered_once_and_reused() -> None:
    texts._rendered.clear()
    first = text("plan_label", plan=PLAN)
    assert "Quick Chat" in first and "$9.99" in first
    assert len(texts._rendered) == 1
    assert text("plan_label", plan=PLAN) == first
    assert len(texts._rendered) == 1
    # Other values, another text: an equal plan with another price is not the one kept.
    dearer = text("plan_label", plan=replace(PLAN, price_cents=1999))
    assert "$19.99" in dearer and "$9.99" not in dearer


def test_texts_of_objects_that_may_change_are_rendered_each_time() -> None:
    texts._rendered.clear()
    intake = _intake()
    assert "Vehicle: 2015 Honda Civic" in text("summary", intake=intake, plan=PLAN, files=0)
    intake.vehicle_model = "Accord"
    intake.vehicle_year = None
    assert "Vehicle: Honda Accord\n" in text("summary", intake=intake, plan=PLAN, files=0)
    assert texts._rendered == {}


def test_a_frozen_dataclass_holding_something_mutable_is_not_kept() -> None:
    @dataclass(frozen=True)
    class Holder:
        items: list[str]

    texts._rendered.clear()
    assert texts._cache_key("en", "x", {"h": Holder(["a"])}) is None
    assert texts._cache_key("en", "x", {"n": 1}) != texts._cache_key("en", "x", {"n": True})


def test_the_cache_is_bounded() -> None:
    texts._rendered.clear()
    for cents in range(100, 100 + texts.CACHE_SIZE + 10):
        text("money", cents=cents)
    assert 0 < len(texts._rendered) <= texts.CACHE_SIZE
    assert text("money", cents=12345) == "$123.45"


def test_vehicle_words_leave_out_what_is_missing() -> None:
    assert text("vehicle", intake=_intake()) == "2015 Honda Civic"
    assert text("vehicle", intake=_intake(vehicle_year=None, vin="1HGCM82633A004352")) == (
        "Honda Civic (VIN 1HGCM82633A004352)")
    assert text("vehicle", intake=_intake(vehicle_year=None, vehicle_make=None,
                                          vehicle_model=None, vin=None)) == "not given"
