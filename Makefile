# Thin wrappers. Every target works from a fresh clone: the first one run creates .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench bench-default bench-engine bench-search bench-pg bench-cli bench-watch bench-rerank soak test-models clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later resolves it to a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/localrank serve

test: $(STAMP)
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check localrank tests bench models
	$(BIN)/mypy localrank

test-models: $(STAMP)
	$(BIN)/python models/build_test_models.py --tiny

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# The default model (Qwen3-Embedding-0.6B's shape, built offline if missing) against
# sentence-transformers in-process: bulk, query latency, cold start, RSS (and search, when there).
bench-default: $(STAMP)
	$(BIN)/python bench/default_model.py

bench-engine: $(STAMP)
	$(BIN)/python bench/engine_throughput.py

bench-search: $(STAMP)
	$(BIN)/python bench/search_bench.py

# PostgreSQL + pgvector beside SQLite: 200k x 1024-d through live daemons, and ingestion.
bench-pg: $(STAMP)
	$(BIN)/python bench/pg_bench.py

# `localrank search` wall time with the daemon running (10k chunks), and save -> searchable.
bench-cli: $(STAMP)
	$(BIN)/python bench/cli_search.py

bench-rerank: $(STAMP)
	$(BIN)/python bench/rerank_bench.py

bench-watch: $(STAMP)
	$(BIN)/python bench/watch_latency.py

# Memory soak, head-of-line and overload burst, time-boxed to under 10 minutes; the full counts
# (and the 0.6B shape with --bench-model): python bench/soak.py
soak: $(STAMP)
	$(BIN)/python bench/soak.py --quick

clean:
	rm -rf $(VENV) models/.cache bench/results
