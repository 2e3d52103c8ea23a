"""datasets: index on (owner, sha256) for the duplicate hint

Revision ID: 5b1e8c0f9a3d
Revises: 0227053b101a
Create Date: 2026-12-02 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b1e8c0f9a3d"
down_revision: str | None = "0227053b101a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index("ix_datasets_owner_sha256", ["owner", "sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_datasets_owner_sha256")
