"""localrank: a local embedding, rerank and search daemon for Qwen3 embedding models."""

__version__ = "0.1.0"
