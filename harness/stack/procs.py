"""One real OS process of the stack: started in its own process group, logged to a file, signalled.

A process group per service means SIGKILL or SIGSTOP reaches its children too (a node's codex).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil

from runtime.backoff import Backoff

LIVE: set[Proc] = set()  # every started process, so a session-wide teardown can reap strays


class Proc:
    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stopped_by_harness = False  # a down process is a crash unless the harness stopped it

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"# harness: start #{self.starts + 1} at {time.time():.3f}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env, cwd=self.cwd, start_new_session=True)
        self.starts += 1
        self.stopped_by_harness = False
        LIVE.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def children_named(self, name: str) -> list[psutil.Process]:
        """Live descendants called `name`. One that exits while being looked at (a codex helper, a
        command it ran) is skipped, not an error."""
        found = []
        for child in self.children():
            try:
                if child.name() == name:
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def signal_group(self, sig: signal.Signals) -> None:
        if self.popen is not None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole group and reap it: a crash, not a shutdown."""
        if self.popen is None:
            return
        self.stopped_by_harness = True
        self.signal_group(signal.SIGCONT)  # a stopped process must not linger as a zombie group
        self.signal_group(signal.SIGKILL)
        self.popen.wait(10)
        LIVE.discard(self)

    def sigterm(self) -> None:
        """SIGTERM to the process alone (its children are its own to stop), as systemd's KillMode=mixed sends it;
        returns at once, so a case can watch the shutdown."""
        if self.popen is not None and self.alive:
            self.stopped_by_harness = True
            os.kill(self.pid, signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> bool:
        """True once the process has exited by itself (a SIGTERM's shutdown), False if it still runs at the timeout."""
        async for _ in Backoff(0.05, factor=1).tries(timeout):
            if not self.alive:
                return True
        return not self.alive

    def group_left(self) -> list[str]:
        """Live processes still in its group after it exited: what its shutdown left behind (a codex child)."""
        left = []
        for p in psutil.process_iter(["name"]):
            try:
                if p.pid != self.pid and os.getpgid(p.pid) == self.pid and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.info['name']}[{p.pid}]")
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return left

    def terminate(self, grace: float = 5.0) -> None:
        self.stopped_by_harness = True
        if self.popen is None or not self.alive:
            LIVE.discard(self)
            return
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(10)
        self.signal_group(signal.SIGKILL)  # children that outlived their parent
        LIVE.discard(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, op: str | None = None) -> list[str]:
        """Lines split on \\n only, the rule the services log by: a U+2028 or a CR inside a value is text, and
        str.splitlines() would let a peer that sends one forge a line of evidence. A line is another op's only
        by its own `op` field: an `op=` inside a quoted value a peer chose is text too."""
        lines = [ln for ln in self.log_text().split("\n") if ln]
        return [ln for ln in lines if op is None or log_fields(ln).get("op") == op]

    async def wait_log(self, op: str, timeout: float = 15.0, seen: int = 0) -> str:
        """The first log line with `op=<op>` after the `seen` already there, waiting for it to appear.

        The log is appended across restarts: pass how many lines a restart began with to wait for the
        new process's own line. A process that exits without logging it fails at once, not at the timeout.
        """
        async for _ in Backoff(0.05, factor=1).tries(timeout):
            if len(lines := self.log_lines(op)) > seen:
                return lines[seen]
            if not self.alive:
                # Read again: the line may have landed between the read above and the process's exit.
                if len(lines := self.log_lines(op)) > seen:
                    return lines[seen]
                raise RuntimeError(f"{self.name} exited with {self.returncode} before it logged op={op}; "
                                   f"see {self.log_path}")
        raise TimeoutError(f"{self.name} logged no new op={op} within {timeout}s; see {self.log_path}")

    async def wait_port(self, op: str, timeout: float = 20.0, seen: int = 0) -> int:
        """The port a server bound (it was given port 0), from the `op=<op> ... port=N` line it logs when ready."""
        line = await self.wait_log(op, timeout, seen)
        found = re.search(r"(?:^| )port=(\d+)", line)
        if found is None:
            raise RuntimeError(f"{self.name}'s op={op} line names no port: {line}")
        return int(found[1])


# One key=value pair of runtime/logfmt.py's lines: a bare value, or a quoted one with backslash escapes.
_FIELD = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: +|$)')
_UNESCAPE = re.compile(r'\\(u[0-9a-f]{4}|.)')


def log_fields(line: str) -> dict[str, str]:
    """A log line's own fields, read left to right the way logfmt.py writes them; the first of a key wins.
    Text that is not key=value (a `# harness:` line, a stray print) has no fields."""
    fields: dict[str, str] = {}
    pos = 0
    while m := _FIELD.match(line, pos):
        key, value = m.group(1), m.group(2)
        if value.startswith('"'):
            value = _UNESCAPE.sub(lambda e: chr(int(e[1][1:], 16)) if len(e[1]) == 5 else
                                  {"n": "\n", "r": "\r", "t": "\t"}.get(e[1], e[1]), value[1:-1])
        fields.setdefault(key, value)
        pos = m.end()
    return fields


def reap_all() -> list[str]:
    """Kill whatever is still running; returns the names, so a leak is reported, not hidden."""
    leaked = [p.name for p in list(LIVE) if p.alive]
    for proc in list(LIVE):
        proc.terminate(grace=2.0)
    return leaked
