"""The benchmarks. Each is run from the repository's root as `python -m bench.<name>` (the
Makefile's bench targets and `make soak` do that); `bench/kit/` is what several of them share.
Results go to bench/results/."""
