"""Codex Relay runtime: the manager, node and bot services."""
