"""Which working directories a thread may use on this node: an existing directory inside `allowed_roots`, judged
on its real path, so neither `..` nor a symlink leads out. The node checks every cwd it hands codex."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Final

from runtime.protocol import ErrorKind, RelayError

# The app-server methods that place a thread or a command in a directory (codex 0.171.0's schema): their `cwd` is
# checked and replaced by its real path. Codex itself takes any cwd, even one that does not exist.
PLACES: Final = frozenset({"thread/start", "thread/fork", "thread/resume", "turn/start", "command/exec"})


def within(real: str, roots: Sequence[str]) -> str | None:
    """The root that holds `real` (both real paths), or None."""
    return next((r for r in roots if os.path.commonpath((real, r)) == r), None)


def resolve(path: str, base: str, roots: Sequence[str]) -> str:
    """The real path of `path` (relative ones start at `base`), if it is a directory inside one of `roots`;
    otherwise path_not_allowed, naming the roots."""
    allowed = f"Allowed roots on this node: {', '.join(roots)}."
    full = os.path.join(base, os.path.expanduser(path))
    try:
        real = os.path.realpath(full, strict=True)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        raise RelayError(ErrorKind.PATH_NOT_ALLOWED, f"{path} does not exist. {allowed}") from None
    via = "" if real == os.path.normpath(full) else f" (it resolves to {real})"
    if within(real, roots) is None:
        raise RelayError(ErrorKind.PATH_NOT_ALLOWED, f"{path} is outside the allowed roots{via}. {allowed}")
    if not os.path.isdir(real):
        raise RelayError(ErrorKind.PATH_NOT_ALLOWED, f"{path} is a file, not a directory{via}. {allowed}")
    return real


def guard(method: str, params: Any, base: str, roots: Sequence[str]) -> Any:
    """`params` with a checked, real `cwd` for a method that places work in one; other calls pass unchanged."""
    if method not in PLACES or not isinstance(params, dict) or params.get("cwd") is None:
        return params
    cwd = params["cwd"]
    if not isinstance(cwd, str) or not cwd:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"field `cwd` of {method}: expected a directory path")
    return {**params, "cwd": resolve(cwd, base, roots)}
