"""Operations on what a job produced: `verify` (does the collection hold what the ledger says, and repair it
from the cache) and `search` (the records nearest to a text)."""
