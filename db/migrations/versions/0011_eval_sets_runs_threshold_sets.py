"""researcher workbench: evaluation sets (versioned by content), background evaluation runs, threshold sets
with an append-only activation history; the per-label threshold edits become one threshold set per model
version, in force

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-05
"""

import json

import sqlalchemy as sa
from alembic import op

from db import append_only

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("truth_source", sa.String(length=16), nullable=False),
        sa.Column("folder", sa.Text(), nullable=True),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "content_sha256", name="uq_eval_set_content"),
        sa.UniqueConstraint("name", "version", name="uq_eval_set_version"),
    )
    op.create_table(
        "eval_set_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("file_name", sa.String(length=255), nullable=True),
        sa.Column("pixel_sha256", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("patient_sex", sa.String(length=1), nullable=True),
        sa.Column("patient_age_years", sa.Integer(), nullable=True),
        sa.Column("view_position", sa.String(length=16), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["set_id"], ["eval_sets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("eval_set_items", schema=None) as batch_op:
        batch_op.create_index("ix_eval_set_items_set", ["set_id", "position"], unique=False)
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n_total", sa.Integer(), nullable=False),
        sa.Column("n_done", sa.Integer(), nullable=False),
        sa.Column("n_reused", sa.Integer(), nullable=False),
        sa.Column("missing", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("resumed", sa.Integer(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_token", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["set_id"], ["eval_sets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_runs_set_id"), ["set_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_runs_status"), ["status"], unique=False)
    op.create_table(
        "threshold_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("thresholds", sa.Text(), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("target", sa.Float(), nullable=True),
        sa.Column("rules", sa.Text(), nullable=True),
        sa.Column("eval_set_id", sa.Integer(), nullable=True),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["eval_set_id"], ["eval_sets.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_threshold_set_version"),
    )
    op.create_table(
        "threshold_set_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("threshold_set_id", sa.Integer(), nullable=True),
        sa.Column("set_by_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_rollback", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(["set_by_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["threshold_set_id"], ["threshold_sets.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("threshold_set_activations", schema=None) as batch_op:
        batch_op.create_index("ix_threshold_set_activations_model", ["model_id", "model_version"], unique=False)
    _edits_become_threshold_sets()
    append_only.add(op, "threshold_set_activations")


def _edits_become_threshold_sets() -> None:
    """Each model version's per-label edits become its threshold set "<id>@<version> edits" v1 (rule manual; the
    weights are not recorded with the edits: ""), in force. Labels not edited keep the model's default."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT model_id, model_version, label, threshold, updated_by_id, updated_at FROM model_thresholds "
                "ORDER BY model_id, model_version, label")
    ).all()  # fmt: skip
    groups: dict[tuple[str, str], list] = {}
    for r in rows:
        groups.setdefault((r.model_id, r.model_version), []).append(r)
    sets = sa.table(
        "threshold_sets", sa.column("id", sa.Integer), sa.column("name"), sa.column("version"),
        sa.column("model_id"), sa.column("model_version"), sa.column("weights_sha256"), sa.column("thresholds"),
        sa.column("rule"), sa.column("created_by_id"), sa.column("created_at"),
    )  # fmt: skip
    activations = sa.table(
        "threshold_set_activations", sa.column("model_id"), sa.column("model_version"),
        sa.column("threshold_set_id"), sa.column("set_by_id"), sa.column("at"),
    )  # fmt: skip
    for (model_id, version), group in groups.items():
        last = max(group, key=lambda r: r.updated_at)
        new_id = bind.execute(
            sa.insert(sets).values(
                name=f"{model_id}@{version} edits", version=1, model_id=model_id, model_version=version,
                weights_sha256="", thresholds=json.dumps({r.label: r.threshold for r in group}, sort_keys=True),
                rule="manual", created_by_id=last.updated_by_id, created_at=last.updated_at,
            ).returning(sets.c.id)
        ).scalar_one()  # fmt: skip
        bind.execute(
            sa.insert(activations).values(model_id=model_id, model_version=version, threshold_set_id=new_id,
                                          set_by_id=last.updated_by_id, at=last.updated_at)  # fmt: skip
        )


def downgrade() -> None:
    append_only.remove(op, "threshold_set_activations")
    with op.batch_alter_table("threshold_set_activations", schema=None) as batch_op:
        batch_op.drop_index("ix_threshold_set_activations_model")
    op.drop_table("threshold_set_activations")
    op.drop_table("threshold_sets")
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_runs_status"))
        batch_op.drop_index(batch_op.f("ix_eval_runs_set_id"))
    op.drop_table("eval_runs")
    with op.batch_alter_table("eval_set_items", schema=None) as batch_op:
        batch_op.drop_index("ix_eval_set_items_set")
    op.drop_table("eval_set_items")
    op.drop_table("eval_sets")
