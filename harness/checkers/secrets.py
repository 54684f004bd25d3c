"""H-10: where a secret shows up that it should not, in a run's files or in a live process's argv or environment."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

CHUNK = 1 << 20


def in_files(root: Path, secrets: Mapping[str, str]) -> list[str]:
    """`path: <what>` for every file under root holding one of the secrets, named by what it is, never shown.
    Files are read in chunks, so a soak's history of any size is searched."""
    labels = [label for label, s in secrets.items() if s]
    wanted = [secrets[label].encode() for label in labels]
    overlap = max((len(s) for s in wanted), default=1) - 1
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            found += [f"{path.relative_to(root)}: {labels[i]}" for i in _hits(path, wanted, overlap)]
    return found


def _hits(path: Path, wanted: list[bytes], overlap: int) -> set[int]:
    hits: set[int] = set()
    tail = b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                window = tail + chunk
                hits |= {i for i, s in enumerate(wanted) if s in window}
                tail = window[-overlap:] if overlap else b""
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return set()  # gone meanwhile, or not a regular file
    return hits


def in_processes(procs: Iterable[psutil.Process], secrets: Mapping[str, str], environment: bool = False) -> list[str]:
    """`name[pid] argv|environ: <what>` for each process whose command line (or environment) shows a secret:
    any user on the machine can read a command line."""
    found = []
    for p in procs:
        try:
            shown = {"argv": "\0".join(p.cmdline())}
            if environment:
                shown["environ"] = "\0".join(f"{k}={v}" for k, v in p.environ().items())
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found += [f"{name}[{p.pid}] {where}: {label}" for where, text in shown.items()
                  for label, s in secrets.items() if s and s in text]
    return found
