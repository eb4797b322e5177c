# Thin wrappers. Every target works from a fresh clone: the first one run creates .venv.
# Two installs into the one .venv, each with its stamp: the runtime (what `make serve` needs:
# the package and its dependencies) and, on top of it, the dev extra (tests, lint, benches).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: install install-dev serve test lint wheel-check bench bench-quick bench-default bench-engine bench-search bench-pg bench-cli bench-watch bench-rerank soak test-models clean

$(RUNTIME): pyproject.toml setup.py localrank/engine/torch/q8.c constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later resolves it to a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

# Adds the dev extra to the runtime install (a new runtime install first when it is stale).
$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(RUNTIME)

install-dev: $(DEV)

serve: $(RUNTIME)
	$(BIN)/localrank serve

test: $(DEV)
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(DEV)
	$(BIN)/ruff check localrank tests bench models
	$(BIN)/mypy localrank

# A wheel of this checkout in a fresh venv without the dev extra: `localrank --version`, and
# `localrank serve` on the offline fallback (ready, one embedding, SIGTERM). Needs no .venv.
wheel-check:
	$(PYTHON) .ci/wheel_check.py

test-models: $(DEV)
	$(BIN)/python models/build_test_models.py --tiny

# The benchmarks run from the repository's root as modules (`python -m bench.<name>`).
bench: $(DEV)
	$(BIN)/python -m bench.run_all

# Under 5 minutes: the figures that regress silently, each against bench/targets.toml; exits
# non-zero when one misses by more than its noise band. Run it before closing an issue that
# touches engine/, serve/ or collections/.
bench-quick: $(DEV)
	$(BIN)/python -m bench.quick

# The default model (Qwen3-Embedding-0.6B's shape, built offline if missing) against
# sentence-transformers in-process: accuracy, bulk, query latency, cold start, RSS, search.
bench-default: $(DEV)
	$(BIN)/python -m bench.default_model

bench-engine: $(DEV)
	$(BIN)/python -m bench.engine_throughput

bench-search: $(DEV)
	$(BIN)/python -m bench.search_bench

# PostgreSQL + pgvector beside SQLite: 200k x 1024-d through live daemons, and ingestion.
bench-pg: $(DEV)
	$(BIN)/python -m bench.pg_bench

# `localrank search` wall time with the daemon running (10k chunks), and save -> searchable.
bench-cli: $(DEV)
	$(BIN)/python -m bench.cli_search

bench-rerank: $(DEV)
	$(BIN)/python -m bench.rerank_bench

bench-watch: $(DEV)
	$(BIN)/python -m bench.watch_latency

# Memory soak, head-of-line, overload burst, idle connections and schemathesis, time-boxed to
# under 10 minutes; the full counts
# (and the 0.6B shape with --bench-model): python -m bench.soak
soak: $(DEV)
	$(BIN)/python -m bench.soak --quick

clean:
	rm -rf $(VENV) models/.cache bench/results
