"""Money: what a backfill will cost before it runs (estimate), the estimate recorded when a job is planned and
how it compares with what was spent (recorded), what a job cost and what the cache and resumes saved (costs),
and the same records with another model or mode (what_if). Every dollar figure is priced by the one rule,
catalog.models.price_per_million."""
