"""Files to and from the directory a chat's thread works in: /file get, uploads, /diff (a `file_request`).

Every path is judged on its real path, as runtime/node/roots.py judges a thread's cwd: a file comes back only from
inside the thread's directory, an upload lands only inside its uploads folder, whatever name the user's client
sent (`../../x`, a NUL, 300 characters). An upload is written to a hidden temporary file and hard-linked to its
final name once complete, so codex never reads a half-written file and an existing file is never overwritten.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import re
import tempfile
from typing import Final

from runtime.node import roots
from runtime.node.config import NodeConfig
from runtime.protocol import ErrorKind, RelayError
from runtime.protocol import wire

NAME_MAX_BYTES: Final = 200  # a saved name's UTF-8 bytes: filesystems allow 255, the suffix -N needs room
EXT_MAX: Final = 16
SAME_NAME_MAX: Final = 1000  # name-1, name-2, ... before an upload is refused
UNTRACKED_MAX: Final = 200  # untracked files /diff shows as added
EMPTY_TREE: Final = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree, the base before a first commit
# Characters Windows, shells or Telegram clients trip on; control characters (NUL included) go too.
UNSAFE: Final = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')


def sanitize(name: str) -> str:
    """A file name safe to create in one folder: the last path component, printable, not hidden, bounded."""
    base = UNSAFE.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
    base = re.sub(r"\s+", " ", "".join(ch for ch in base if ch.isprintable())).strip().lstrip(".").strip()
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem or len(ext) > EXT_MAX:
        stem, ext = base, ""
    stem = stem or "upload"
    suffix = f".{ext}" if ext else ""
    while len((stem + suffix).encode()) > NAME_MAX_BYTES:  # bounded: the stem shrinks each round
        stem = stem[:-1]
    return stem + suffix


def _thread_dir(config: NodeConfig, cwd: str | None) -> str:
    return roots.resolve(cwd or config.cwd, config.cwd, config.allowed_roots)


def _too_large(what: str, size: int, config: NodeConfig) -> RelayError:
    return RelayError(ErrorKind.FILE_TOO_LARGE, f"{what} is {size} bytes, over the node's limit of "
                                                f"{config.file_max_bytes} bytes (file_max_bytes)")


def get(config: NodeConfig, cwd: str | None, path: str) -> wire.FileOutcome:
    base = _thread_dir(config, cwd)
    full = os.path.join(base, path)
    try:
        real = os.path.realpath(full, strict=True)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        raise RelayError(ErrorKind.NOT_FOUND, f"there is no file {path} in {base}") from None
    if roots.within(real, (base,)) is None:
        via = "" if real == os.path.normpath(full) else f" (it resolves to {real})"
        raise RelayError(ErrorKind.PATH_NOT_ALLOWED, f"{path} is outside the thread's working directory {base}{via}: "
                                                     "only files inside it can be fetched")
    if os.path.isdir(real):
        raise RelayError(ErrorKind.INVALID_REQUEST, f"{path} is a directory: name a file inside it")
    if not os.path.isfile(real):
        raise RelayError(ErrorKind.INVALID_REQUEST, f"{path} is not a regular file")
    with open(real, "rb") as f:
        data = f.read(config.file_max_bytes + 1)  # never more than one byte past the limit
    if len(data) > config.file_max_bytes:
        raise _too_large(path, os.path.getsize(real), config)
    return wire.FileOutcome(ok=True, name=os.path.basename(real), path=real, size=len(data),
                            data=base64.b64encode(data).decode())


def put(config: NodeConfig, cwd: str | None, name: str, data64: str) -> wire.FileOutcome:
    try:
        data = base64.b64decode(data64, validate=True)
    except (binascii.Error, ValueError):
        raise RelayError(ErrorKind.INVALID_REQUEST, "field `data`: not base64") from None
    if len(data) > config.file_max_bytes:
        raise _too_large("the upload", len(data), config)
    base = _thread_dir(config, cwd)
    folder = os.path.join(base, config.uploads_dir)
    os.makedirs(folder, exist_ok=True)
    real = os.path.realpath(folder)
    if real != folder or not os.path.isdir(real):  # a symlink or a file where the folder should be
        raise RelayError(ErrorKind.PATH_NOT_ALLOWED, f"{folder} is not a plain folder inside {base}: remove what is "
                                                     "there, or set the node's uploads_dir to another name")
    clean = sanitize(name)
    stem, dot, ext = clean.rpartition(".")
    stem, suffix = (stem, dot + ext) if dot else (clean, "")
    fd, tmp = tempfile.mkstemp(dir=real, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for n in range(SAME_NAME_MAX):
            final = os.path.join(real, f"{stem}{'' if n == 0 else f'-{n}'}{suffix}")
            try:
                os.link(tmp, final)  # atomic, and never replaces a file already there
            except FileExistsError:
                continue
            return wire.FileOutcome(ok=True, name=os.path.basename(final), path=final, size=len(data))
        raise RelayError(ErrorKind.CONFLICT, f"{SAME_NAME_MAX} files named like {clean} are in {real} already: "
                                             "rename the file, or clear the uploads folder")
    finally:
        os.unlink(tmp)


# The repository is codex's to write: none of its config may make the node run a program (an fsmonitor hook, an
# external diff, a textconv filter), since the node runs git outside codex's sandbox.
GIT_SAFE: Final = ("-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false", "-c", "diff.external=")
DIFF: Final = ("diff", "--no-color", "--binary", "--no-ext-diff", "--no-textconv")
READ_BLOCK: Final = 64 << 10


async def _git(cwd: str, timeout: float, cap: int, *args: str) -> tuple[int | None, bytes]:
    """git's exit code and output, of which at most `cap` bytes are kept: past it git is stopped, the code is None
    and the output `cap + 1` bytes long, so the caller sees it is too large without holding all of it."""
    proc = await asyncio.create_subprocess_exec("git", *GIT_SAFE, "-C", cwd, *args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    stdout = proc.stdout
    assert stdout is not None

    async def read() -> bytes:
        out = bytearray()
        while len(out) <= cap and (block := await stdout.read(READ_BLOCK)):
            out += block
        return bytes(out[:cap + 1])
    try:
        out = await asyncio.wait_for(read(), timeout)
        if len(out) <= cap:  # all of it: git's own exit code
            return await asyncio.wait_for(proc.wait(), timeout), out
        return None, out
    except TimeoutError:
        raise RelayError(ErrorKind.TIMEOUT, f"git {args[0]} in {cwd} took longer than {timeout:g}s") from None
    finally:
        if proc.returncode is None:  # stopped early: past the cap, or the deadline
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def diff(config: NodeConfig, cwd: str | None) -> wire.FileOutcome:
    """git's diff of the working tree against HEAD (or against nothing before the first commit), with untracked
    files shown as added: what codex changed there, whether or not it staged it."""
    base, limit, timeout = _thread_dir(config, cwd), config.file_max_bytes, config.rpc_timeout
    code, _ = await _git(base, timeout, 1 << 16, "rev-parse", "--show-toplevel")
    if code != 0:
        raise RelayError(ErrorKind.NOT_FOUND, f"{base} is not in a git repository, so it has no working-tree diff: "
                                              "run `git init` there (and commit) to track codex's changes")
    code, _ = await _git(base, timeout, 1 << 16, "rev-parse", "--verify", "--quiet", "HEAD")
    against = "HEAD" if code == 0 else EMPTY_TREE  # before the first commit: everything is added
    code, patch = await _git(base, timeout, limit, *DIFF, against, "--", ".")
    if code is not None and code != 0:
        raise RelayError(ErrorKind.INTERNAL, f"git diff failed in {base} (exit code {code})")
    _, listed = await _git(base, timeout, 1 << 20, "ls-files", "--others", "--exclude-standard", "-z", "--", ".")
    parts = [patch]
    for rel in [p for p in listed.decode(errors="surrogateescape").split("\0") if p][:UNTRACKED_MAX]:
        if sum(map(len, parts)) > limit:
            break
        # --no-index exits 1 when the files differ, which they do: the patch is on stdout either way.
        parts.append((await _git(base, timeout, limit, *DIFF, "--no-index", "--", os.devnull, rel))[1])
    data = b"".join(parts)
    if len(data) > limit:
        raise RelayError(ErrorKind.FILE_TOO_LARGE, f"the diff is over the node's limit of {limit} bytes "
                                                   "(file_max_bytes): fetch single files with /file get")
    return wire.FileOutcome(ok=True, name=f"{os.path.basename(base) or 'diff'}.patch", path=base, size=len(data),
                            empty=not data, data=base64.b64encode(data).decode())


async def handle(config: NodeConfig, msg: wire.FileRequest) -> wire.FileOutcome:
    """The answer to one file_request; disk work runs off the event loop."""
    if msg.op == "get":
        return await asyncio.to_thread(get, config, msg.cwd, msg.path)
    if msg.op == "put":
        return await asyncio.to_thread(put, config, msg.cwd, msg.name, msg.data)
    if msg.op == "diff":
        return await diff(config, msg.cwd)
    raise RelayError(ErrorKind.INVALID_REQUEST, f"field `op`: {msg.op} is not a file operation of runtime/node/files.py")
