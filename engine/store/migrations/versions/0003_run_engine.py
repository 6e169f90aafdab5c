"""``runs.engine``: which engine of the hub a run is on (issue 16, run history per engine).

Engines of one hub share the run history. An engine that starts marks the unfinished runs it
finds as failed (it was cut off while running them); with several engines it must mark only its
own, not runs still live on the others, so each run now records its engine's name. Rows written
before this revision have no engine (NULL): at the next start of any engine they count as its own,
as they did before (one engine wrote them all).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from potluck.engine.store.tables import NAME_CHARS

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "engine" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}:
        return
    op.add_column("runs", sa.Column("engine", sa.String(NAME_CHARS), nullable=True))
    op.create_index("ix_runs_engine", "runs", ["engine"])


def downgrade() -> None:
    op.drop_index("ix_runs_engine", table_name="runs")
    with op.batch_alter_table("runs") as batch:     # SQLite drops a column by copying the table
        batch.drop_column("engine")
