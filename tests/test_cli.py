"""The `qsync` command as a new user meets it: columns guessed as the notebook guesses them, a missing
column named as a usage error, tables that read like the notebooks', a run that says why it was instant.

`qsync.cli.main` runs in this process (what `python -m qsync` calls), so these tests start no interpreter.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from qsync_testing import make_records, run_qsync, wait_for, write_records

import qsync
from qsync.cli import main
from qsync.cli.output import EXIT_OK, EXIT_USAGE, print_frame
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
    assert (launcher.form.id_column.value, launcher.form.text_column.value) == ("doc_id", "body")

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
    # The estimate recorded at planning, against what was spent: the notebooks' cost view's table, line for line.
    from qsync.app.versus import versus

    shown = versus("j", db=db)
    assert shown is not None and "the estimate recorded when the job was planned" in outputs["cost"]
    for row in shown.table.itertuples(index=False):
        cells = " +".join(re.escape(str(cell)) for cell in row)
        assert re.search(rf"\n +{cells}\n", outputs["cost"]), (row, outputs["cost"])
    assert "texts to embed (0 already cached)" in outputs["cost"]
    assert "Time of work is estimated only for a Gemini model's standard calls" in " ".join(outputs["cost"].split())


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


def test_the_terminal_is_told_when_planning_starts_and_only_then(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Planning millions of rows takes seconds before the run's first event: `qsync run` says it started (even with
    --quiet, which hides the bar only). A job picked up unfinished is not planned, and says nothing of planning."""
    from qsync.app import jobs

    src, db = tmp_path / "s.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(120))
    common = ["--source", str(src), "--collection", "c", "--db", str(db), "--embedder", "hash", "--dimensions", "8"]
    code, _, err = _cli(capsys, "run", *common, "--quiet")
    assert code == EXIT_OK, err
    assert f"reading {src} and planning job 'c:s'…" in err, err
    code, _, err = _cli(capsys, "run", *common, "--quiet")  # a re-sync: a new job, planned
    assert code == EXIT_OK, err
    assert f"reading {src} and planning job 'c:s#2'…" in err, err

    heard: list[object] = []
    planned = jobs.prepare(src, db=db, collection="other", embedder="hash", dimensions=8)  # planned, not run
    result = jobs.run(src, db=db, collection="other", embedder="hash", dimensions=8, listeners=[heard.append])
    assert result.job_id == planned and result.status == "completed"
    assert not [e for e in heard if "planning" in str(getattr(e, "text", ""))], heard
    # A job planned by an earlier run that did nothing yet: `qsync run` picks it up, and says so.
    jobs.prepare(src, db=db, collection="third", embedder="hash", dimensions=8)
    code, _, err = _cli(capsys, "run", *common[:2], "--collection", "third", *common[4:], "--quiet")
    assert code == EXIT_OK, err
    assert "resuming third:s: no batch done yet (2 to do); continuing" in err and "planning" not in err, err
    code, _, err = _cli(capsys, "run", *common[:2], "--collection", "fourth", *common[4:], "--quiet")
    assert code == EXIT_OK and "resuming" not in err, err  # planned by this run: nothing resumed


def test_a_job_started_from_the_terminal_records_its_estimate_like_one_from_a_notebook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One prepare for every entry path: `qsync run` records the plan-time estimate the cost notebook shows."""
    from qsync.app import reading

    src, db = tmp_path / "r.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(150))
    code, _, err = _cli(capsys, "run", "--source", str(src), "--collection", "c", "--db", str(db),
                        "--embedder", "hash", "--dimensions", "8", "--quiet")  # fmt: skip
    assert code == EXIT_OK, err
    recorded = reading.recorded_estimate("c:r", db=db)
    assert recorded is not None and recorded["records"] == 150 and recorded["texts_to_embed"] == 150
    versus = reading.estimate_vs_actual("c:r", db=db).set_index("figure")
    # the hashing embedder counts words
    assert float(versus["estimate"].loc["tokens"]) == float(versus["actual"].loc["tokens"])


def test_a_refused_resume_changes_nothing_not_even_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`resume --max-cost-usd X` refused because a live runner owns the job must leave the stored cap alone: the
    budget is written with the lease, in its transaction, or not at all."""
    import os

    from qsync.app.jobs import create_job
    from qsync.clock import SYSTEM_CLOCK
    from qsync.ledger.lease import release_lease, take_lease
    from qsync.ledger.ledger import Ledger
    from qsync.ledger.states import JobState

    db = tmp_path / "q.duckdb"
    create_job(_records_file(tmp_path), collection="c", job="j", db=db,
               embedder="hash", dimensions=8, max_cost_usd=5.0)  # fmt: skip
    with Ledger(db) as ledger:
        lease, _ = take_lease(ledger, "j", SYSTEM_CLOCK, 60, os.getpid())  # a live runner: this process
        code, _, err = _cli(capsys, "resume", "j", "--db", str(db), "--max-cost-usd", "0.5")
        assert code == 4 and "being run by process" in err, err
        assert qsync.status("j", db=db)["max_cost_usd"] == 5.0
        release_lease(ledger, lease, SYSTEM_CLOCK, JobState.PAUSED, "paused")
    code, _, err = _cli(capsys, "resume", "j", "--db", str(db), "--max-cost-usd", "0.5", "--quiet")
    assert code == EXIT_OK, err
    assert qsync.status("j", db=db)["max_cost_usd"] == 0.5  # a run that holds the lease writes it


