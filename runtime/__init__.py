"""Codex Relay runtime: the manager, node and bot services."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("codex-relay")  # pyproject.toml is the one place the version is written
except PackageNotFoundError:  # a source tree nobody installed: run `scripts/setup.sh` (pip install -e .)
    __version__ = "0+unknown"
