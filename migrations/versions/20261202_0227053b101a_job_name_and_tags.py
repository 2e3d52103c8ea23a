"""job name and tags

Revision ID: 0227053b101a
Revises: de5881df7987
Create Date: 2026-12-02 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0227053b101a"
down_revision: str | None = "de5881df7987"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
        batch_op.create_index("ix_jobs_owner_name", ["owner", "name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_owner_name")
        batch_op.drop_column("tags")
        batch_op.drop_column("name")
