"""Where points go: Qdrant Edge in-process for a folder (the default), qdrant-client for a server URL or
":memory:". `open_sink` (factory) picks the backend; both implement `Sink` (protocol). Modules: protocol, factory,
edge (Qdrant Edge), shards (open Edge shards shared in a process: locks, shared flushes), client (qdrant-client).
"""
