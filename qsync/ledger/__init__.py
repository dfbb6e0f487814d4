"""The ledger: one checkpoint file (DuckDB) and its vector file, and every read and write of what they hold.

Modules: ledger (the Ledger object, which owns both files), connection (a Ledger's line to the file's host
process), host (that process: the one that opens the file), hosts (finding, starting, stopping hosts), schema
(every table, by version), migrate (a file brought to this version), vectorfile (the cached vectors' bytes), cache (the
embedding cache), jobs (states, stored specs, names), lease (one owner per job), plans (a planned job's rows),
batches (batch states and their transitions), spend (write-ahead for money), remote (Batch Mode jobs), commit
(group commit), run (the writes of one run, lease-checked), figures (every figure of a job, one query),
queries and costs (what else is read), errors (DuckDB's exceptions as qsync's), process (who is alive).
"""
