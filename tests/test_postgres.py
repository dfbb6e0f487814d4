"""PostgreSQL as a source, against a real server (tests/pg_server.py: initdb + pg_ctl in a temporary folder, password
authentication, 127.0.0.1 only): a table by name or a query, re-syncs, the password in no file and no output, and
every fault made real (a wrong password, a stopped server, a query failing on a late row, a connection killed while
planning) a clear message with nothing half-planned."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_server import ADMIN_PASSWORD, READER, READER_PASSWORD, PgServer, binaries, throwaway_server
from qsync_testing import qsync_cmd, qsync_env, run_qsync, status_json, wait_for

import qsync
from qsync.cli import main
from qsync.input import postgres, sources
from qsync.input.postgres import is_postgres, redact, scrub

pytestmark = pytest.mark.skipif(
    binaries() is None, reason="no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql (.ci/run does)"
)
ROWS = 300
HASH = ["--embedder", "hash", "--dimensions", "8", "--quiet"]


@pytest.fixture(scope="session")
def server() -> Iterator[PgServer]:
    with throwaway_server() as pg:
        pg.sql(
            "CREATE TABLE glosses (id bigint PRIMARY KEY, text text, pos text, weight numeric, extra jsonb)",
            f"INSERT INTO glosses SELECT i, 'gloss number ' || i, CASE WHEN i % 2 = 0 THEN 'noun' ELSE 'verb' END, "
            f"i / 7.0, jsonb_build_object('i', i) FROM generate_series(1, {ROWS}) i",
            url=pg.url(),
        )
        yield pg


@pytest.fixture
def table(server: PgServer, request: pytest.FixtureRequest) -> str:
    """A fresh copy of `glosses` for one test, that it may change."""
    name = "t_" + str(request.node.name).split("[")[0].removeprefix("test_")[:40]
    server.sql(f"DROP TABLE IF EXISTS {name}", f"CREATE TABLE {name} AS SELECT * FROM glosses", url=server.url())
    return name


@pytest.fixture
def run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ledger hosts' folder (their logs) inside the test's reach, so that a grep for the password sees it."""
    folder = Path(tempfile.mkdtemp(prefix="qsync-run-"))
    monkeypatch.setenv("QSYNC_RUN_DIR", str(folder))
    for name in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE"):
        monkeypatch.delenv(name, raising=False)
    yield folder


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _jobs(db: Path) -> list[Any]:
    if not db.exists():
        return []
    return list(qsync.jobs(db=str(db))["job"])


def test_connection_strings_are_told_apart_and_redacted() -> None:
    assert is_postgres("postgresql://u:p@h/db") and is_postgres("postgres://h/db")
    assert is_postgres("host=127.0.0.1 dbname=x") and not is_postgres("data/src.duckdb") and not is_postgres(None)
    assert (
        redact("postgresql://u:s%40cret@h:5/db?sslmode=require&password=x") == "postgresql://u@h:5/db?sslmode=require"
    )
    assert redact("host=h password='a b\\'c' dbname=d") == "host=h dbname=d"
    dsn = "postgresql://u:s%40cret@h/db"
    assert scrub(f"failed for {dsn}; s@cret and s%40cret", dsn) == "failed for postgresql://u@h/db; *** and ***"


