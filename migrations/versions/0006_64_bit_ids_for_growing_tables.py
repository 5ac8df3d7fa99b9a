"""64-bit ids for the tables that grow without bound: messages, outbox, inbound_events,
audit_log (and the columns pointing at them). SQLite's INTEGER primary keys are 64-bit
already; PostgreSQL's were 32-bit (serial).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, its own sequence if it is the table's id)
_COLUMNS = (
    ("messages", "id", True),
    ("outbox", "id", True),
    ("outbox", "message_id", False),
    ("offers", "outbox_id", False),
    ("inbound_events", "id", True),
    ("audit_log", "id", True),
)


def _retype(sql_type: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: INTEGER is 64-bit
    for table, column, own_sequence in _COLUMNS:
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE {sql_type}')
        if own_sequence:
            op.execute(f"ALTER SEQUENCE {table}_{column}_seq AS {sql_type}")


def upgrade() -> None:
    _retype("bigint")


def downgrade() -> None:
    _retype("integer")
