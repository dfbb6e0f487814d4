"""Where records come from and what planning makes of them: sources (files, DataFrames, DuckDB SQL) normalized to
one relation (sources, records), a source's columns guessed (columns), media checked by their bytes (media,
media_plan), and the plan: every record checked, the valid ones snapshotted into the job's manifest (plan)."""
