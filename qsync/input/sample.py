"""A sample of a source's records, read as a job would read them (the same columns, template and checks), without
planning them: what `qsync compare` embeds."""

from __future__ import annotations

import duckdb
import pandas as pd

from qsync.input.records import INPUT_VIEW
from qsync.input.sources import Source
from qsync.spec.columns import Columns


def sample_records(source: Source, columns: Columns, size: int) -> pd.DataFrame:
    """`size` records of `source` (columns id, text) that a job would embed: those whose ids hash lowest (md5: the
    same ones every time, and mostly the same after the table grows). Rows the planner skips are left out by its own
    rules (a blank id or text; a duplicated id: every row after its first, even when the first is bad), and so is a
    text another sampled record already has (identical texts tie as neighbours at every size)."""
    blank = r"regexp_full_match({}, '[\s\p{{Z}}]*')"
    with duckdb.connect() as con:
        source.register(con, columns)
        return con.execute(
            f"""
            WITH n AS (
                SELECT record_id, text, problem, ordinal, min(ordinal) OVER (PARTITION BY record_id) AS first_ordinal
                FROM {INPUT_VIEW}
            )
            SELECT record_id AS id, text FROM n
            WHERE ordinal = first_ordinal AND problem IS NULL AND record_id IS NOT NULL AND text IS NOT NULL
              AND NOT {blank.format("record_id")} AND NOT {blank.format("text")}
            QUALIFY row_number() OVER (PARTITION BY text ORDER BY md5(record_id), record_id) = 1
            ORDER BY md5(record_id), record_id LIMIT ?
            """,
            [size],
        ).df()
