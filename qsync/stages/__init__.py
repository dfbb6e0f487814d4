"""Optional steps of a run (the engine's `Stage` protocol): enrichment with a generative model, batch by batch;
Gemini Batch Mode, which fills the embedding cache at half price before the batches run."""
