"""One factory for every sink: Qdrant Edge in-process for a folder (the default), qdrant-client for a server
URL or ":memory:"."""

from __future__ import annotations

from pathlib import Path

from qsync.sink.protocol import Sink
from qsync.spec.target import CollectionOptions, SinkSpec


def open_sink(
    spec: SinkSpec,
    collection: str,
    dimensions: int,
    options: CollectionOptions | None = None,
    *,
    base: Path | None = None,
) -> Sink:
    """The sink for `spec`; nothing is opened until it is first used. `base`: the folder a relative Qdrant folder
    is in (a job's is relative to its checkpoint file's folder)."""
    options = options or CollectionOptions()
    if base is not None:
        spec = spec.resolved(base)
    elif spec.embedded and not Path(str(spec.path)).expanduser().is_absolute():
        # A job stores its folder relative to its checkpoint file's: resolved against the working directory instead,
        # it would quietly open (or create) another collection.
        raise ValueError(f"the Qdrant folder {spec.path!r} is relative: give the folder it is relative to (base=)")
    if spec.embedded:
        from qsync.sink.edge import EdgeSink

        return EdgeSink(spec, collection, dimensions, options)
    from qsync.sink.client import ClientSink

    return ClientSink(spec, collection, dimensions, options)
