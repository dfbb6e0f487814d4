"""A sample of a source's records, read as a job would read them (the same columns, template and checks), without
planning them: what `qsync compare` embeds."""

from __future__ import annotations

import duckdb
import pandas as pd

from qsync.input.records import INPUT_VIEW
from qsync.input.sources import Source
from qsync.spec.columns import Columns


def sample_records(source: Source, columns: Columns, size: int) -> pd.DataFrame:
    """`size` records of `source` that have a text and an id (columns id, text): those whose ids hash lowest, the
    same ones every time, and mostly the same after the table grows. A duplicated id counts once (its first row)."""
    with duckdb.connect() as con:
        source.register(con, columns)
        return con.execute(
            f"SELECT record_id AS id, text FROM {INPUT_VIEW} "
            "WHERE problem IS NULL AND nullif(trim(text), '') IS NOT NULL AND nullif(trim(record_id), '') IS NOT NULL "
            "QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY ordinal) = 1 "
            "ORDER BY hash(record_id), record_id LIMIT ?",
            [size],
        ).df()
