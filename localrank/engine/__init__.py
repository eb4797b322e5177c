"""Text -> vectors. Knows nothing of HTTP or SQL."""
