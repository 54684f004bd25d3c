"""Test harness for Codex Relay: real processes, mocks and launchers."""
