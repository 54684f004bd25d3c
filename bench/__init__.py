"""Benchmarks for Codex Relay: each figure is measured against a baseline taken in the same run."""
