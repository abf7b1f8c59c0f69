"""Tooling, not run in production: load generation, benchmarks, the demo."""
