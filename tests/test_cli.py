"""The `qsync` command as a new user meets it: tables that read like the notebooks'.

`qsync.cli.main` runs in this process (what `python -m qsync` calls), so these tests start no interpreter.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from qsync_testing import make_records, write_records

import qsync
from qsync.cli import EXIT_OK, main
from qsync.formatting import usd


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_tables_show_dollars_and_no_nan_or_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, db = tmp_path / "s.jsonl", tmp_path / "q.duckdb"
    records = make_records(150)
    records[3]["text"] = None  # skipped at planning: its row in `qsync skipped` has no batch
    write_records(src, records)
    code, _, err = _cli(capsys, "run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "j",
                        "--embedder", "hash", "--dimensions", "8", "--price-per-million", "0.15", "--quiet")  # fmt: skip
    assert code == EXIT_OK, err
    outputs = {}
    for command in (["jobs"], ["status", "j"], ["cost", "j"], ["batches", "j"], ["skipped", "j"]):
        code, out, err = _cli(capsys, *command, "--db", str(db))
        assert code == EXIT_OK, err
        assert not re.search(r"\b(NaN|None|NaT|nan)\b", out), (command, out)
        outputs[command[0]] = out
    spent = usd(qsync.status("j", db=db)["cost_usd"])  # $0.00011: two significant digits, as in the notebooks
    assert spent.startswith("$0.000") and f" {spent} " in outputs["jobs"]
    assert re.search(rf"\ncost_usd +{re.escape(spent)}\n", outputs["status"])
    assert re.search(rf"\ncost_usd +{re.escape(spent)}\n", outputs["cost"])
    assert re.search(r"max_cost_usd +—\n", outputs["status"])  # no cap: a dash, not None
    assert re.search(r"\bdone +100 +0 +1 +— ", outputs["batches"])  # records, skipped, attempts; no last error: a dash
