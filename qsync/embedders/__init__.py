from .base import Embedder, EmbedderSpec, EmbedResult, build_embedder
from .hashing import HashingEmbedder

__all__ = ["EmbedResult", "Embedder", "EmbedderSpec", "HashingEmbedder", "build_embedder"]
