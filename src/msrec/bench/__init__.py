"""Benchmarks: a spec of models x seeds, its resumable run store, the runner, and `msrec demo`."""
