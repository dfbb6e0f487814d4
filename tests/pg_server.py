"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary folder, password authentication
(scram-sha-256) for every connection, listening on 127.0.0.1 only on a free port, stopped and removed at the end.
As root the server runs as the `postgres` user (PostgreSQL refuses to run as root). No mock: the real server that
`apt-get install postgresql` brings (.ci/run installs it when missing)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ADMIN = "qsync_admin"
READER = "qsync_reader"
# Distinctive so that a grep of every file and output finds it wherever it leaked.
READER_PASSWORD = "pw-Zq7xK41vLm9"
ADMIN_PASSWORD = "adm-Rt5yH28wQp3"
DATABASE = "qsync_test"


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin (newest); None if absent."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bin_dir: Path
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, user: str = READER, password: str | None = READER_PASSWORD, database: str = DATABASE) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def admin_url(self) -> str:
        return self.url(ADMIN, ADMIN_PASSWORD, "postgres")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        pwfile = self.folder / "pw"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", ADMIN, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 64MB\n"
            )
        # Password authentication for every connection over TCP, only from this machine.
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 scram-sha-256\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def sql(self, *statements: str, url: str | None = None) -> list[tuple[object, ...]]:
        """Run statements as the admin (autocommit); the rows of the last."""
        import adbc_driver_postgresql.dbapi as pg

        rows: list[tuple[object, ...]] = []
        with pg.connect(url or self.admin_url(), autocommit=True) as con, con.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = cur.fetchall() if cur.description else []
        return rows


@contextlib.contextmanager
def throwaway_server() -> Iterator[PgServer]:
    """A started server with a database DATABASE that READER may read; stopped and removed on exit."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl)")
    folder = Path(tempfile.mkdtemp(prefix="qsync-pg-"))  # /tmp: the postgres user can reach it (pytest's cannot)
    server = PgServer(bin_dir, folder, _free_port())
    try:
        server.init()
        server.start()
        server.sql(
            f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'",
            f"CREATE DATABASE {DATABASE} OWNER {READER}",
        )
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
