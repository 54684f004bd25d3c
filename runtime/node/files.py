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
import itertools
import time
import uuid
from typing import Final

from runtime.node import roots
from runtime.node.config import NodeConfig
from runtime.protocol import ErrorKind, RelayError
from runtime.protocol import wire
from runtime.protocol.wire import FILE_CHUNK_BYTES, MAX_FILE_BYTES

NAME_MAX_BYTES: Final = 200  # a saved name's UTF-8 bytes: filesystems allow 255, the suffix -N needs room
EXT_MAX: Final = 16
SAME_NAME_MAX: Final = 1000  # name-1, name-2, ... before an upload is refused
UNTRACKED_MAX: Final = 200  # untracked files /diff shows as added
PART_PREFIX: Final = ".upload-"  # an upload still arriving: hidden, and never under the name codex is told
PART_TTL: Final = 3600.0  # seconds after which an abandoned part is removed (by the next upload to that folder)
SWEEP_MAX: Final = 10_000  # entries of an uploads folder one sweep looks at
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


def get(config: NodeConfig, cwd: str | None, path: str, offset: int = 0) -> wire.FileOutcome:
    """FILE_CHUNK_BYTES of the file from `offset`, with the whole file's size and modification time."""
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
        st = os.fstat(f.fileno())
        if st.st_size > config.file_max_bytes:
            raise _too_large(path, st.st_size, config)
        f.seek(offset)
        data = f.read(FILE_CHUNK_BYTES)
    return wire.FileOutcome(ok=True, name=os.path.basename(real), path=real, size=st.st_size, mtime_ns=st.st_mtime_ns,
                            data=base64.b64encode(data).decode())


def _uploads(config: NodeConfig, cwd: str | None) -> str:
    """The thread's uploads folder, made if need be; a symlink or a file in its place is refused."""
    base = _thread_dir(config, cwd)
    folder = os.path.join(base, config.uploads_dir)
    os.makedirs(folder, exist_ok=True)
    real = os.path.realpath(folder)
    if real != folder or not os.path.isdir(real):
        raise RelayError(ErrorKind.PATH_NOT_ALLOWED, f"{folder} is not a plain folder inside {base}: remove what is "
                                                     "there, or set the node's uploads_dir to another name")
    return real


def _sweep(folder: str) -> None:
    """Parts of uploads abandoned (a bot or node restart cut them off) longer than PART_TTL ago go."""
    cutoff = time.time() - PART_TTL
    with os.scandir(folder) as entries:
        for entry in itertools.islice(entries, SWEEP_MAX):
            if entry.name.startswith(PART_PREFIX) and entry.name.endswith(".part") and entry.is_file(
                    follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def put(config: NodeConfig, cwd: str | None, name: str, data64: str, upload_id: str = "", offset: int = 0,
        final: bool = True) -> wire.FileOutcome:
    """Append a chunk to the upload's hidden part file; the final chunk links it, complete and synced, to its
    sanitized name. One chunk out of order, or past the limit, ends the upload and removes its part."""
    try:
        data = base64.b64decode(data64, validate=True)
    except (binascii.Error, ValueError):
        raise RelayError(ErrorKind.INVALID_REQUEST, "field `data`: not base64") from None
    folder = _uploads(config, cwd)
    part = os.path.join(folder, f"{PART_PREFIX}{upload_id or uuid.uuid4().hex}.part")
    if offset == 0:
        _sweep(folder)
    try:
        with open(part, "xb" if offset == 0 else "r+b") as f:
            if os.fstat(f.fileno()).st_size != offset:
                raise RelayError(ErrorKind.CONFLICT, f"upload {upload_id}: a chunk at {offset} does not follow the "
                                                     f"{os.fstat(f.fileno()).st_size} bytes received; send the file "
                                                     "again")
            if offset + len(data) > config.file_max_bytes:
                raise _too_large("the upload", offset + len(data), config)
            f.seek(offset)
            f.write(data)
            if final:
                f.flush()
                os.fsync(f.fileno())
    except FileExistsError:
        raise RelayError(ErrorKind.CONFLICT, f"upload {upload_id} has begun already: send the file again") from None
    except FileNotFoundError:
        raise RelayError(ErrorKind.NOT_FOUND, f"upload {upload_id} is gone (the node restarted, or it was "
                                              "abandoned): send the file again") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise
    if not final:
        return wire.FileOutcome(ok=True, size=offset + len(data))
    return _publish(part, folder, sanitize(name), offset + len(data))


def _publish(part: str, folder: str, clean: str, size: int) -> wire.FileOutcome:
    stem, dot, ext = clean.rpartition(".")
    stem, suffix = (stem, dot + ext) if dot else (clean, "")
    try:
        for n in range(SAME_NAME_MAX):
            final = os.path.join(folder, f"{stem}{'' if n == 0 else f'-{n}'}{suffix}")
            try:
                os.link(part, final)  # atomic, and never replaces a file already there
            except FileExistsError:
                continue
            return wire.FileOutcome(ok=True, name=os.path.basename(final), path=final, size=size)
        raise RelayError(ErrorKind.CONFLICT, f"{SAME_NAME_MAX} files named like {clean} are in {folder} already: "
                                             "rename the file, or clear the uploads folder")
    finally:
        os.unlink(part)


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
    # A patch goes in one frame: it is made anew on each call, so it could not be read in consistent chunks.
    base, limit, timeout = _thread_dir(config, cwd), min(config.file_max_bytes, MAX_FILE_BYTES), config.rpc_timeout
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
        raise RelayError(ErrorKind.FILE_TOO_LARGE, f"the diff is over the limit of {limit} bytes (the node's "
                                                   "file_max_bytes, and what one frame carries): fetch single files "
                                                   "with /file get")
    return wire.FileOutcome(ok=True, name=f"{os.path.basename(base) or 'diff'}.patch", path=base, size=len(data),
                            empty=not data, data=base64.b64encode(data).decode())


async def handle(config: NodeConfig, msg: wire.FileRequest) -> wire.FileOutcome:
    """The answer to one file_request; disk work runs off the event loop."""
    if msg.op == "get":
        return await asyncio.to_thread(get, config, msg.cwd, msg.path, msg.offset)
    if msg.op == "put":
        return await asyncio.to_thread(put, config, msg.cwd, msg.name, msg.data, msg.upload_id, msg.offset,
                                       msg.final)
    if msg.op == "diff":
        return await diff(config, msg.cwd)
    raise RelayError(ErrorKind.INVALID_REQUEST, f"field `op`: {msg.op} is not a file operation of runtime/node/files.py")
