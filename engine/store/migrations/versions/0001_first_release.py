"""The store as the first release made it (tables created by ``create_all``, before migrations).

Every database made before migrations existed has exactly this schema: ``quota_overrides``,
``usage``, ``audit_log``, ``kv``, ``api_tokens``, ``saved_contexts``, ``runs``. Such a database
is stamped with this revision at its first start and upgraded from here; a new database is
created whole and stamped with the newest revision. Tables added later need no revision (they
are created when missing); a change to an existing table (a column added, retyped, renamed)
is a new revision after this one.

Revision ID: 0001
Revises:
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass
