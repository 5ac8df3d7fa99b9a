"""CSV of intakes and sessions, the same from the site and from `autodoctor export`. A cell
that a spreadsheet would run as a formula (it begins with =, +, -, @, a tab or a carriage
return) is written with a leading apostrophe, so it is shown as text."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime

from admin_web.intakes import IntakeRow
from admin_web.sessions import SessionRow

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

INTAKE_HEADER = ["intake_id", "created_at", "status", "tier", "customer", "channel", "vin",
                 "year", "make", "model", "odometer", "odometer_unit", "problem", "files",
                 "request", "request_status"]
SESSION_HEADER = ["session_id", "request", "tier", "status", "customer", "mechanic",
                  "created_at", "started_at", "ended_at", "end_reason", "extra_minutes",
                  "price_cents", "rating", "review"]


def cell(value: object) -> str:
    """One value as CSV text, defused against formula injection."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([cell(value) for value in row] for row in rows)
    return out.getvalue()


def intakes_csv(rows: Iterable[IntakeRow]) -> str:
    return csv_text(INTAKE_HEADER, ([
        r.intake.id, r.intake.created_at, r.intake.status, r.intake.plan, r.customer,
        r.intake.channel, r.intake.vin, r.intake.vehicle_year, r.intake.vehicle_make,
        r.intake.vehicle_model, r.intake.odometer, r.intake.odometer_unit, r.intake.problem,
        r.files, r.request_ref, r.request_status] for r in rows))


def sessions_csv(rows: Iterable[SessionRow]) -> str:
    return csv_text(SESSION_HEADER, ([
        r.consultation.id, r.request.ref, r.consultation.plan, r.consultation.status,
        r.customer, r.mechanic, r.consultation.created_at, r.consultation.started_at,
        r.consultation.ended_at, r.consultation.end_reason, r.consultation.extra_minutes,
        r.request.price_cents, r.consultation.rating, r.consultation.review] for r in rows))
