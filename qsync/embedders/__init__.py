"""Embedders: the interface and its capabilities (`protocol`), the offline hashing embedder, Gemini through
google-genai, and `build_embedder` (`factory`), which makes one from a job's spec."""
