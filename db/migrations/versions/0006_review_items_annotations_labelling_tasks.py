"""review items with stable ids (verdicts point at them), per-reader versioned annotations (append-only:
triggers refuse UPDATE and DELETE), labelling tasks with their images and readers

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from db import append_only

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "labelling_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("schema", sa.Text(), nullable=False),
        sa.Column("readers_per_image", sa.Integer(), nullable=False),
        sa.Column("blinded", sa.Boolean(), nullable=False),
        sa.Column("queue_order", sa.String(length=32), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "prediction_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("geometry", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prediction_id", "kind", "key", name="uq_prediction_item"),
    )
    with op.batch_alter_table("prediction_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_prediction_items_prediction_id"), ["prediction_id"], unique=False
        )

    op.create_table(
        "labelling_task_readers",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("adjudicator", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["labelling_tasks.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("task_id", "user_id"),
    )
    op.create_table(
        "annotation_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("draft", "submitted", "final", name="annotation_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("proposal_prediction_id", sa.Integer(), nullable=True),
        sa.Column("conflict_with_id", sa.Integer(), nullable=True),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("boxes", sa.Text(), nullable=False),
        sa.Column("polygons", sa.Text(), nullable=False),
        sa.Column("label_map_sha256", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conflict_with_id"],
            ["annotation_versions.id"],
        ),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["annotation_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["proposal_prediction_id"],
            ["predictions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(["task_id"], ["labelling_tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("annotation_versions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_annotation_versions_line", ["image_id", "task_id", "reader_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_annotation_versions_task_id"), ["task_id"], unique=False)

    op.create_table(
        "labelling_task_images",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["task_id"], ["labelling_tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "image_id"),
    )
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prediction_item_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_verdicts_prediction_item_id"), ["prediction_item_id"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_verdicts_prediction_item_id", "prediction_items", ["prediction_item_id"], ["id"]
        )

    # Nothing is overwritten: a correction is a new version (cxr_append_only() comes from 0005 on PostgreSQL).
    append_only.add(op, "annotation_versions")


def downgrade() -> None:
    append_only.remove(op, "annotation_versions")
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_constraint("fk_verdicts_prediction_item_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_verdicts_prediction_item_id"))
        batch_op.drop_column("prediction_item_id")

    op.drop_table("labelling_task_images")
    with op.batch_alter_table("annotation_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annotation_versions_task_id"))
        batch_op.drop_index("ix_annotation_versions_line")

    op.drop_table("annotation_versions")
    op.drop_table("labelling_task_readers")
    with op.batch_alter_table("prediction_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_items_prediction_id"))

    op.drop_table("prediction_items")
    op.drop_table("labelling_tasks")
