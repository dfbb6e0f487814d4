"""The Ledger: atomic transactions, schema versions, sharing the file between processes, and a file deleted or
replaced under a process that had it open."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest
from qsync_testing import ledger_rows, qsync_env

from qsync.errors import LedgerError, LedgerLocked, SchemaTooNew
from qsync.ledger.hosts import session_holder, stop_host
from qsync.ledger.ledger import Ledger
from qsync.ledger.schema import SCHEMA_VERSION

pytestmark = pytest.mark.reliability


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = Ledger(tmp_path / "q.duckdb")
    with store.transaction() as con:
        con.execute("INSERT INTO skipped VALUES ('j', 1, 'a', 'plan', 'first', now())")
    with pytest.raises(RuntimeError), store.transaction() as con:
        con.execute("INSERT INTO skipped VALUES ('j', 2, 'b', 'plan', 'second', now())")
        raise RuntimeError("crash between two writes")
    assert store.query_rows("SELECT record_id FROM skipped") == [("a",)]
    store.close()


def test_a_new_file_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    store = Ledger(path)
    assert store.query_rows("SELECT version FROM qsync_schema") == [(SCHEMA_VERSION,)]
    with store.transaction() as con:
        con.execute("UPDATE qsync_schema SET version = ?", [SCHEMA_VERSION + 1])
    store.close()
    for create in (True, False):
        with (
            pytest.raises(SchemaTooNew, match=r"written by a newer qsync .* Upgrade qsync"),
            Ledger(path, create=create) as ledger,
        ):
            ledger.query_rows("SELECT 1")


def test_ledgers_of_one_new_file_opened_at_once_in_one_process_all_work(tmp_path: Path) -> None:
    """A notebook's launcher plans while its monitor reads: each thread's Ledger opens the new file (once failed
    with DuckDB's "Catalog write-write conflict on create": both created the schema)."""
    for attempt in range(5):
        db = tmp_path / f"q{attempt}.duckdb"
        ledgers = [Ledger(db) for _ in range(6)]
        start = threading.Barrier(len(ledgers))
        errors: list[BaseException] = []

        def use(ledger: Ledger, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            start.wait()
            try:
                ledger.query_rows("SELECT count(*) FROM jobs")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=use, args=(ledger,)) for ledger in ledgers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for ledger in ledgers:
            ledger.close()
        assert not errors, errors


def test_reading_a_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no qsync checkpoint file at"):
        Ledger(tmp_path / "nothing.duckdb", create=False)
    assert not (tmp_path / "nothing.duckdb").exists()


def _create(path: Path) -> None:
    with Ledger(path) as ledger:
        ledger.query_rows("SELECT 1")
    stop_host(path)  # the file closed: another program may open it


def _hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that opens the file with plain DuckDB and keeps it, as a stuck tool would."""
    code = textwrap.dedent(
        f"""
        import duckdb, time
        con = duckdb.connect({str(path)!r})
        print("holding", flush=True)
        time.sleep({seconds})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=qsync_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_a_file_held_by_another_process_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    _create(path)
    holder = _hold(path, 30)
    try:
        store = Ledger(path, create=False, lock_timeout_s=0.5)
        with pytest.raises(LedgerLocked, match=rf"held by process {holder.pid} and was not released within"):
            store.query_rows("SELECT 1")
        store.close()
    finally:
        holder.kill()
        holder.wait()


def test_a_writer_waits_for_a_short_holder_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    _create(path)
    holder = _hold(path, 1.0)
    started = time.monotonic()
    store = Ledger(path, lock_timeout_s=20)
    with store.transaction() as con:
        con.execute("INSERT INTO skipped VALUES ('j', 1, 'a', 'plan', 'x', now())")
    assert 0.5 < time.monotonic() - started < 15
    holder.wait()
    store.close()


@pytest.mark.slow
def test_a_busy_writer_in_another_process_does_not_hold_up_readers(tmp_path: Path) -> None:
    """The writer commits in a tight loop; readers in this process still get in, every time, quickly."""
    path, stop = tmp_path / "q.duckdb", tmp_path / "stop"
    _create(path)
    code = textwrap.dedent(
        f"""
        import os
        from qsync.ledger.ledger import Ledger
        store = Ledger({str(path)!r})
        print("ready", flush=True)
        n = 0
        while not os.path.exists({str(stop)!r}):  # until the readers are done
            with store.transaction() as con:
                con.execute("INSERT INTO skipped VALUES ('w', ?, NULL, 'plan', 'x', now())", [n])
            n += 1
        store.close()
        print(n, flush=True)
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=qsync_env())
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    seen: list[int] = []
    waits: list[float] = []
    for _ in range(15):
        t0 = time.monotonic()
        with Ledger(path, create=False, lock_timeout_s=5) as reader:
            seen.append(reader.query_rows("SELECT count(*) FROM skipped")[0][0])
        waits.append(time.monotonic() - t0)
        time.sleep(0.1)
    stop.touch()
    writes = int(writer.stdout.readline())
    writer.wait()
    assert writes > 100  # the writer kept writing while being read
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert max(waits) < 2.0, waits
    assert ledger_rows(path, "SELECT count(*) FROM skipped")[0][0] == writes


def test_a_version_1_store_is_migrated_forward_keeping_its_jobs(tmp_path: Path) -> None:
    from qsync.ledger.schema import MIGRATIONS

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # a file as qsync 0.1 (schema 1) left it
        first = MIGRATIONS[0]
        assert isinstance(first, str)
        con.execute(first)
        con.execute("INSERT INTO qsync_schema VALUES (1)")
        con.execute("INSERT INTO batches (job_id, batch_no, status, records, first_ordinal, last_ordinal) "
                    "VALUES ('old', 0, 'done', 100, 0, 99)")  # fmt: skip
    store = Ledger(path, create=False)  # any command migrates it, a reading one too
    assert store.query_rows("SELECT version FROM qsync_schema") == [(SCHEMA_VERSION,)]
    assert store.query_rows("SELECT records, skipped_records FROM batches") == [(100, 0)]
    store.close()


def _in_transaction(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Another qsync process that writes a row inside a transaction and then stays inside it."""
    code = textwrap.dedent(
        f"""
        import time
        from qsync.ledger.ledger import Ledger
        with Ledger({str(path)!r}).transaction() as con:
            con.execute("INSERT INTO skipped VALUES ('lost', 1, 'a', 'plan', 'x', now())")
            con.execute("SELECT count(*) FROM skipped").fetchall()  # sent: the transaction is open on the host
            print("inside", flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "inside"
    return proc


def test_a_process_killed_inside_a_transaction_leaves_nothing_and_holds_nobody_up(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    _create(path)
    killed = _in_transaction(path, qsync_env())
    killed.kill()
    killed.wait()
    started = time.monotonic()
    with Ledger(path) as ledger:
        with ledger.transaction() as con:
            con.execute("INSERT INTO skipped VALUES ('j', 1, 'a', 'plan', 'x', now())")
        assert ledger.query_rows("SELECT job_id FROM skipped") == [("j",)]  # its write was rolled back
    assert time.monotonic() - started < 5


def test_a_process_frozen_inside_a_transaction_is_let_go(tmp_path: Path) -> None:
    """Ctrl-Z (SIGSTOP) inside a transaction: the host serves the others again once the transaction has been idle
    for QSYNC_LEDGER_SESSION_IDLE_S (30 s; 1 s here), rolling it back; the frozen process learns it when it wakes."""
    path = tmp_path / "q.duckdb"
    _create(path)
    env = qsync_env(QSYNC_LEDGER_SESSION_IDLE_S="1")
    frozen = _in_transaction(path, env)  # it started the host: the host has its environment
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        assert session_holder(path) == frozen.pid
        started = time.monotonic()
        assert ledger_rows(path, "SELECT count(*) FROM skipped") == [(0,)]  # its write was rolled back
        assert 0.5 < time.monotonic() - started < 10
        assert session_holder(path) is None
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.kill()
        frozen.wait()


def test_a_statement_longer_than_the_idle_limit_keeps_its_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle limit counts from the host's last answer, not from the request: a long statement (planning a large
    input) is not taken for a frozen client."""
    monkeypatch.setenv("QSYNC_LEDGER_SESSION_IDLE_S", "0.2")  # the host this test starts inherits it
    with Ledger(tmp_path / "q.duckdb") as ledger:
        with ledger.transaction() as con:
            con.execute("INSERT INTO skipped VALUES ('j', 1, 'a', 'plan', 'x', now())")
            started = time.monotonic()
            con.execute("SELECT sum(i) FROM range(1500000000) t(i)").fetchall()
            assert time.monotonic() - started > 0.2  # longer than the limit
            con.execute("INSERT INTO skipped VALUES ('j', 2, 'b', 'plan', 'y', now())")
        assert ledger.query_rows("SELECT count(*) FROM skipped") == [(2,)]


def test_ctrl_c_between_a_request_and_its_answer_never_shifts_the_answers(tmp_path: Path) -> None:
    """SIGINT while a query waits for the host (the runner survives a first Ctrl-C): the next query gets its own
    answer, not the interrupted one's."""
    code = textwrap.dedent(
        f"""
        import os, signal, threading, time
        from qsync.ledger.ledger import Ledger
        ledger = Ledger({str(tmp_path / "q.duckdb")!r})
        ledger.query_rows("SELECT 1")
        # Ctrl-C is armed only inside the `try`: a signal landing elsewhere (thread start, the loop's own
        # bookkeeping on a loaded machine) would end the script, not test the ledger.
        armed = False
        def on_sigint(signum, frame):
            if armed:
                raise KeyboardInterrupt
        signal.signal(signal.SIGINT, on_sigint)
        def poke():
            for _ in range(300):
                time.sleep(0.002)
                os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=poke, daemon=True).start()
        interrupted = wrong = n = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            n += 1
            try:
                armed = True
                if ledger.query_rows("SELECT ?::INTEGER", [n]) != [(n,)]:
                    wrong += 1
                armed = False
            except KeyboardInterrupt:
                armed = False
                interrupted += 1
        print(interrupted, wrong, n)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=qsync_env(), timeout=120
    )
    assert out.returncode == 0, out.stderr
    interrupted, wrong, queries = map(int, out.stdout.split())
    assert interrupted >= 10 and queries > interrupted, out.stdout
    assert wrong == 0, out.stdout


def test_cached_vectors_of_a_version_6_store_move_to_the_vector_file_unchanged(tmp_path: Path) -> None:
    """v7 moved the cache's vectors out of DuckDB (FLOAT[] column) into `<db>.vectors`: every old vector
    must come back bit for bit, whatever its size, and still be found by its key."""
    import numpy as np

    from qsync.ledger.cache import cache_key, lookup_vectors
    from qsync.ledger.schema import MIGRATIONS

    class Identity:
        def __init__(self, dims: int) -> None:
            self.model, self.dimensions, self.task_type = "m", dims, "T"

    path = tmp_path / "v6.duckdb"
    rng = np.random.default_rng(6)
    old = {dims: rng.standard_normal((5, dims)).astype(np.float32) for dims in (3, 8)}
    with duckdb.connect(str(path)) as con:  # a file as qsync left it at schema 6
        for migration in MIGRATIONS[:6]:
            assert isinstance(migration, str)
            con.execute(migration)
        con.execute("INSERT INTO qsync_schema VALUES (6)")
        for dims, matrix in old.items():
            for i, vector in enumerate(matrix):
                con.execute(
                    "INSERT INTO embeddings VALUES (?, 'm', ?, 'T', ?, 7, ?, now(), NULL)",
                    [cache_key(Identity(dims), f"h{i}"), dims, f"h{i}", vector.tolist()],
                )
    store = Ledger(path)
    assert store.query_rows("SELECT version FROM qsync_schema") == [(SCHEMA_VERSION,)]
    with store.reading() as reader:
        for dims, matrix in old.items():
            found = lookup_vectors(reader, store.vectors, Identity(dims), [f"h{i}" for i in range(5)])
            assert sorted(found.found) == [f"h{i}" for i in range(5)]
            for i in range(5):
                np.testing.assert_array_equal(found.found[f"h{i}"][0], matrix[i])
                assert found.found[f"h{i}"][1] == 7
    assert path.with_suffix(".vectors").stat().st_size == 5 * (3 + 8) * 4
    store.close()


def test_a_job_run_again_after_its_folder_was_deleted_writes_to_the_new_files(tmp_path: Path) -> None:
    """In one process (a kernel): run a job, delete its folder, run the same call again. The second run plans
    afresh in a new checkpoint file, its vectors go to the new vector file, and another process can use both."""
    import shutil

    import pandas as pd
    from qsync_testing import make_records, run_qsync

    import qsync

    work = tmp_path / "work"
    frame = pd.DataFrame(make_records(250))
    first = qsync.run(frame, collection="c", job="fresh", db=work / "q.duckdb", dimensions=16, progress=False)
    assert first.status == "completed"
    shutil.rmtree(work)
    again = qsync.run(frame, collection="c", job="fresh", db=work / "q.duckdb", dimensions=16, progress=False)
    assert again.status == "completed" and again.job_id == "fresh"
    assert (work / "q.vectors").stat().st_size == 250 * 16 * 4
    verified = run_qsync("verify", "fresh", "--db", str(work / "q.duckdb"))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_file_deleted_while_open_is_never_used_again_through_the_old_connection(tmp_path: Path) -> None:
    """The host keeps the deleted file's database open while a ledger uses it: a ledger opened afterwards gets the new
    file at the path (the old host ends, a new one opens it), and the old ledger is told, never written through."""
    path = tmp_path / "q.duckdb"
    old = Ledger(path)
    with old.reading() as con:
        con.execute("SELECT 1").fetchall()
        path.unlink()
        with Ledger(path) as new:
            assert new.query_rows("SELECT count(*) FROM jobs") == [(0,)]
        assert path.exists()
    with pytest.raises(LedgerError, match=r"deleted or replaced|host\) ended"):  # its host ended with the old file
        old.query_rows("SELECT 1")
    with pytest.raises(LedgerError, match="deleted or replaced"):  # and the new file's host tells it is not its file
        old.query_rows("SELECT 1")
    old.close()


def test_a_running_ledger_refuses_a_file_replaced_under_it(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    ledger = Ledger(path)
    with ledger.held():
        ledger.write(lambda con: con.execute("INSERT INTO skipped VALUES ('j', 1, 'a', 'plan', 'x', now())"))
        path.unlink()
        with pytest.raises(LedgerError, match="deleted or replaced while this job had it open"):
            ledger.write(lambda con: con.execute("INSERT INTO skipped VALUES ('j', 2, 'b', 'plan', 'x', now())"))
    ledger.close()
