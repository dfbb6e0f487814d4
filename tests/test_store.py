"""The DuckDB store: atomic transactions, schema versions, and sharing the file between processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from qsync_testing import qsync_env

from qsync.errors import SchemaTooNew, StoreError, StoreLocked
from qsync.schema import SCHEMA_VERSION
from qsync.store import Store, open_store

pytestmark = pytest.mark.reliability


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "q.duckdb"), writable=True)
    with store.transaction() as con:
        con.execute("INSERT INTO skipped VALUES ('j', 1, 'a', 'plan', 'first', now())")
    with pytest.raises(RuntimeError), store.transaction() as con:
        con.execute("INSERT INTO skipped VALUES ('j', 2, 'b', 'plan', 'second', now())")
        raise RuntimeError("crash between two writes")
    assert store.query_rows("SELECT record_id FROM skipped") == [("a",)]
    store.close()


def test_a_new_file_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    store = Store(str(path), writable=True)
    assert store.query_rows("SELECT version FROM qsync_schema") == [(SCHEMA_VERSION,)]
    with store.transaction() as con:
        con.execute("UPDATE qsync_schema SET version = ?", [SCHEMA_VERSION + 1])
    store.close()
    for writable in (True, False):
        with pytest.raises(SchemaTooNew, match=r"written by a newer qsync .* Upgrade qsync"):
            Store(str(path), writable=writable).query_rows("SELECT 1")


def test_reading_a_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no qsync store at"):
        open_store(tmp_path / "nothing.duckdb", writable=False)


def _create(path: Path) -> None:
    store = Store(str(path), writable=True)
    store.query_rows("SELECT 1")
    store.close()


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
        store = Store(str(path), writable=False, lock_timeout_s=0.5)
        with pytest.raises(StoreLocked, match=rf"held by process {holder.pid} and was not released within"):
            store.query_rows("SELECT 1")
    finally:
        holder.kill()
        holder.wait()


def test_a_writer_waits_for_a_short_holder_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    _create(path)
    holder = _hold(path, 1.0)
    started = time.monotonic()
    store = Store(str(path), writable=True, lock_timeout_s=20)
    with store.transaction() as con:
        con.execute("INSERT INTO skipped VALUES ('j', 1, 'a', 'plan', 'x', now())")
    assert 0.5 < time.monotonic() - started < 15
    holder.wait()
    store.close()


@pytest.mark.slow
def test_a_busy_writer_in_another_process_yields_to_readers(tmp_path: Path) -> None:
    """The writer commits in a tight loop; readers in this process still get in, every time, quickly."""
    path, stop = tmp_path / "q.duckdb", tmp_path / "stop"
    _create(path)
    code = textwrap.dedent(
        f"""
        import os
        from qsync.store import Store
        store = Store({str(path)!r}, writable=True)
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
        seen.append(Store(str(path), writable=False, lock_timeout_s=5).query_rows("SELECT count(*) FROM skipped")[0][0])
        waits.append(time.monotonic() - t0)
        time.sleep(0.1)
    stop.touch()
    writes = int(writer.stdout.readline())
    writer.wait()
    assert writes > 100  # the writer kept writing while being read
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert max(waits) < 2.0, waits
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM skipped").fetchall()[0][0] == writes


def test_a_version_1_store_is_migrated_forward_keeping_its_jobs(tmp_path: Path) -> None:
    from qsync.schema import MIGRATIONS

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # a file as qsync 0.1 (schema 1) left it
        con.execute(MIGRATIONS[0])
        con.execute("INSERT INTO qsync_schema VALUES (1)")
        con.execute("INSERT INTO batches (job_id, batch_no, status, records, first_ordinal, last_ordinal) "
                    "VALUES ('old', 0, 'done', 100, 0, 99)")  # fmt: skip
    with pytest.raises(StoreError, match="schema version 1; run any qsync job command once to migrate"):
        Store(str(path), writable=False).query_rows("SELECT 1")
    store = Store(str(path), writable=True)
    assert store.query_rows("SELECT version FROM qsync_schema") == [(SCHEMA_VERSION,)]
    assert store.query_rows("SELECT records, skipped_records FROM batches") == [(100, 0)]
    store.close()


def test_a_request_left_by_a_killed_process_does_not_stall_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "q.duckdb"
    _create(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    waiting = Path(str(path) + ".waiting")
    waiting.mkdir(exist_ok=True)
    (waiting / f"{dead.pid}-deadbeef").touch()  # as a reader SIGKILLed while waiting would leave it
    store = Store(str(path), writable=True)
    started = time.monotonic()
    for n in range(20):
        with store.transaction() as con:
            con.execute("INSERT INTO skipped VALUES ('j', ?, NULL, 'plan', 'x', now())", [n])
        time.sleep(0.03)
    assert time.monotonic() - started < 3.0  # not 20 yields of up to a second each
    assert not list(waiting.iterdir())
    store.close()


def test_cached_vectors_of_a_version_6_store_move_to_the_vector_file_unchanged(tmp_path: Path) -> None:
    """v7 moved the cache's vectors out of DuckDB (FLOAT[] column) into `<db>.vectors`: every old vector
    must come back bit for bit, whatever its size, and still be found by its key."""
    import numpy as np

    from qsync.cache import cache_key, lookup_vectors
    from qsync.schema import MIGRATIONS
    from qsync.vectorfile import vector_file_for

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
    store = Store(str(path), writable=True)
    assert store.query_rows("SELECT version FROM qsync_schema") == [(SCHEMA_VERSION,)]
    with store.reading() as con:
        for dims, matrix in old.items():
            found = lookup_vectors(con, vector_file_for(path), Identity(dims), [f"h{i}" for i in range(5)])
            assert sorted(found) == [f"h{i}" for i in range(5)]
            for i in range(5):
                np.testing.assert_array_equal(found[f"h{i}"][0], matrix[i])
                assert found[f"h{i}"][1] == 7
    assert path.with_suffix(".vectors").stat().st_size == 5 * (3 + 8) * 4
    store.close()
