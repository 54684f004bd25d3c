"""The node: one per machine, relaying between the manager and a local codex app-server."""