def _records_file(tmp_path: Path) -> Path:
    src = tmp_path / "records.jsonl"
    write_records(src, make_records(50))
    return src


def test_a_run_refused_before_planning_leaves_no_checkpoint_file(tmp_path: Path) -> None:
    """`qsync run` starts the file's host (which makes the file) while it imports the rest of qsync; a run refused
    before it opens the file (here a source that is not there) leaves no file, nor the folder made for it, behind
    once that host is gone."""
    src, db = tmp_path / "a.jsonl", tmp_path / "new" / "q.duckdb"
    out = run_qsync("run", "--source", str(src), "--collection", "c", "--db", str(db), "--embedder", "hash", "--quiet")
    assert out.returncode == 1 and "does not exist" in out.stderr, out.stderr
    wait_for(lambda: not db.parent.exists(), timeout=60)
    # With the source there, the file is made and kept.
    write_records(src, make_records(5))
    out = run_qsync("run", "--source", str(src), "--collection", "c", "--db", str(db), "--embedder", "hash", "--quiet")
    assert out.returncode == EXIT_OK, out.stderr
    assert db.exists() and qsync.status(db=db)["status"] == "completed"


def test_a_long_text_is_cut_to_a_terminal_line_and_given_whole_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    # `qsync search` shows the texts it found: a document's whole text on a terminal is a screenful per hit.
    text = "a long document " * 100
    frame = pd.DataFrame({"score": [0.91], "id": ["r1"], "text": [text]})
    print_frame(frame, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line) <= 100 for line in lines) and lines[1].endswith("...")
    assert lines[1].split()[0] == "0.910", "a score with 3 decimals, as the notebooks show it (formatting.score)"
    print_frame(frame, as_json=True)
    assert json.loads(capsys.readouterr().out)[0]["text"] == text


def test_skipped_rows_count_as_a_duplicates_reason_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "duplicate id (first seen at row 2)" beside a row number counted another way read as the wrong row.
    src, db = tmp_path / "s.jsonl", tmp_path / "q.duckdb"
    records = make_records(6)
    records[4]["id"] = records[1]["id"]  # the fifth row repeats the second's id
    records[5]["id"] = records[1]["id"]
    write_records(src, records)
    code, _, err = _cli(capsys, "run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "j",
                        "--embedder", "hash", "--dimensions", "8", "--quiet")  # fmt: skip
    assert code == EXIT_OK, err
    code, out, err = _cli(capsys, "skipped", "j", "--db", str(db))
    assert code == EXIT_OK, err
    rows = [line.split(None, 3) for line in out.splitlines()[1:]]
    assert out.split()[:4] == ["row", "id", "stage", "reason"]
    assert [(row, reason) for row, _, _, reason in rows] == [
        ("5", "duplicate id (first seen at row 2)"), ("6", "duplicate id (first seen at row 2)")
    ]  # fmt: skip
    code, out, _ = _cli(capsys, "skipped", "j", "--db", str(db), "--json")
    assert [r["ordinal"] for r in json.loads(out)] == [4, 5]  # for code: the frame's positions, from 0
    code, out, _ = _cli(capsys, "estimate", "--source", str(src), "--embedder", "hash", "--json")
    assert json.loads(out)["skip_reasons"] == {"duplicate id": 2}  # one kind of reason, not one per row
    code, out, _ = _cli(capsys, "estimate", "--source", str(src), "--embedder", "hash")
    assert "skip_reasons" in out and out.split("skip_reasons", 1)[1].split("\n")[0].strip() == "duplicate id: 2"
