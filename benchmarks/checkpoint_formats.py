"""What persisting a batch of embedding vectors costs in a DuckDB checkpoint, per storage format.

    python benchmarks/checkpoint_formats.py [--batches 2000] [--dims 768] [--out DIR] [--repeats 3]
                                            [--configs A-pk-def,C-pk-1g,...] [--json FILE]

Each batch persists 100 random unit float32 vectors with their cache keys
("gemini-embedding-001|768|RETRIEVAL_DOCUMENT|<sha256 hex>") in one durable transaction, into a fresh
DuckDB file per trial. Formats:

  A  vector FLOAT[]      from an Arrow FixedSizeListArray cast to list<float32> (qsync today)
  B  vector FLOAT[dims]  (fixed-size ARRAY) from an Arrow FixedSizeListArray
  C  vector BLOB         raw float32 bytes (Arrow fixed_size_binary), np.frombuffer on read
  D  side file           raw float32 appended to vectors-<dims>.f32 and fsynced, then a DuckDB row per
                         vector (cache_key, metadata, row number in the side file) committed; os.pread on read

Variants: the key (PRIMARY KEY, a separate UNIQUE index, or none), ON CONFLICT DO NOTHING or a plain
INSERT, and WAL checkpoints (DuckDB's default 16 MiB threshold, checkpoint_threshold='1GB', or that plus
a manual CHECKPOINT every N batches, timed apart from the batches). Trials of all configs alternate
(shuffled order in each round). Per trial: wall and CPU (time.process_time, all threads) per batch, the
manual checkpoints, the close (which checkpoints what is left in the WAL), the file size per vector,
and the median time to look up 100 random existing keys as an (n, dims) float32 matrix, both in the
writing session and after reopening the file. A commit-floor probe measures an empty BEGIN/COMMIT, a
one-row UPDATE in a 2,000-row table and a bare write+fsync of one batch's bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

BATCH = 100
MODEL, TASK = "gemini-embedding-001", "RETRIEVAL_DOCUMENT"
LOOKUPS = 50


@dataclass(frozen=True)
class Config:
    name: str
    fmt: str  # A | B | C | D
    key: str = "pk"  # pk | unique | none
    on_conflict: bool = True  # ON CONFLICT DO NOTHING (needs a key); else a plain INSERT
    threshold: str | None = None  # checkpoint_threshold; None = DuckDB's default (16 MiB)
    checkpoint_every: int = 0  # manual CHECKPOINT every N batches (0 = never)


def _configs() -> list[Config]:
    out: list[Config] = []
    for fmt in "ABCD":
        out.append(Config(f"{fmt}-pk-def", fmt))
        out.append(Config(f"{fmt}-pk-1g", fmt, threshold="1GB"))
    for fmt in "ACD":
        out.append(Config(f"{fmt}-pk-1g+ck250", fmt, threshold="1GB", checkpoint_every=250))
        out.append(Config(f"{fmt}-nokey-def", fmt, key="none", on_conflict=False))
    out.append(Config("C-uniq-def", "C", key="unique"))
    out.append(Config("C-pk-plain-def", "C", on_conflict=False))
    out.append(Config("D-pk-plain-def", "D", on_conflict=False))
    return out


CONFIGS = {c.name: c for c in _configs()}


@dataclass
class Trial:
    config: str
    round: int
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    checkpoint_wall_ms: list[float] = field(default_factory=list)
    checkpoint_cpu_ms: list[float] = field(default_factory=list)
    close_wall_ms: float = 0.0
    close_cpu_ms: float = 0.0
    bytes_per_vector: float = 0.0
    lookup_live_ms: float = 0.0
    lookup_reopen_ms: float = 0.0


class Data:
    """Cache keys for every batch and a small pool of dense unit vectors (content does not matter)."""

    def __init__(self, batches: int, dims: int, pool: int = 16) -> None:
        self.dims = dims
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((pool, BATCH, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
        self.pool = vectors
        self.hashes = [[hashlib.sha256(f"{b}/{i}".encode()).hexdigest() for i in range(BATCH)] for b in range(batches)]
        self.keys = [[f"{MODEL}|{dims}|{TASK}|{h}" for h in hs] for hs in self.hashes]

    def vectors(self, b: int) -> np.ndarray:
        return self.pool[b % len(self.pool)]

    def expected(self, key: str) -> np.ndarray:
        b, i = map(int, self._index[key].split("/"))
        return self.vectors(b)[i]

    def sample_keys(self, batches: int, rng: random.Random) -> list[str]:
        return [self.keys[rng.randrange(batches)][rng.randrange(BATCH)] for _ in range(BATCH)]

    @property
    def _index(self) -> dict[str, str]:
        if not hasattr(self, "_idx"):
            self._idx = {k: f"{b}/{i}" for b, ks in enumerate(self.keys) for i, k in enumerate(ks)}
        return self._idx


def _ddl(cfg: Config, dims: int) -> str:
    vector = {
        "A": "vector FLOAT[] NOT NULL",
        "B": f"vector FLOAT[{dims}] NOT NULL",
        "C": "vector BLOB NOT NULL",
        "D": "vec_row BIGINT NOT NULL",
    }[cfg.fmt]
    key = "cache_key VARCHAR PRIMARY KEY" if cfg.key == "pk" else "cache_key VARCHAR NOT NULL"
    ddl = (
        f"CREATE TABLE embeddings ({key}, model VARCHAR NOT NULL, dimensions INTEGER NOT NULL, "
        f"task_type VARCHAR NOT NULL, content_hash VARCHAR NOT NULL, tokens INTEGER NOT NULL, {vector}, "
        f"created_at TIMESTAMP NOT NULL, origin VARCHAR);"
    )
    if cfg.key == "unique":
        ddl += " CREATE UNIQUE INDEX embeddings_key ON embeddings (cache_key);"
    return ddl


def _vector_column(cfg: Config, vectors: np.ndarray, dims: int, first_row: int) -> pa.Array:
    flat = np.ascontiguousarray(vectors, dtype=np.float32).ravel()
    if cfg.fmt == "A":
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), dims).cast(pa.list_(pa.float32()))
    if cfg.fmt == "B":
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), dims)
    if cfg.fmt == "C":  # zero-copy view of the matrix as len(vectors) values of 4*dims bytes
        return pa.Array.from_buffers(pa.binary(4 * dims), len(vectors), [None, pa.py_buffer(flat)])
    return pa.array(np.arange(first_row, first_row + len(vectors), dtype=np.int64))


class Sink:
    """One trial's DuckDB file (and side file for D)."""

    def __init__(self, cfg: Config, dims: int, folder: Path) -> None:
        self.cfg, self.dims, self.folder = cfg, dims, folder
        self.db = folder / "ckpt.duckdb"
        self.side = folder / f"vectors-{dims}.f32"
        self.con = self._open()
        self.con.execute(_ddl(cfg, dims))
        self.side_fd = os.open(self.side, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if cfg.fmt == "D" else -1
        self.rows = 0
        verb = "INSERT INTO embeddings SELECT * FROM new_vectors"
        self.insert_sql = verb + (" ON CONFLICT DO NOTHING" if cfg.on_conflict else "")

    def _open(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(str(self.db))
        if self.cfg.threshold:
            con.execute(f"SET checkpoint_threshold = '{self.cfg.threshold}'")
        return con

    def persist(self, keys: list[str], hashes: list[str], vectors: np.ndarray) -> None:
        n = len(keys)
        if self.cfg.fmt == "D":  # vectors durable first; an orphan tail after a crash is harmless
            os.write(self.side_fd, np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            os.fsync(self.side_fd)
        table = pa.table(
            {
                "cache_key": keys,
                "model": [MODEL] * n,
                "dimensions": pa.array([self.dims] * n, pa.int32()),
                "task_type": [TASK] * n,
                "content_hash": hashes,
                "tokens": pa.array([10] * n, pa.int32()),
                "vector": _vector_column(self.cfg, vectors, self.dims, self.rows),
                "created_at": pa.array([time.time_ns() // 1000] * n, pa.timestamp("us")),
                "origin": pa.array([None] * n, pa.string()),
            }
        )
        con = self.con
        con.register("new_vectors", table)
        try:
            con.execute("BEGIN")
            con.execute(self.insert_sql)
            con.execute("COMMIT")
        finally:
            con.unregister("new_vectors")
        self.rows += n

    def lookup(self, keys: list[str]) -> tuple[list[str], np.ndarray]:
        """The keys found and their vectors as an (n, dims) float32 matrix."""
        placeholders = ", ".join("?" * len(keys))
        column = "vec_row" if self.cfg.fmt == "D" else "vector"
        rel = self.con.sql(
            f"SELECT cache_key, {column} FROM embeddings WHERE cache_key IN ({placeholders})", params=keys
        )
        table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        found = table.column("cache_key").to_pylist()
        col = table.column(column).combine_chunks()
        if self.cfg.fmt in "AB":
            matrix = col.flatten().to_numpy().reshape(len(found), self.dims)
        elif self.cfg.fmt == "C":
            width = 4 * self.dims
            if pa.types.is_fixed_size_binary(col.type):
                data = col.buffers()[1]
                start = col.offset * width
            else:
                offsets = np.frombuffer(col.buffers()[1], np.int32 if col.type == pa.binary() else np.int64)
                offsets = offsets[col.offset : col.offset + len(col) + 1]
                assert (np.diff(offsets) == width).all()
                data, start = col.buffers()[2], int(offsets[0])
            matrix = np.frombuffer(data, np.float32, count=len(found) * self.dims, offset=start).reshape(-1, self.dims)
        else:
            rows = col.to_numpy()
            order = np.argsort(rows)
            fd = os.open(self.side, os.O_RDONLY)
            try:
                width = 4 * self.dims
                chunks = [os.pread(fd, width, int(rows[i]) * width) for i in order]
            finally:
                os.close(fd)
            matrix = np.empty((len(found), self.dims), np.float32)
            matrix[order] = np.frombuffer(b"".join(chunks), np.float32).reshape(-1, self.dims)
        return found, matrix

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT")

    def close(self) -> None:
        self.con.close()
        if self.side_fd >= 0:
            os.close(self.side_fd)
            self.side_fd = -1

    def reopen(self) -> None:
        self.con = self._open()

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir())


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w) * 1000, (time.process_time() - c) * 1000


def _median_lookup(sink: Sink, data: Data, batches: int, seed: int) -> float:
    rng = random.Random(seed)
    times = []
    for i in range(LOOKUPS + 1):
        keys = data.sample_keys(batches, rng)
        t = time.perf_counter()
        found, matrix = sink.lookup(keys)
        times.append((time.perf_counter() - t) * 1000)
        if i == 0:  # correctness once; first (cold) call is not counted
            assert set(found) == set(keys), "lookup lost keys"
            for k, row in zip(found, matrix, strict=True):
                assert np.array_equal(row, data.expected(k))
    return statistics.median(times[1:])


def run_trial(cfg: Config, data: Data, batches: int, out: Path, rnd: int) -> Trial:
    folder = Path(tempfile.mkdtemp(prefix=f"{cfg.name}-", dir=out))
    trial = Trial(cfg.name, rnd)
    try:
        sink = Sink(cfg, data.dims, folder)
        for b in range(batches):
            w, c = _timed(lambda b=b: sink.persist(data.keys[b], data.hashes[b], data.vectors(b)))
            trial.wall_ms.append(w)
            trial.cpu_ms.append(c)
            if cfg.checkpoint_every and (b + 1) % cfg.checkpoint_every == 0:
                w, c = _timed(sink.checkpoint)
                trial.checkpoint_wall_ms.append(w)
                trial.checkpoint_cpu_ms.append(c)
        trial.lookup_live_ms = _median_lookup(sink, data, batches, seed=rnd)
        trial.close_wall_ms, trial.close_cpu_ms = _timed(sink.close)
        trial.bytes_per_vector = sink.size() / (batches * BATCH)
        sink.reopen()
        trial.lookup_reopen_ms = _median_lookup(sink, data, batches, seed=rnd + 1000)
        sink.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return trial


def commit_floor(out: Path, dims: int, n: int = 300) -> dict[str, float]:
    """An empty BEGIN/COMMIT, a one-row UPDATE in a 2,000-row table, and a bare write+fsync of one batch."""
    folder = Path(tempfile.mkdtemp(prefix="floor-", dir=out))
    try:
        con = duckdb.connect(str(folder / "floor.duckdb"))
        con.execute("CREATE TABLE batches (batch_no INTEGER PRIMARY KEY, state VARCHAR, done_at TIMESTAMP)")
        con.execute("INSERT INTO batches SELECT i, 'pending', NULL FROM range(2000) t(i)")
        result: dict[str, float] = {}

        def measure(label: str, fn: Callable[[int], None]) -> None:
            walls, cpus = [], []
            for i in range(n):
                w, c = _timed(lambda i=i: fn(i))
                walls.append(w)
                cpus.append(c)
            result[f"{label} wall median"] = statistics.median(walls)
            result[f"{label} wall p99"] = float(np.percentile(walls, 99))
            result[f"{label} cpu mean"] = statistics.fmean(cpus)

        def empty(_: int) -> None:
            con.execute("BEGIN")
            con.execute("COMMIT")

        def update(i: int) -> None:
            con.execute("BEGIN")
            con.execute("UPDATE batches SET state = 'done', done_at = now() WHERE batch_no = ?", [i % 2000])
            con.execute("COMMIT")

        measure("empty BEGIN/COMMIT", empty)
        measure("UPDATE 1 row + COMMIT", update)
        con.close()
        fd = os.open(folder / "raw.f32", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        payload = np.zeros((BATCH, dims), np.float32).tobytes()

        def raw(_: int) -> None:
            os.write(fd, payload)
            os.fsync(fd)

        measure(f"write {len(payload) // 1024} KiB + fsync", raw)
        os.close(fd)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- reporting ---------------------------------------------------------------------------------------


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def summarize(trials: list[Trial], batches: int) -> Iterator[list[str]]:
    by: dict[str, list[Trial]] = {}
    for t in trials:
        by.setdefault(t.config, []).append(t)
    for name, ts in by.items():

        def per(fn: Callable[[Trial], float], ts: list[Trial] = ts) -> list[float]:
            return [fn(t) for t in ts]

        all_in = per(lambda t: (sum(t.cpu_ms) + sum(t.checkpoint_cpu_ms) + t.close_cpu_ms) / batches)
        yield [
            name,
            str(len(ts)),
            _spread(per(lambda t: statistics.median(t.wall_ms))),
            _spread(per(lambda t: float(np.percentile(t.wall_ms, 99)))),
            _spread(per(lambda t: max(t.wall_ms)), "{:.0f}"),
            _spread(per(lambda t: statistics.fmean(t.cpu_ms))),
            _spread(per(lambda t: statistics.median(t.checkpoint_wall_ms) if t.checkpoint_wall_ms else 0.0), "{:.0f}"),
            _spread(per(lambda t: t.close_wall_ms), "{:.0f}"),
            _spread(all_in),
            _spread(per(lambda t: t.bytes_per_vector), "{:.0f}"),
            _spread(per(lambda t: t.lookup_live_ms), "{:.2f}"),
            _spread(per(lambda t: t.lookup_reopen_ms), "{:.2f}"),
        ]


HEADER = [
    "config",
    "runs",
    "wall med ms",
    "wall p99 ms",
    "wall max ms",
    "cpu mean ms",
    "manual ckpt ms",
    "close ms",
    "all-in cpu ms",
    "bytes/vec",
    "lookup ms",
    "lookup reopen ms",
]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = " | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2000, help="batches of 100 vectors per trial")
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--out", type=Path, default=None, help="folder for the trial files (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; every config runs once per round")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated; known: " + ",".join(CONFIGS))
    parser.add_argument("--json", type=Path, default=None, help="also write every trial's summary here")
    args = parser.parse_args()
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="qsync-ckpt-"))
    out.mkdir(parents=True, exist_ok=True)
    configs = [CONFIGS[n] for n in args.configs.split(",")]
    print(
        f"duckdb {duckdb.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}; {os.cpu_count()} cpus; "
        f"{args.batches} batches x {BATCH} vectors x {args.dims} dims per trial; {args.repeats} rounds; files in {out}"
    )
    data = Data(args.batches, args.dims)
    trials: list[Trial] = []
    floors: list[dict[str, float]] = []
    started = time.perf_counter()
    for rnd in range(args.repeats):
        order = configs[:]
        random.Random(rnd).shuffle(order)  # alternate configs; a different order each round
        floors.append(commit_floor(out, args.dims))
        for cfg in order:
            t = run_trial(cfg, data, args.batches, out, rnd)
            trials.append(t)
            print(
                f"  round {rnd} {cfg.name:18s} wall med {statistics.median(t.wall_ms):6.1f} ms  "
                f"cpu mean {statistics.fmean(t.cpu_ms):6.1f} ms  max {max(t.wall_ms):6.0f} ms  "
                f"close {t.close_wall_ms:6.0f} ms  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            if args.json:  # after every trial, so an interrupted run keeps what it measured
                args.json.write_text(json.dumps({"trials": [asdict(t) for t in trials], "floors": floors}))

    print(
        "\nPer batch of 100 vectors (median of runs, (min-max) across runs). wall/cpu: the batch's persist "
        "(Arrow table, file write+fsync for D, BEGIN/INSERT/COMMIT). manual ckpt: median CHECKPOINT, not in "
        "the batch figures. close: closing the connection (checkpoints the WAL). all-in cpu: batches + manual "
        "checkpoints + close, per batch. bytes/vec: files after close / vectors. lookup: median of "
        f"{LOOKUPS} lookups of 100 random existing keys into an (n, {args.dims}) float32 matrix, in the writing "
        "session / after reopening.\n"
    )
    print_table(list(summarize(trials, args.batches)))
    print("\nCommit floor (median of rounds, (min-max)):")
    for k in floors[0]:
        print(f"  {k:40s} {_spread([f[k] for f in floors], '{:.2f}')} ms")
    print("\nConfigs: " + "; ".join(f"{c.name}: {_describe(c)}" for c in configs))


def _describe(c: Config) -> str:
    key = {"pk": "PRIMARY KEY", "unique": "UNIQUE INDEX", "none": "no key"}[c.key]
    ins = "ON CONFLICT DO NOTHING" if c.on_conflict else "plain INSERT"
    ck = f"checkpoint_threshold={c.threshold}" if c.threshold else "default threshold"
    if c.checkpoint_every:
        ck += f" + CHECKPOINT every {c.checkpoint_every}"
    return f"{c.fmt}, {key}, {ins}, {ck}"


if __name__ == "__main__":
    main()
