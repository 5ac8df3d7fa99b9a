"""sms_deliveries: each message handed to Twilio (an outbox row may need several) and the
last status Twilio reported for it (delivered, undelivered, failed)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 11:55:56.876744
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sms_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('outbox_key', sa.String(length=255), nullable=True),
    sa.Column('address', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('segments', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_deliveries')),
    sa.UniqueConstraint('sid', name=op.f('uq_sms_deliveries_sid'))
    )
    with op.batch_alter_table('sms_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_deliveries_outbox_key'), ['outbox_key'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('sms_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sms_deliveries_outbox_key'))

    op.drop_table('sms_deliveries')
