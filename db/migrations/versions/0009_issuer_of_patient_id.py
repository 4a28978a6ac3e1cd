"""studies.issuer_of_patient_id and an index on patient_id: a patient's studies are linked (priors)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True))
        batch.create_index("ix_studies_patient_id", ["patient_id"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_patient_id")
        batch.drop_column("issuer_of_patient_id")
