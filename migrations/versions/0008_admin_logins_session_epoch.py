"""admin site: login attempts (the lockout counts recent failures by email and by address),
and a session epoch per admin (logging out voids every cookie signed before)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 11:55:17.638021
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('admin_logins',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('succeeded', sa.Boolean(), nullable=False),
    sa.Column('failure', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_logins'))
    )
    with op.batch_alter_table('admin_logins', schema=None) as batch_op:
        batch_op.create_index('ix_admin_logins_address_created_at', ['address', 'created_at'], unique=False)
        batch_op.create_index('ix_admin_logins_email_created_at', ['email', 'created_at'], unique=False)

    with op.batch_alter_table('admins', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_epoch', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('admins', schema=None) as batch_op:
        batch_op.drop_column('last_login_at')
        batch_op.drop_column('session_epoch')

    with op.batch_alter_table('admin_logins', schema=None) as batch_op:
        batch_op.drop_index('ix_admin_logins_email_created_at')
        batch_op.drop_index('ix_admin_logins_address_created_at')

    op.drop_table('admin_logins')
