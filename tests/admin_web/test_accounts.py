"""The lockout's rule and the charts' scales, as plain functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from admin_web.accounts import locked_until
from admin_web.charts import _scale, requests_per_hour, time_to_accept

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)


def at(*minutes: float) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in minutes]


def test_five_failures_within_15_minutes_lock_for_15_minutes_from_the_fifth() -> None:
    assert locked_until(at(0, 1, 2, 3), 5, WINDOW) is None
    assert locked_until(at(0, 1, 2, 3, 4), 5, WINDOW) == T0 + timedelta(minutes=19)
    # Spread over more than 15 minutes: no five in any window.
    assert locked_until(at(0, 5, 10, 15, 20), 5, WINDOW) is None
    # Failures during the lock do not extend it; five more after it lock again.
    assert locked_until(at(0, 1, 2, 3, 4, 10, 18), 5, WINDOW) == T0 + timedelta(minutes=19)
    again = at(0, 1, 2, 3, 4, 20, 21, 22, 23, 24)
    assert locked_until(again, 5, WINDOW) == T0 + timedelta(minutes=39)


def test_chart_axes_count_in_whole_round_steps() -> None:
    assert [_scale(v) for v in (0, 3, 6, 11, 49, 120)] == [
        (1, 1), (1, 3), (2, 6), (5, 15), (10, 50), (50, 150)]
    chart = requests_per_hour(at(-30, -29, -90), T0)
    assert len(chart.bars) == 168 and sum(b.height > 0 for b in chart.bars) == 2
    assert [t.label for t in chart.y_ticks] == ["0", "1", "2"]
    accepted = time_to_accept([(T0, T0 + timedelta(minutes=4)),
                               (T0, T0 + timedelta(minutes=8))], T0 + timedelta(hours=1))
    assert len(accepted.points) == 1 and "median 6.0 min of 2 accepted" in accepted.points[0].title
