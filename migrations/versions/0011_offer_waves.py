"""session_requests.next_wave_at: paid requests are offered in waves, the next one due then

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 01:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DUE = "next_wave_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table('session_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_wave_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_session_requests_next_wave_at', ['next_wave_at'],
                              unique=False, sqlite_where=sa.text(_DUE),
                              postgresql_where=sa.text(_DUE))


def downgrade() -> None:
    with op.batch_alter_table('session_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_session_requests_next_wave_at', sqlite_where=sa.text(_DUE),
                            postgresql_where=sa.text(_DUE))
        batch_op.drop_column('next_wave_at')
