"""Why an unfinished job is not resumed with a changed spec, and what either way costs (`qsync run` refuses it, the
notebook's launcher offers the choice)."""

from __future__ import annotations

from qsync.errors import SpecMismatch
from qsync.ledger.cache import CacheIdentity, SignatureIdentity, full_size
from qsync.ledger.jobs import JobRecord
from qsync.spec.embedder import EmbedderSpec
from qsync.spec.job import JobSpec


def mismatch(stored: JobRecord, given: JobSpec, diffs: list[str]) -> SpecMismatch:
    """The refusal, saying truly what either way costs: vectors of the stored model and size are reused by a
    resume; a smaller size of a Matryoshka model is cut from them; another model or size (or enrichment) is paid for
    again in full."""
    same_vectors = stored.spec.embedder.identity() == given.embedder.identity() and stored.spec.enrich == given.enrich
    cut_from_stored = (
        stored.spec.enrich == given.enrich
        and stored.spec.embedder.identity()
        == {**given.embedder.identity(), "dimensions": stored.spec.embedder.dimensions}
        and (full := full_size(_identity(given.embedder))) is not None
        and full.dimensions == stored.spec.embedder.dimensions
    )
    note = (
        "vectors already paid for are reused either way."
        if same_vectors
        else "vectors already paid for are reused either way: this smaller size is cut from the full-size vectors "
        "the job paid for (the model is Matryoshka-trained)."
        if cut_from_stored
        else "resuming reuses the vectors already paid for; starting afresh with this spec embeds every text again "
        "(another model, size, task or enrichment makes other vectors), at full price."
    )
    if any(d.startswith("dimensions:") for d in diffs):
        note += (
            " Vectors of another size also need another collection, or a named vector: a collection holds one size"
            " per vector."
        )
    return SpecMismatch(stored.job_id, stored.status, diffs, reuse_note=note)


def _identity(embedder: EmbedderSpec) -> CacheIdentity:
    return SignatureIdentity(f"{embedder.resolved_model}|{embedder.dimensions}|{embedder.resolved_task_type}")
