"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster in a temp dir.

``PostgresServer`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` (the newest
version there) on a cluster inside a fresh temporary directory, listening only on a Unix socket
in that directory (no TCP port to clash with, nothing reachable from elsewhere). PostgreSQL
refuses to run as root, so under root the cluster belongs to the ``postgres`` system user (the
package creates it) and its commands run through ``runuser``; the directory and everything in
it are removed at ``stop``, so no state is left behind, root-owned or not.

``postgres_binaries()`` is None when the package is not installed: the tests that need the
server are then skipped with that reason (``make venv`` installs it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

SERVICE_USER = "postgres"       # the Debian package's system user; used when the tests run as root


def postgres_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
             if (Path(p).parent / "initdb").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


def skip_reason() -> str | None:
    if postgres_binaries() is None:
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): apt-get install postgresql"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    return None


class PostgresServer:
    """One throwaway cluster; ``url(db)`` for SQLAlchemy (psycopg 3), ``create_database()`` per test."""

    def __init__(self) -> None:
        self.bin = postgres_binaries()
        if self.bin is None:
            raise RuntimeError(skip_reason())
        self.dir = Path(tempfile.mkdtemp(prefix="potluck-pg-"))
        self.data = self.dir / "data"
        self.user = "potluck"
        self.port = 5432            # only names the socket file: no TCP listener
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SERVICE_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> "PostgresServer":
        if self._as_root:
            shutil.chown(self.dir, SERVICE_USER, SERVICE_USER)
            os.chmod(self.dir, 0o700)
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "--no-sync", "-E", "UTF8",
                      "--locale=C")
            # fsync off and a socket in our own directory: a test server, fast, reachable by nobody else.
            opts = f"-c listen_addresses='' -k {self.dir} -p {self.port} -c fsync=off -c full_page_writes=off"
            self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60",
                      "start")
        except subprocess.CalledProcessError as e:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {e.stderr.strip()} {log[-2000:]}") from None
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.dir}&port={self.port}"

    def create_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host=str(self.dir), port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
