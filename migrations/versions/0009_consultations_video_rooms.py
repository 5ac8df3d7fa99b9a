"""consultations: the LiveKit room of a video session (pending until made, ready once both
were sent their join links, closed once deleted), its creation attempts and next retry

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 11:54:11.455148
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "room_status IN ('pending', 'ready')"


def upgrade() -> None:
    with op.batch_alter_table('consultations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('room_status', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('room_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('room_retry_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(
            'room_status', "room_status IS NULL OR room_status IN ('pending', 'ready', 'closed')")
        batch_op.create_index('ix_consultations_room_open', ['room_status'], unique=False,
                              sqlite_where=sa.text(_OPEN), postgresql_where=sa.text(_OPEN))


def downgrade() -> None:
    with op.batch_alter_table('consultations', schema=None) as batch_op:
        batch_op.drop_index('ix_consultations_room_open', sqlite_where=sa.text(_OPEN),
                            postgresql_where=sa.text(_OPEN))
        batch_op.drop_constraint(op.f('ck_consultations_room_status'), type_='check')
        batch_op.drop_column('room_retry_at')
        batch_op.drop_column('room_attempts')
        batch_op.drop_column('room_status')
