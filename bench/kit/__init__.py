"""What several benchmarks share: the repository's paths and the models they run (paths), the
daemon under test as a process (daemon), measuring (measure), texts (texts), the search benches'
synthetic corpus and store-level measurement (search), synthetic documents and a timed ingest job
(ingest), and the drivers' step runner (steps)."""
