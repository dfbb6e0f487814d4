"""Two `qsync` processes on one checkpoint file (two notebooks in one folder share ./qsync.duckdb): every distinct
text paid once between them, and the file left whole, also when one of them is killed."""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path

import pytest
from qsync_testing import (
    CountingEmbedder,
    make_records,
    qsync_cmd,
    qsync_env,
    read_embed_log,
    wait_for,
    write_records,
)

import qsync
from qsync.ledger.integrity import check
from qsync.ledger.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def priced_counting_factory(
    dimensions: int | None = None, latency_s: float = 0.0, price_per_million_tokens: float = 0.0
) -> CountingEmbedder:
    """The counting embedder with a price: only a paid embedder's texts are waited for across processes."""
    return CountingEmbedder(
        dimensions=dimensions or 64, latency_s=latency_s, price_per_million_tokens=price_per_million_tokens
    )


def _job_args(src: Path, db: Path, collection: str, *, latency: float = 0.03) -> list[str]:
    return [
        "run", "--source", str(src), "--collection", collection, "--db", str(db), "--job", collection,
        "--embedder", "test_two_processes:priced_counting_factory", "--price-per-million", "0.15", "--batch-size", "50",
        "--concurrency", "3", "--simulate-latency", str(latency), "--quiet",
    ]  # fmt: skip


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(qsync_cmd(*args), env=env, stdout=out, stderr=subprocess.STDOUT)


def _processed(db: Path, job: str) -> int:
    try:
        return int(qsync.status(job, db=db)["processed_records"])
    except qsync.QsyncError:
        return 0


def test_two_processes_over_the_same_texts_pay_once_for_each(tmp_path: Path) -> None:
    records = make_records(3000)
    src, db, embed_log = tmp_path / "src.jsonl", tmp_path / "q.duckdb", tmp_path / "embed.log"
    write_records(src, records)
    env = qsync_env(QSYNC_TEST_EMBED_LOG=str(embed_log))
    first = _start(_job_args(src, db, "c1", latency=0.3), env, tmp_path / "c1.log")
    # The second starts while the first is part-way: texts the first has saved are cache hits, those it is paying
    # for are waited for, and past its frontier the second claims texts that the first then waits for.
    wait_for(lambda: _processed(db, "c1") >= 300 or first.poll() is not None, timeout=240)
    second = _start(_job_args(src, db, "c2", latency=0.3), env, tmp_path / "c2.log")
    codes = [first.wait(timeout=300), second.wait(timeout=300)]
    assert codes == [0, 0], [(tmp_path / f"{n}.log").read_text()[-2000:] for n in ("c1", "c2")]

    one, two = qsync.status("c1", db=db), qsync.status("c2", db=db)
    assert two["started_at"] < one["finished_at"], "the runs did not overlap: nothing was tested"
    calls = read_embed_log(embed_log)
    counts = collections.Counter(t for call in calls for t in call["texts"])
    assert set(counts) == {r["text"] for r in records}
    assert sum(counts.values()) == len(records), f"{sum(counts.values()) - len(records)} texts paid twice"
    for info in (one, two):
        assert info["status"] == "completed" and info["processed_records"] == len(records)
    assert one["embedded_texts"] + two["embedded_texts"] == len(records)  # each paid call counted by its payer
    with Ledger(db, create=False) as ledger:
        check(ledger)  # every block of every table reads (DuckDB's checksums)
        assert ledger.query_rows("SELECT count(*) FROM text_claims") == [(0,)]  # every claim left with its batch


@pytest.mark.parametrize("victim", [0, 1])
def test_a_pair_of_jobs_on_one_file_with_a_kill_leaves_it_whole(tmp_path: Path, victim: int) -> None:
    """Different sources into two collections, one file; one runner SIGKILLed mid-run and resumed: both complete,
    each record in its collection, every table of the file readable (DuckDB's checksums), no text paid twice
    outside the calls in flight at the kill."""
    db, embed_log = tmp_path / "q.duckdb", tmp_path / "embed.log"
    sources = []
    for i, name in enumerate(("c1", "c2")):
        src = tmp_path / f"{name}.jsonl"
        write_records(src, make_records(3000, start=i * 3000, prefix=name))
        sources.append(src)
    env = qsync_env(QSYNC_TEST_EMBED_LOG=str(embed_log))
    names = ["c1", "c2"]
    runs = [
        _start(_job_args(src, db, name), env, tmp_path / f"{name}.log")
        for src, name in zip(sources, names, strict=True)
    ]
    wait_for(lambda: _processed(db, names[victim]) >= 1000 or runs[victim].poll() is not None, timeout=240)
    runs[victim].send_signal(signal.SIGKILL)
    runs[victim].wait()
    assert runs[1 - victim].wait(timeout=300) == 0
    again = _start([*_job_args(sources[victim], db, names[victim])], env, tmp_path / "resume.log")
    assert again.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-2000:]

    with Ledger(db, create=False) as ledger:
        check(ledger)
    for name in names:
        info = qsync.status(name, db=db)
        assert info["status"] == "completed" and info["processed_records"] == 3000
    counts = collections.Counter(t for call in read_embed_log(embed_log) for t in call["texts"])
    assert len(counts) == 6000
    assert sum(counts.values()) - 6000 <= 3 * 50  # at most the killed runner's calls in flight
