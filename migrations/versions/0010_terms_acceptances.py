"""terms_acceptances: each customer's acceptance of a version of the service terms and
safety waiver (when, on which channel, from which client address on the web), asked before
the payment link

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 18:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('terms_acceptances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('identity_id', sa.Integer(), nullable=True),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('client_address', sa.String(length=64), nullable=True),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'],
                            name=op.f('fk_terms_acceptances_customer_id_customers'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['identity_id'], ['identities.id'],
                            name=op.f('fk_terms_acceptances_identity_id_identities'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_terms_acceptances'))
    )
    with op.batch_alter_table('terms_acceptances', schema=None) as batch_op:
        batch_op.create_index('ix_terms_acceptances_customer_id_version',
                              ['customer_id', 'version'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('terms_acceptances', schema=None) as batch_op:
        batch_op.drop_index('ix_terms_acceptances_customer_id_version')

    op.drop_table('terms_acceptances')
