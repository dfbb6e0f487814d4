"""Where points go: Qdrant Edge in-process for a folder (the default), qdrant-client for a server URL or
":memory:". `QdrantSink(spec, collection, dimensions, options)` picks the backend; both take the same calls.

Modules: base (the shared interface, specs and ids), edge (Qdrant Edge), shards (open Edge shards shared
in a process: locking, flushes), client (qdrant-client).
"""

from .base import POINT_ID_NAMESPACE, CollectionOptions, Hit, QdrantSink, SinkSpec, point_id

__all__ = ["POINT_ID_NAMESPACE", "CollectionOptions", "Hit", "QdrantSink", "SinkSpec", "point_id"]