def test_a_table_by_name_and_a_query_with_a_keyword_string_plan_every_row(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "q.duckdb"
    code, out, err = _cli(capsys, "run", "--source-db", server.url(), "--source", table, "--collection", "c",
                          "--db", str(db), "--payload-columns", "pos,weight,extra", *HASH)  # fmt: skip
    assert code == 0, err
    assert f"c:{table}: completed" in out and f"{ROWS} loaded" in out
    keywords = f"host=127.0.0.1 port={server.port} dbname=qsync_test user={READER} password={READER_PASSWORD}"
    code, out, err = _cli(capsys, "run", "--source-db", keywords, "--source", f"sql:SELECT id, text FROM {table} "
                          "WHERE pos = 'noun'", "--collection", "d", "--db", str(db), *HASH)  # fmt: skip
    assert code == 0, err
    assert f"{ROWS // 2} loaded" in out
    found = qsync.search(f"c:{table}", "gloss number 7", limit=1, db=str(db))
    hit = found.iloc[0]  # the payload as PostgreSQL holds it: text, numeric (as text), jsonb
    number = int(hit["id"])
    assert hit["pos"] == ("noun" if number % 2 == 0 else "verb"), hit
    assert abs(float(hit["weight"]) - number / 7) < 1e-9 and '"i":' in str(hit["extra"]).replace(" ", ""), hit


def test_a_resync_pays_for_new_and_changed_rows_and_deletes_removed_ones(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "q.duckdb")
    options: dict[str, Any] = {"collection": "c", "db": db, "embedder": "hash", "dimensions": 8}
    first = qsync.run(table, source_db=server.url(), delete_missing=True, **options)
    assert first.status == "completed" and qsync.status(first.job_id, db=db)["loaded_records"] == ROWS
    server.sql(f"UPDATE {table} SET text = text || ' (revised)' WHERE id IN (1, 2, 3)",
               f"DELETE FROM {table} WHERE id IN (10, 11)",
               f"INSERT INTO {table} (id, text) VALUES (1001, 'a new gloss')", url=server.url())  # fmt: skip
    # The password now comes from ~/.pgpass (PGPASSFILE), not the URL: the stored spec never had it.
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{server.port}:*:{READER}:{READER_PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    second = qsync.run(table, source_db=server.url(password=None), delete_missing=True, **options)
    assert second.job_id == f"c:{table}#2" and second.status == "completed", second.message
    info = qsync.status(second.job_id, db=db)
    figures = (info["loaded_records"], info["unchanged_records"], info["deleted_records"], info["embedded_texts"])
    assert figures == (4, ROWS - 5, 2, 4), info


def test_changed_since_reads_only_changed_rows_in_postgresql_and_deletions_by_ids(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--changed-since updated_at`: the filter runs in PostgreSQL (the rows that cross the connection are counted
    where qsync reads them), the ids are read alone for deletions, and the mark round-trips a timestamptz exactly."""
    server.sql(f"ALTER TABLE {table} ADD COLUMN updated_at timestamptz",
               f"UPDATE {table} SET updated_at = timestamptz '2026-01-01 00:00:00.123456+00' + id * interval '1 s'",
               url=server.url())  # fmt: skip
    streamed: list[int] = []
    real_copy = postgres.copy_into

    def counted_copy(con: Any, dsn: str, query: str, into: str) -> int:
        streamed.append(real_copy(con, dsn, query, into))
        return streamed[-1]

    monkeypatch.setattr(sources, "copy_into", counted_copy)
    db = str(tmp_path / "q.duckdb")
    options: dict[str, Any] = {"collection": "c", "db": db, "embedder": "hash", "dimensions": 8,
                               "changed_since": "updated_at", "delete_missing": True}  # fmt: skip
    first = qsync.run(table, source_db=server.url(), **options)
    assert first.status == "completed" and streamed == [ROWS]  # every row; no ids read apart
    mark = qsync.status(first.job_id, db=db)["high_water"]
    assert mark.startswith(f"2026-01-01 00:0{ROWS // 60}:{ROWS % 60:02d}.123456"), mark
    server.sql(f"UPDATE {table} SET text = text || ' (revised)', updated_at = now() WHERE id IN (1, 2, 3)",
               f"DELETE FROM {table} WHERE id IN (10, 11)",
               f"INSERT INTO {table} (id, text, updated_at) VALUES (1001, 'a new gloss', now())",
               url=server.url())  # fmt: skip
    streamed.clear()
    second = qsync.run(table, source_db=server.url(), **options)
    assert second.status == "completed", second.message
    # 3 changed + 1 new + the row at the mark; then the ids of every row, one column.
    assert streamed == [5, ROWS - 2 + 1], streamed
    info = qsync.status(second.job_id, db=db)
    assert info["since_value"] == mark
    figures = (info["loaded_records"], info["unchanged_records"], info["deleted_records"], info["embedded_texts"])
    assert figures == (4, 1, 2, 4), info
    assert qsync.verify(second.job_id, db=db).present == ROWS - 1


def _files_and_outputs_hold_no_secret(folders: list[Path], outputs: list[str], secrets: list[str]) -> None:
    leaks = [(s, "output") for s in secrets for out in outputs if s in out]
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                leaks += [(s, str(path)) for s in secrets if s.encode() in data]
    assert not leaks, leaks


@pytest.mark.slow
def test_the_password_is_in_no_file_and_no_output(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, outputs = tmp_path / "q.duckdb", []
    base = ["--collection", "c", "--db", str(db), *HASH]
    for args in (["run", "--source-db", server.url(), "--source", table, *base],
                 ["run", "--source-db", server.url(password="wrong-" + READER_PASSWORD), "--source", table, *base],
                 ["run", "--source-db", server.url(), "--source", "sql:SELECT id, text FROM nowhere", *base],
                 ["estimate", "--source-db", server.url(), "--source", table, "--db", str(db)],
                 ["jobs", "--db", str(db)], ["status", "--db", str(db), "--json"], ["cost", f"c:{table}", "--db", str(db)],
                 ["batches", f"c:{table}", "--db", str(db)]):  # fmt: skip
        _, out, err = _cli(capsys, *args)
        outputs += [out, err]
    assert "password authentication failed" in outputs[3] and 'relation "nowhere" does not exist' in outputs[5]
    spec = qsync.jobs(db=str(db))
    outputs.append(spec.to_string())
    outputs.append(str(status_json(db, f"c:{table}")))
    _files_and_outputs_hold_no_secret([tmp_path, run_dir], outputs, [READER_PASSWORD, ADMIN_PASSWORD])


@pytest.mark.parametrize(
    ("source", "extra", "wanted", "exit_code"),
    [
        ("sql:SELECT id, text FROM nowhere", [], 'relation "nowhere" does not exist', 1),
        ("sql:SELECT id, txet FROM {table}", [], 'column "txet" does not exist', 1),
        ("{table}", ["--text-column", "txet"], "'txet' not found (columns are: id, text, pos, weight, extra)", 2),
        (
            "sql:SELECT id, text || (1 / (id - {late})) AS text FROM {table}",
            [],
            "division by zero",
            1,
        ),
    ],
    ids=["unknown table", "unknown column in the query", "unknown column named", "fails on a late row"],
)
def test_bad_queries_are_clear_messages_with_nothing_planned(
    server: PgServer,
    table: str,
    tmp_path: Path,
    run_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    extra: list[str],
    wanted: str,
    exit_code: int,
) -> None:
    db = tmp_path / "q.duckdb"
    monkeypatch.setattr(postgres, "_BATCH_BYTES", 2048)  # batches of a few rows: a late row fails mid-stream
    code, _, err = _cli(capsys, "run", "--source-db", server.url(), "--source", source.format(table=table, late=ROWS),
                        "--collection", "c", "--db", str(db), *extra, *HASH)  # fmt: skip
    assert code == exit_code and wanted in err, err
    if "late" in source:
        assert re.search(r"reading the rows failed after [1-9][\d,]*; nothing was planned", err), err
    assert READER_PASSWORD not in err and "Traceback" not in err
    assert _jobs(db) == []


def test_a_wrong_password_or_a_stopped_server_is_a_message_and_the_next_run_works(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "q.duckdb"
    common = ["--source", table, "--collection", "c", "--db", str(db), "--id-column", "id", "--text-column", "text"]
    code, _, err = _cli(capsys, "run", "--source-db", server.url(password="not-" + READER_PASSWORD), *common, *HASH)
    assert code == 1 and "password authentication failed" in err and "PGPASSWORD" in err, err
    code, _, err = _cli(capsys, "run", "--source-db", server.url(password=None), *common, *HASH)
    assert code == 1 and "no password supplied" in err, err
    server.stop()
    try:
        code, _, err = _cli(capsys, "run", "--source-db", server.url(), *common, *HASH)
        assert code == 1 and "Connection refused" in err and "127.0.0.1" in err, err
    finally:
        server.start()
    assert READER_PASSWORD not in err and _jobs(db) == []
    code, out, err = _cli(capsys, "run", "--source-db", server.url(), *common, *HASH)
    assert code == 0 and f"{ROWS} loaded" in out, err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["pg_terminate_backend", "server stopped"])
def test_a_connection_dropped_while_planning_leaves_nothing_planned(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, how: str
) -> None:
    """The source query streams its first rows, then waits on a lock the test holds (an advisory lock taken on a
    late row), so the drop comes while qsync is planning, mid-stream: found by the server's own view of it."""
    import adbc_driver_postgresql.dbapi as pg

    db = tmp_path / "q.duckdb"
    query = (
        f"sql:SELECT id, text FROM {table} WHERE id < 250 OR (pg_advisory_lock_shared(4242) IS NOT NULL) ORDER BY id"
    )
    holder = pg.connect(server.url(), autocommit=True)  # advisory locks are per database: the source's
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(4242)")
            cur.fetchall()
        proc = subprocess.Popen(qsync_cmd("run", "--source-db", server.url(), "--source", query, "--collection", "c",
                                          "--db", str(db), "--id-column", "id", "--text-column", "text", *HASH),
                                env=qsync_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        waiting = (f"SELECT pid FROM pg_stat_activity WHERE usename = '{READER}' AND wait_event_type = 'Lock' "
                   "AND state = 'active'")  # fmt: skip
        pids = wait_for(lambda: proc.poll() is not None or server.sql(waiting), timeout=60)
        assert proc.poll() is None, proc.communicate()
        if how == "pg_terminate_backend":
            server.sql(f"SELECT pg_terminate_backend({pids[0][0]})")
        else:
            server.stop("immediate")  # the lock still held: the reader cannot finish first
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(Exception):  # a connection the stopped server dropped
            holder.close()
        if how == "server stopped":
            server.start()
    assert proc.returncode == 1, (out, err)
    assert "reading the rows failed" in err or "the source query failed" in err, err
    assert "nothing was planned" in err or "terminat" in err, err
    assert READER_PASSWORD not in out + err and "Traceback" not in err
    listing = run_qsync("jobs", "--db", str(db))
    assert listing.returncode == 0 and "c:" not in listing.stdout, listing.stdout


def test_reading_is_one_record_batch_at_a_time(server: PgServer, table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows reach DuckDB in several batches, each written before the next is read (bounded memory): with a
    small batch size, a few hundred rows arrive in more than one insert."""
    import duckdb

    monkeypatch.setattr(postgres, "_BATCH_BYTES", 2048)
    inserts: list[int] = []
    with duckdb.connect() as con:

        class Counting:
            def execute(self, sql: str, *params: Any) -> Any:
                if sql.startswith("INSERT"):
                    inserts.append(1)
                return con.execute(sql, *params)

            def register(self, name: str, value: Any) -> Any:
                return con.register(name, value)

            def unregister(self, name: str) -> Any:
                return con.unregister(name)

        rows = postgres.copy_into(Counting(), server.url(), f"SELECT * FROM {table}", "t")
        assert rows == ROWS == con.execute("SELECT count(*) FROM t").fetchall()[0][0]
    assert len(inserts) > 1


def test_the_environment_gives_the_password_on_a_rerun(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "q.duckdb"
    monkeypatch.setenv("PGPASSWORD", READER_PASSWORD)
    result = qsync.run(table, source_db=server.url(password=None), collection="c", db=str(db), embedder="hash",
                       dimensions=8)  # fmt: skip
    assert result.status == "completed"
    stored = qsync.jobs(db=str(db))
    assert not any(READER_PASSWORD in str(v) for v in stored.to_numpy().ravel())
    env_leak = [k for k, v in os.environ.items() if READER_PASSWORD in v and k != "PGPASSWORD"]
    assert env_leak == []


def test_a_service_entry_names_the_server_and_holds_the_password(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[corpus]\nhost=127.0.0.1\nport={server.port}\ndbname=qsync_test\nuser={READER}\n"
                        f"password={READER_PASSWORD}\n")  # fmt: skip
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    db = tmp_path / "q.duckdb"
    result = qsync.run(f"sql:SELECT id, text FROM {table} WHERE id <= 50", source_db="service=corpus", collection="c",
                       db=str(db), embedder="hash", dimensions=8)  # fmt: skip
    assert result.ok and qsync.status(result.job_id, db=str(db))["loaded_records"] == 50
    monkeypatch.setenv("PGSERVICE", "corpus")  # the whole connection from the environment: a bare keyword string
    again = qsync.run(f"sql:SELECT id, text FROM {table} WHERE id <= 60", source_db="connect_timeout=10",
                      collection="d", db=str(db), embedder="hash", dimensions=8)  # fmt: skip
    assert again.ok and qsync.status(again.job_id, db=str(db))["loaded_records"] == 60


def _widget_values(widget: Any) -> list[str]:
    """Every value, placeholder and option a widget tree holds (what its state would save)."""
    found = [str(getattr(widget, name, "")) for name in ("value", "placeholder", "options", "description")]
    for child in getattr(widget, "children", ()):
        found += _widget_values(child)
    return found


def test_the_launcher_reads_a_table_with_the_password_kept_out_of_its_widgets(
    server: PgServer, table: str, tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qsync.notebook import Launcher

    db = tmp_path / "q.duckdb"
    launcher = Launcher(source=table, collection="c", db=db, source_db=server.url(), embedder="hash", dimensions=8)
    form = launcher.form
    assert form.database.value == server.url(password=None)
    assert (form.id_column.value, form.text_column.value) == ("id", "text"), launcher.message.value
    form.database.value = server.url()  # typed with its password: hidden once the columns are read
    form.read_columns()
    assert form.database.value == server.url(password=None) and form.expected_name() == f"c:{table}"
    launcher.start()
    result = launcher.wait(60)
    assert result is not None and result.ok and result.job_id == f"c:{table}", launcher.message.value
    values = _widget_values(launcher.form.widget) + _widget_values(launcher.message) + _widget_values(launcher.monitor)
    assert not [v for v in values if READER_PASSWORD in v]
    # After a kernel restart: the URL without its password finds the job; libpq takes the password from PGPASSWORD.
    monkeypatch.setenv("PGPASSWORD", READER_PASSWORD)
    again = Launcher(source=table, collection="c", db=db, source_db=server.url(password=None))
    assert again.job == f"c:{table}" and again.form.id_column.value == "id", again.message.value


def test_compare_samples_a_table_where_it_lives(
    server: PgServer, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_dir: Path
) -> None:
    from qsync_testing import sdk_emulator

    from qsync.app.compare import compare

    monkeypatch.setenv("PGPASSWORD", READER_PASSWORD)
    with sdk_emulator(monkeypatch, "pg-compare-key", vectors="words") as emulator:
        found = compare(table, source_db=server.url(user=READER, password=None), db=tmp_path / "q.duckdb",
                        sample=60, models=["gemini-embedding-001"], sizes=(256, 3072))  # fmt: skip
    assert found.sample_records == 60 and emulator.stats()["texts_embedded"] == 60
    assert list(found.table["neighbours_kept"])[-1] == 1.0 and found.source.endswith(f"SELECT * FROM {table}")
