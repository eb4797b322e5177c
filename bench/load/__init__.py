"""The load bench (`python -m bench.load`): the live daemon against sentence-transformers
in-process; __main__.py says what it measures and where each part lives."""
