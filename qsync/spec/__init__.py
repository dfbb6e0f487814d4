"""What a job is, in typed, frozen values validated when they are made: where records come from and which
columns matter (`Columns`), which embedder makes the vectors (`EmbedderSpec`), where points go (`SinkSpec`,
`CollectionOptions`), the optional enrichment (`EnrichSpec`), all of it as one `JobSpec`, the job's identity,
stored with it; and how one run goes about it (`RunSettings`, never stored). Defaults live in `defaults`.
Building a spec from a user's options (which needs the source) is the application layer's (qsync.app.options).
"""
