"""report versions: every save of a report is a new version (append-only: triggers refuse UPDATE and DELETE),
with sign-off (final, locked), amendments and the consistency check's flags; the rows of `reports` become the
first version of each line, and `reports` goes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-12
"""

import sqlalchemy as sa
from alembic import op

from db import append_only

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column(
            "status", sa.Enum("draft", "final", name="report_status", native_enum=False, length=16), nullable=False
        ),
        sa.Column("amendment", sa.Boolean(), nullable=False),
        sa.Column("amendment_reason", sa.Text(), nullable=True),
        sa.Column("generated", sa.Boolean(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("consistency", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signed_by_id", sa.Integer(), nullable=True),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["parent_id"], ["report_versions.id"]),
        sa.ForeignKeyConstraint(["reader_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["signed_by_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("report_versions", schema=None) as batch_op:
        batch_op.create_index("ix_report_versions_line", ["study_id", "reader_id"], unique=False)
    # Each saved report becomes the first version of its line: a draft by its reader, as last saved.
    op.execute(
        "INSERT INTO report_versions (study_id, reader_id, author_id, parent_id, status, amendment, generated, "
        "text, created_at) SELECT study_id, reader_id, reader_id, NULL, 'draft', false, false, text, updated_at "
        "FROM reports ORDER BY id"
    )
    op.drop_table("reports")
    # Nothing is overwritten (cxr_append_only() comes from 0005 on PostgreSQL).
    append_only.add(op, "report_versions")


def downgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("reader_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["reader_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_id", "reader_id", name="uq_report"),
    )
    # The newest version of each line is its report (the history is lost on the way down).
    op.execute(
        "INSERT INTO reports (study_id, reader_id, text, updated_at) SELECT v.study_id, v.reader_id, v.text, "
        "v.created_at FROM report_versions v WHERE v.id = (SELECT max(w.id) FROM report_versions w "
        "WHERE w.study_id = v.study_id AND w.reader_id = v.reader_id)"
    )
    append_only.remove(op, "report_versions")
    with op.batch_alter_table("report_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_report_versions_line")
    op.drop_table("report_versions")
