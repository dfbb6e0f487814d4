"""The engine: one run of one job. Modules: runner (lease, stages, batches, release), scheduler (worker
threads, Ctrl-C), pipeline (one batch: claim, stages, vectors, upsert), vectors (cache, in-flight texts, paid
calls), slots (at most `concurrency` paid calls at once), completer (batches marked done in groups), control
(Pause/Stop reach every wait), retry (the one retry layer), ratelimit (pacing, shared per API key), inflight (a text
in flight is waited for), spend_cap (the job's whole spend, capped), heartbeat, stage (the protocol of optional
stages), outcome, events (what listeners hear).
"""
