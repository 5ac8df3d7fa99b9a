"""consultations: the two chats relayed between, extra minutes, the diagnostic report, when
rated; one consultation under way per request (no longer one ever: a released request is
matched again); extensions (more time bought) and the files sent in a session

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 11:40:20.687332
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('extensions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consultation_id', sa.Integer(), nullable=False),
    sa.Column('checkout_id', sa.Integer(), nullable=False),
    sa.Column('minutes', sa.Integer(), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('open', 'paid', 'late')", name=op.f('ck_extensions_status')),
    sa.CheckConstraint('minutes > 0 AND amount_cents > 0', name=op.f('ck_extensions_positive')),
    sa.ForeignKeyConstraint(['checkout_id'], ['checkouts.id'], name=op.f('fk_extensions_checkout_id_checkouts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], name=op.f('fk_extensions_consultation_id_consultations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_extensions')),
    sa.UniqueConstraint('checkout_id', name=op.f('uq_extensions_checkout_id'))
    )
    with op.batch_alter_table('extensions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_extensions_consultation_id'), ['consultation_id'], unique=False)
        batch_op.create_index('ix_extensions_status', ['status'], unique=False)

    with op.batch_alter_table('consultations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('customer_identity_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('mechanic_identity_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('extra_minutes', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('report', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('rated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(batch_op.f('uq_consultations_request_id'), type_='unique')
        batch_op.create_index(batch_op.f('ix_consultations_customer_identity_id'), ['customer_identity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_consultations_mechanic_identity_id'), ['mechanic_identity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_consultations_request_id'), ['request_id'], unique=False)
        batch_op.create_index('uq_consultations_one_active_per_request', ['request_id'], unique=True, sqlite_where=sa.text("status IN ('waiting', 'live')"), postgresql_where=sa.text("status IN ('waiting', 'live')"))
        batch_op.create_foreign_key(batch_op.f('fk_consultations_customer_identity_id_identities'), 'identities', ['customer_identity_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_consultations_mechanic_identity_id_identities'), 'identities', ['mechanic_identity_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('consultation_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_files_consultation_id'), ['consultation_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_files_consultation_id_consultations'), 'consultations', ['consultation_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.create_index('ix_payouts_status', ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.drop_index('ix_payouts_status')

    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_files_consultation_id_consultations'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_files_consultation_id'))
        batch_op.drop_column('consultation_id')

    with op.batch_alter_table('consultations', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_consultations_mechanic_identity_id_identities'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_consultations_customer_identity_id_identities'), type_='foreignkey')
        batch_op.drop_index('uq_consultations_one_active_per_request', sqlite_where=sa.text("status IN ('waiting', 'live')"), postgresql_where=sa.text("status IN ('waiting', 'live')"))
        batch_op.drop_index(batch_op.f('ix_consultations_request_id'))
        batch_op.drop_index(batch_op.f('ix_consultations_mechanic_identity_id'))
        batch_op.drop_index(batch_op.f('ix_consultations_customer_identity_id'))
        batch_op.create_unique_constraint(batch_op.f('uq_consultations_request_id'), ['request_id'])
        batch_op.drop_column('rated_at')
        batch_op.drop_column('report')
        batch_op.drop_column('extra_minutes')
        batch_op.drop_column('mechanic_identity_id')
        batch_op.drop_column('customer_identity_id')

    with op.batch_alter_table('extensions', schema=None) as batch_op:
        batch_op.drop_index('ix_extensions_status')
        batch_op.drop_index(batch_op.f('ix_extensions_consultation_id'))

    op.drop_table('extensions')
