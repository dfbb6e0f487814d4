"""Does a driver find the password where libpq looks (PGPASSWORD) and take libpq's keyword strings? qsync promises
both (a stored job keeps its connection string without the password; a re-sync finds it again there). ADBC's
driver is libpq inside (tests/test_postgres.py checks it); connectorx is checked here.

    python benchmarks/postgres_libpq_check.py > benchmarks/results/postgres/connectorx_libpq.txt 2>&1
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import connectorx as cx
from pg_server import READER, READER_PASSWORD, throwaway_server

with throwaway_server() as server:
    os.environ["PGPASSWORD"] = READER_PASSWORD
    for dsn in (server.url(password=None), f"host=127.0.0.1 port={server.port} dbname=qsync_test user={READER}"):
        try:
            print(dsn, "->", cx.read_sql(dsn, "SELECT 1 AS x", return_type="arrow").num_rows, "row")
        except Exception as exc:
            print(dsn, "-> failed:", repr(exc)[:300])
