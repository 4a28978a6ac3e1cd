"""active models per task with history

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "active_model_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=32), nullable=True),
        sa.Column("weights_sha256", sa.String(length=64), nullable=True),
        sa.Column("set_by_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["set_by_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("active_model_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_active_model_events_task"), ["task"], unique=False)

    op.create_table(
        "active_models",
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("set_by_id", sa.Integer(), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["set_by_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("task"),
    )


def downgrade() -> None:
    op.drop_table("active_models")
    with op.batch_alter_table("active_model_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_active_model_events_task"))
    op.drop_table("active_model_events")
