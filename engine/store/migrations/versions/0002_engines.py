"""The ``engines`` table: every engine of a hub, its pool, heartbeat and load (issue 16, pools).

Engines of one hub share a database and find each other here (``store/engines.py``). A table
added since the first release would also be made by ``create_all`` at start; this revision
records it in the schema's history, so a database's revision says whether it knows pools.
Downgrading drops the table: it holds only liveness, which the engines write again.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from potluck.engine.store.tables import NAME_CHARS, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("engines"):
        return
    op.create_table(
        "engines",
        sa.Column("name", sa.String(NAME_CHARS), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("accelerator", sa.String(64), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("stopped_at", UTCDateTime(), nullable=True),
        sa.Column("load", sa.JSON(), nullable=True),
    )
    op.create_index("ix_engines_pool", "engines", ["pool"])


def downgrade() -> None:
    op.drop_index("ix_engines_pool", table_name="engines")
    op.drop_table("engines")
