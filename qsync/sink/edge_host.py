"""The process that holds one Qdrant Edge shard open: `python -m qsync.sink.edge_host`, started by shards.py.

Qdrant Edge maps its files into memory. When the disk fills up, or a file of the shard is made read-only while it
is open, the next write to a mapped page kills the process with SIGBUS: no exception, no message, and nothing a
check beforehand can fully rule out (Edge's own background threads write too). So the shard lives in a process of
its own, and qsync's process stays alive to say what happened and leave the job resumable.

It reads requests from stdin and answers on stdout, one at a time: an 8-byte length, then a pickle (both ends are
qsync, on one machine). A request is a tuple (`open`, `update`, `flush`, `retrieve_ids`, `payload_schema`,
`scroll`, `query`, `close`); the answer is ("ok", value) or ("error", text). When stdin closes (its parent exited,
or was killed), it flushes, closes the shard and exits: every update it acknowledged is durable.

Kept to the standard library and qdrant_edge, so that it starts in a moment.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import IO, Any

_LENGTH = struct.Struct(">Q")


def read_message(stream: IO[bytes]) -> Any:
    """One framed pickle from `stream`; EOFError when it is closed."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError
    size = _LENGTH.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def write_message(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


class Host:
    def __init__(self) -> None:
        self.shard: Any = None
        self.path: Path | None = None
        self.lock_fd: int | None = None

    def open(self, path: str, config: dict[str, Any] | None) -> None:
        from qdrant_edge import EdgeConfig, EdgeShard, EdgeVectorParams

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock_fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError("WouldBlock: the shard is in use by another process") from None
        _probe_wal(self.path)
        if (self.path / "edge_config.json").is_file():
            self.shard = EdgeShard.load(str(self.path))
            return
        if config is None:
            raise LookupError(f"there is no Qdrant Edge shard at {self.path}")
        vectors = {name: EdgeVectorParams(dims, _distance(distance), on_disk=on_disk)
                   for name, (dims, distance, on_disk) in config["vectors"].items()}  # fmt: skip
        unnamed = vectors.pop("", None)
        self.shard = EdgeShard.create(str(self.path), EdgeConfig(vectors=unnamed if unnamed is not None else vectors))

    def update(self, kind: str, *args: Any) -> None:
        from qdrant_edge import Point, PointVectors, UpdateOperation

        if kind == "upsert":
            ids, name, vectors, payloads = args
            rows = vectors.tolist()  # Edge takes lists faster than numpy rows
            points = [Point(i, {name: v} if name else v, p) for i, v, p in zip(ids, rows, payloads, strict=True)]
            operation = UpdateOperation.upsert_points(points)
        elif kind == "update_vectors":
            ids, name, vectors = args
            operation = UpdateOperation.update_vectors(
                [PointVectors(i, {name: v}) for i, v in zip(ids, vectors.tolist(), strict=True)]
            )
        elif kind == "set_payload":
            point, payload = args
            operation = UpdateOperation.set_payload([point], payload)
        elif kind == "delete_payload":
            point, keys = args
            operation = UpdateOperation.delete_payload([point], keys)
        elif kind == "create_dense_vector":
            name, dims, distance = args
            operation = UpdateOperation.create_dense_vector(name, dims, _distance(distance))
        elif kind == "create_field_index":
            field, index = args
            operation = UpdateOperation.create_field_index(field, _index_type(index))
        elif kind == "delete":
            operation = UpdateOperation.delete_points(list(args[0]))
        else:
            raise ValueError(f"unknown update {kind!r}")
        self.shard.update(operation)

    def retrieve_ids(self, ids: list[str]) -> list[str]:
        return [str(p.id) for p in self.shard.retrieve(ids, with_payload=False, with_vector=False)]

    def payload_schema(self) -> dict[str, str]:
        """Indexed payload fields and their types."""
        return {str(k): str(v.data_type) for k, v in self.shard.info().payload_schema.items()}

    def scroll(self, offset: Any, limit: int, vector: str) -> tuple[list[tuple[str, dict[str, Any], Any]], Any]:
        from qdrant_edge import ScrollRequest

        records, following = self.shard.scroll(
            ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=[vector])
        )
        out = []
        for record in records:
            values = record.vector.get(vector) if isinstance(record.vector, dict) else record.vector
            out.append((str(record.id), dict(record.payload or {}), values if isinstance(values, list) else None))
        return out, following

    def query(self, vector: list[float], limit: int, using: str | None) -> list[tuple[str, float, dict[str, Any]]]:
        from qdrant_edge import Query, QueryRequest

        points = self.shard.query(
            QueryRequest(limit=limit, query=Query.Nearest(vector, using=using), with_payload=True)
        )
        return [(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def close(self) -> None:
        if self.shard is not None:
            try:
                self.shard.flush()
            finally:
                self.shard.close()
                self.shard = None


def _probe_wal(path: Path) -> None:
    """Fail if another program holds the shard open (Edge flocks `wal/` while it does). A failed EdgeShard.load
    is not harmless: it deletes files of the holder's open segments (measured, qdrant-edge-py 0.9.0)."""
    wal = path / "wal"
    if not wal.is_dir():
        return
    fd = os.open(wal, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError("WouldBlock: the shard is in use by another program") from None
    finally:
        os.close(fd)


def _distance(name: str) -> Any:
    from qdrant_edge import Distance

    return {"cosine": Distance.Cosine, "dot": Distance.Dot, "euclid": Distance.Euclid,
            "manhattan": Distance.Manhattan}[name.lower()]  # fmt: skip


def _index_type(kind: str) -> Any:
    from qdrant_edge import PayloadSchemaType

    return {"keyword": PayloadSchemaType.Keyword, "integer": PayloadSchemaType.Integer,
            "float": PayloadSchemaType.Float, "bool": PayloadSchemaType.Bool, "text": PayloadSchemaType.Text,
            "uuid": PayloadSchemaType.Uuid, "datetime": PayloadSchemaType.Datetime}[kind]  # fmt: skip


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    host = Host()
    while True:
        try:
            request = read_message(requests)
        except EOFError:  # the parent is gone: make what it was told durable, then go
            host.close()
            return
        name, args = request[0], request[1:]
        try:
            value: Any = None
            if name == "open":
                host.open(*args)
            elif name == "update":
                host.update(*args)
            elif name == "flush":
                value = host.shard.flush()
            elif name == "close":
                host.close()
                write_message(answers, ("ok", None))
                return
            else:
                value = getattr(host, name)(*args)
        except Exception as exc:  # told to the parent, which decides; the shard stays open
            write_message(answers, ("error", f"{type(exc).__name__}: {exc}"))
            if name == "open":
                return
            continue
        write_message(answers, ("ok", value))


if __name__ == "__main__":
    # Answers go on the real stdout; anything Edge or Python prints goes to stderr, never into an answer.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)
