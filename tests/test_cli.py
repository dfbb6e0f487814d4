"""The `qsync` command as a new user meets it: columns guessed as the notebook guesses them, a missing
column named as a usage error, tables that read like the notebooks', a run that says why it was instant.

`qsync.cli.main` runs in this process (what `python -m qsync` calls), so these tests start no interpreter.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from qsync_testing import make_records, write_records

import qsync
from qsync.cli import EXIT_OK, EXIT_USAGE, main
from qsync.formatting import usd


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_guesses_the_id_and_text_columns_the_launcher_guesses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qsync.notebook import Launcher

    src, db = tmp_path / "articles.csv", tmp_path / "q.duckdb"
    write_records(src, [{"doc_id": r["id"], "n": r["n"], "body": r["text"]} for r in make_records(120)])
    launcher = Launcher(source=str(src), collection="c", db=db)
    assert (launcher.id_column.value, launcher.text_column.value) == ("doc_id", "body")

    code, out, err = _cli(capsys, "run", "--source", str(src), "--collection", "c", "--db", str(db),
                          "--embedder", "hash", "--dimensions", "8", "--quiet")  # fmt: skip
    assert code == EXIT_OK, err
    assert "id column: 'doc_id' (guessed" in err and "text column: 'body' (guessed" in err
    assert "c:articles: completed" in out and "120 loaded" in out
    code, out, err = _cli(capsys, "estimate", "--source", str(src), "--db", str(db), "--json")
    assert code == EXIT_OK, err
    assert json.loads(out)["valid_records"] == 120


def test_a_missing_column_is_a_usage_error_that_names_the_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, jsonl, db = tmp_path / "a.csv", tmp_path / "b.jsonl", tmp_path / "q.duckdb"
    write_records(csv, [{"id": r["id"], "body": r["text"], "n": r["n"]} for r in make_records(20)])
    write_records(jsonl, make_records(20))
    common = ["--collection", "c", "--db", str(db), "--embedder", "hash", "--dimensions", "8", "--quiet"]
    attempts = [
        (["--source", str(csv), "--text-column", "bdoy"], "'bdoy' not found (columns are: id, body, n)"),
        (
            ["--source", str(jsonl), "--text-column", "txt"],
            "'txt' not found (columns are: id, n, text)",
        ),  # no record has it
        (["--source", str(csv), "--payload-columns", "title"], "'title' not found (columns are: id, body, n)"),
        (["--source", str(jsonl), "--id-column", "key"], "'key' not found (columns are: id, n, text)"),
    ]
    for args, message in attempts:
        code, _, err = _cli(capsys, "run", *args, *common)
        assert code == EXIT_USAGE and message in err and "Traceback" not in err, (args, err)
    nothing = tmp_path / "c.csv"
    write_records(nothing, [{"k": 1, "v": "x"}])
    code, _, err = _cli(capsys, "run", "--source", str(nothing), *common)
    assert code == EXIT_USAGE and "no column is named like an id (columns are: k, v)" in err
    code, _, err = _cli(capsys, "estimate", "--source", str(nothing), "--id-column", "k")
    assert code == EXIT_USAGE and "no column is named like a text (columns are: k, v)" in err
    assert "--text-column or --text-template" in err
    assert qsync.jobs(db=db).empty  # refused before anything was planned


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


def test_a_run_whose_texts_are_all_cached_says_why_it_was_instant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, db = tmp_path / "s.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(120))
    common = ["--source", str(src), "--db", str(db), "--embedder", "hash", "--dimensions", "8", "--quiet"]
    code, out, err = _cli(capsys, "run", *common, "--collection", "first")
    assert code == EXIT_OK, err
    assert "embedding cache" not in out  # it embedded every text
    started = time.monotonic()
    code, out, err = _cli(capsys, "run", *common, "--collection", "second", "--simulate-latency", "5")
    assert code == EXIT_OK, err
    assert time.monotonic() - started < 5  # not one simulated call
    assert "all 120 texts were in the embedding cache: 0 API calls" in out
    assert "--simulate-latency 5 slows embedder calls only" in out
