from .base import Embedder, EmbedResult, build_embedder
from .hashing import HashingEmbedder

__all__ = ["EmbedResult", "Embedder", "HashingEmbedder", "build_embedder"]
