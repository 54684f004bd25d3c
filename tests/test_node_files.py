"""The node's file contract (runtime/node/files.py), without processes: any name a client sends is saved inside the
uploads folder under a clean name; chunks land in order or the upload ends, leaving no part; a file under its name is
always whole; /file get reads within the thread's directory only, chunk by chunk."""
from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.node import files
from runtime.node.config import NodeConfig
from runtime.protocol import ErrorKind, RelayError
from runtime.protocol.wire import FILE_CHUNK_BYTES


def config(root: Path, limit: int = 4 * FILE_CHUNK_BYTES) -> NodeConfig:
    cwd = root / "cwd"
    cwd.mkdir(exist_ok=True)
    return dataclasses.replace(NodeConfig(), node_id="n1", cwd=str(cwd), allowed_roots=(str(cwd),),
                               file_max_bytes=limit)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_name_is_one_clean_component(name: str) -> None:
    clean = files.sanitize(name)
    assert clean and "/" not in clean and "\0" not in clean and not clean.startswith(".")
    assert len(clean.encode()) <= files.NAME_MAX_BYTES and all(ch.isprintable() for ch in clean)
    assert os.path.dirname(os.path.join("/up", clean)) == "/up"


@pytest.mark.parametrize(("name", "clean"), [("../../x", "x"), ("a\x00b.txt", "ab.txt"), ("..", "upload"),
                                             (".bashrc", "bashrc"), ("C:\\Windows\\evil.txt", "evil.txt"),
                                             ("/etc/passwd", "passwd"), ("A" * 300 + ".txt", "A" * 196 + ".txt")])
def test_hostile_names(name: str, clean: str) -> None:
    assert files.sanitize(name) == clean


def test_chunks_in_order_make_one_whole_file(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    data = os.urandom(2 * FILE_CHUNK_BYTES + 7)
    folder = Path(cfg.cwd) / cfg.uploads_dir
    for offset in range(0, len(data), FILE_CHUNK_BYTES):
        chunk = data[offset:offset + FILE_CHUNK_BYTES]
        out = files.put(cfg, None, "../data.bin", b64(chunk), "up1", offset, offset + len(chunk) >= len(data))
        if offset + len(chunk) < len(data):
            assert not (folder / "data.bin").exists() and out.size == offset + len(chunk)
    assert out.path == str(folder / "data.bin") and (folder / "data.bin").read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == ["data.bin"]  # the part is gone
    again = files.put(cfg, None, "data.bin", b64(b"new"))
    assert again.name == "data-1.bin" and (folder / "data.bin").read_bytes() == data  # never overwritten


@pytest.mark.parametrize(("fault", "kind"), [("out_of_order", ErrorKind.CONFLICT), ("over_limit", ErrorKind.FILE_TOO_LARGE),
                                             ("never_begun", ErrorKind.NOT_FOUND)])
def test_a_bad_chunk_ends_the_upload_and_leaves_nothing(tmp_path: Path, fault: str, kind: ErrorKind) -> None:
    cfg = config(tmp_path, limit=FILE_CHUNK_BYTES + 10)
    folder = Path(cfg.cwd) / cfg.uploads_dir
    chunk = os.urandom(FILE_CHUNK_BYTES)
    if fault != "never_begun":
        files.put(cfg, None, "f.bin", b64(chunk), "up2", 0, False)
    offset = {"out_of_order": 2 * FILE_CHUNK_BYTES}.get(fault, FILE_CHUNK_BYTES)
    with pytest.raises(RelayError) as err:
        files.put(cfg, None, "f.bin", b64(chunk), "up2", offset, True)
    assert err.value.kind == kind, err.value.error
    assert list(folder.iterdir()) == []


def test_uploads_folder_may_not_lead_out(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", Path(cfg.cwd) / cfg.uploads_dir)
    with pytest.raises(RelayError) as err:
        files.put(cfg, None, "x.txt", b64(b"x"))
    assert err.value.kind == ErrorKind.PATH_NOT_ALLOWED and list((tmp_path / "elsewhere").iterdir()) == []


def test_get_reads_chunks_inside_the_thread_directory_only(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    data = os.urandom(FILE_CHUNK_BYTES + 3)
    (Path(cfg.cwd) / "f.bin").write_bytes(data)
    first, rest = files.get(cfg, None, "f.bin"), files.get(cfg, None, "f.bin", FILE_CHUNK_BYTES)
    assert first.size == rest.size == len(data) and first.mtime_ns == rest.mtime_ns
    assert base64.b64decode(first.data) + base64.b64decode(rest.data) == data
    (tmp_path / "secret").write_text("s")
    for path in ("../secret", str(tmp_path / "secret")):
        with pytest.raises(RelayError) as err:
            files.get(cfg, None, path)
        assert err.value.kind == ErrorKind.PATH_NOT_ALLOWED
