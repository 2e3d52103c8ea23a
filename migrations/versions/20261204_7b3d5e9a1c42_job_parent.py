"""jobs: parent_job_id, the job an incremental child continues (lineage)

Revision ID: 7b3d5e9a1c42
Revises: 4c7e9a2b5d18
Create Date: 2026-12-04 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7b3d5e9a1c42"
down_revision: str | None = "4c7e9a2b5d18"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_job_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_jobs_parent_job_id", ["parent_job_id"], unique=False)
        batch_op.create_foreign_key("fk_jobs_parent_job_id", "jobs", ["parent_job_id"], ["id"],
                                    ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_parent_job_id", type_="foreignkey")
        batch_op.drop_index("ix_jobs_parent_job_id")
        batch_op.drop_column("parent_job_id")
