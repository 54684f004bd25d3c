"""P2-03..P2-08: voice notes, and files in and out of a chat's thread directory, through the whole chain: Telegram -> bot ->
manager -> node (which alone touches its disk) -> codex -> the mock model. The fake Bot API serves a user's files as
Telegram does (getFile, then /file/bot<token>/<file_path>); `[[mock:images]]` answers with the images codex sent the
model (media type, size, SHA-256); its `/v1/audio/transcriptions` "transcribes" a voice note whose bytes are the words."""
from __future__ import annotations

import hashlib
import io
import itertools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.ends.telegram import FakeTelegram, TelegramUser, without_usage
from harness.stack.stack import Stack
from runtime.protocol import Api, new_id
from runtime.protocol.wire import FILE_CHUNK_BYTES, MAX_FILE_BYTES

NODE = "p2m"
NODE_ROOTS = ("repo",)  # a git repository beside the node's cwd, for /diff
NODE_LIMIT = 2 << 20  # the node's file_max_bytes: four chunks (FILE_CHUNK_BYTES)
BOT_LIMIT = 3 << 20  # the bot's: larger, so each limit can be met on its own
MULTI = FILE_CHUNK_BYTES * 2 + 12345  # a file that takes three chunks each way
STT_MODEL = "gpt-4o-mini-transcribe"
NODE_SETTINGS = {"file_max_bytes": NODE_LIMIT, "transcribe_model": STT_MODEL}
BOT_SETTINGS = {"file_max_bytes": BOT_LIMIT}
_chats = itertools.count(730_001)


async def chat_on_node(tg: FakeTelegram) -> TelegramUser:
    """A chat on NODE with /result replace: these cases read each turn's outcome in its placeholder (/result send,
    the default, posts it below instead: P1-12)."""
    user = tg.user(Stack.ADMIN, next(_chats))
    assert (await user.reply(await user.say(f"/node {NODE}")))["text"] == f"Node {NODE} selected for this chat."
    assert (await user.reply(await user.say("/result replace")))["text"].startswith("Result mode set to replace")
    return user


def cwd_of(stack: Stack) -> Path:
    return stack.node_dir(NODE) / "cwd"


async def answer(user: TelegramUser, text: str) -> str:
    return str((await user.reply(await user.say(text)))["text"])


async def document(tg: FakeTelegram, user: TelegramUser, since: int) -> tuple[dict[str, Any], bytes]:
    """The document the bot sent after `since`, and its bytes as Telegram keeps them."""
    call = await tg.wait_call("sendDocument", user.chat_id, since, 30)
    doc = call["response"]["result"]["document"]
    return call["response"]["result"], await tg.file(doc["file_id"])


async def sent_documents(tg: FakeTelegram, user: TelegramUser, since: int) -> list[dict[str, Any]]:
    return [c for c in await tg.calls("sendDocument", user.chat_id, since) if c["status"] == 200]


def uploads(stack: Stack) -> dict[str, bytes]:
    folder = cwd_of(stack) / "uploads"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def image(fmt: str, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, fmt)
    return out.getvalue()


async def final_answer(user: TelegramUser, since: int, timeout: float = 60.0) -> str:
    placeholder = await user.sent(since)
    assert placeholder["text"].startswith("⏳"), placeholder
    done = await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "⏳" not in m["text"],
                                  timeout)
    return without_usage(str(done["text"])).rstrip()  # the answer's own text, without the token usage under it


@pytest.mark.case("P2-05")
async def test_file_get(stack: Stack, tg: FakeTelegram) -> None:
    """/file get <path>: the file from the thread's working directory comes back as a document with its bytes (one
    of three chunks too);
    a path outside it (`..`, a symlink out), a directory, a missing file and a file over the node's limit are
    refused, each naming why, and nothing is sent"""
    user, cwd = await chat_on_node(tg), cwd_of(stack)
    content = f"hello {new_id('f')}\n".encode() * 100
    (cwd / "notes").mkdir(exist_ok=True)
    (cwd / "notes" / "hello.txt").write_bytes(content)
    since = await user.say("/file get notes/hello.txt")
    message, data = await document(tg, user, since)
    assert message["document"]["file_name"] == "hello.txt" and data == content
    assert str(cwd / "notes" / "hello.txt") in message.get("caption", ""), message
    large = os.urandom(MULTI)  # three chunks from the node, each within one frame
    (cwd / "large.bin").write_bytes(large)
    message, data = await document(tg, user, await user.say("/file get large.bin"))
    assert message["document"]["file_size"] == MULTI and data == large

    (cwd / "empty.txt").write_bytes(b"")
    assert await answer(user, "/file get empty.txt") == f"{cwd / 'empty.txt'} is empty (0 bytes): there is nothing to send."
    (stack.node_dir(NODE) / "secret.txt").write_text("not for the chat")
    if not (cwd / "link.txt").is_symlink():
        os.symlink(stack.node_dir(NODE) / "secret.txt", cwd / "link.txt")
    (cwd / "big.bin").write_bytes(b"x" * (NODE_LIMIT + 1))
    since = await tg.last_seq()
    refusals = {"../secret.txt": ("kind=path_not_allowed", "outside the thread's working directory"),
                "link.txt": ("kind=path_not_allowed", "resolves to"),
                "notes": ("kind=invalid_request", "is a directory"),
                "nope.txt": ("kind=not_found", "no file nope.txt"),
                "big.bin": ("kind=file_too_large", f"{NODE_LIMIT + 1} bytes, over the node's limit of {NODE_LIMIT}")}
    for path, (kind, why) in refusals.items():
        text = await answer(user, f"/file get {path}")
        assert text.startswith("/file failed: ") and kind in text and why in text, (path, text)
    assert "Usage: /file get <path>" in await answer(user, "/file")
    assert await sent_documents(tg, user, since) == []


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          timeout=20).stdout


def reverts(repo: Path, patch: bytes) -> bool:
    check = subprocess.run(["git", "-C", str(repo), "apply", "--check", "-R", "-"], input=patch, capture_output=True,
                           timeout=20)
    assert check.returncode == 0, check.stderr
    return True


def read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


@pytest.mark.case("P2-06")
async def test_diff(stack: Stack, tg: FakeTelegram) -> None:
    """/diff: "no changes" on a clean tree; after changes, git's working-tree diff of the chat's thread directory
    (a tracked file changed, an untracked one added) as a .patch document that git applies in reverse; /file get
    reads from that same directory; programs the repository's config names (fsmonitor, textconv) are not run"""
    repo = stack.node_dir(NODE) / "repo" / new_id("r")
    repo.mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "app.py").write_text("print(1)\n")
    git(repo, "add", "app.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "first")
    user = await chat_on_node(tg)
    # The chat's thread works in the repository: codex's thread/start there, bound as /thread start binds it.
    started = await stack.call(Api.APPSERVER, {"node_id": NODE, "method": "thread/start", "params": {"cwd": str(repo)}})
    await stack.call(Api.CHAT_SELECT, {"chat_key": f"tg:{user.chat_id}", "node_id": NODE,
                                       "thread_id": started["result"]["thread"]["id"], "cwd": str(repo)})
    assert await answer(user, "/diff") == f"No changes in {repo}: git sees nothing to diff there."

    # The repository is codex's to write: its config may name programs, which the node's git must not run.
    marker = repo.parent / f"{repo.name}-ran"
    hook = repo.parent / f"{repo.name}-hook.sh"
    hook.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\ncat \"$1\" 2>/dev/null\n")
    hook.chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(hook))
    git(repo, "config", "diff.evil.textconv", str(hook))
    (repo / ".git" / "info" / "attributes").write_text("*.py diff=evil\n")
    (repo / "app.py").write_text("print(2)\n")
    (repo / "new.txt").write_text("added by codex\n")
    since = await user.say("/diff")
    message, patch = await document(tg, user, since)
    assert not marker.exists(), marker.read_text()
    assert message["document"]["file_name"] == f"{repo.name}.patch", message
    text = patch.decode()
    assert "-print(1)\n+print(2)\n" in text and "+++ b/new.txt\n@@ -0,0 +1 @@\n+added by codex\n" in text, text
    assert reverts(repo, patch)  # the patch is exactly the tree's changes

    since = await user.say("/file get app.py")
    assert (await document(tg, user, since))[1] == b"print(2)\n"


@pytest.mark.case("P2-04")
async def test_document_upload(stack: Stack, tg: FakeTelegram) -> None:
    """a document (one of three chunks too) is saved under the thread's cwd in uploads/ with its bytes; with a
    caption codex gets a turn whose prompt names the saved file; without one the user is told where it is; the same
    name again never overwrites"""
    user, folder = await chat_on_node(tg), cwd_of(stack) / "uploads"
    name, body = f"report-{new_id('d')}.log", b"line 1\nline 2\n" * 200
    since = await user.upload("document", body, caption="", file_name=name, mime_type="text/plain")
    saved = (await user.reply(since))["text"]
    assert saved == (f"Saved {name} ({len(body)} bytes) as {folder / name} on {NODE}. Mention it in a message to "
                     "have Codex use it."), saved
    assert (folder / name).read_bytes() == body
    assert not [c for c in await tg.calls("sendMessage", user.chat_id, since) if "⏳" in c["params"]["text"]]
    archive = os.urandom(MULTI)  # three chunks to the node, each within one frame
    text = (await user.reply(await user.upload("document", archive, file_name="bundle.tar.gz")))["text"]
    assert text.startswith(f"Saved bundle.tar.gz ({MULTI} bytes) as {folder / 'bundle.tar.gz'}"), text
    assert (folder / "bundle.tar.gz").read_bytes() == archive

    ask = f"summarize {new_id('s')}"
    since = await user.upload("document", b"second\n", caption=ask, file_name=name, mime_type="text/plain")
    again = folder / name.replace(".log", "-1.log")
    assert (await user.reply(since))["text"].startswith(f"Saved {again.name} (7 bytes) as {again} on {NODE}.")
    assert (folder / name).read_bytes() == body and again.read_bytes() == b"second\n"
    done = await user.until_shown(lambda m: ask in m["text"] and "⏳" not in m["text"], 60)
    assert str(again) in done["text"], done  # the mock echoes the prompt codex sent it


@pytest.mark.case("P2-03")
async def test_photo(stack: Stack, tg: FakeTelegram) -> None:
    """a photo (compressed, or an image sent as a file) with a caption reaches codex as localImage input: the model
    receives the very image, with the caption as the prompt; an image type codex cannot read and a photo over the
    limit are refused, naming the types and the limit, and nothing is saved"""
    user = await chat_on_node(tg)
    jpeg, png = image("JPEG", (200, 30, 30)), image("PNG", (30, 30, 200))
    prompt = f"[[mock:images]] what is this {new_id('p')}"
    answer_text = await final_answer(user, await user.upload("photo", jpeg, caption=prompt))
    assert answer_text == f"images: 1; image/jpeg {len(jpeg)} bytes sha256 {hashlib.sha256(jpeg).hexdigest()[:16]}", \
        answer_text
    turn = next(m for m in reversed(stack.traffic(NODE)) if m["msg"].get("method") == "turn/start")["msg"]["params"]
    [text_part, local] = turn["input"]
    assert text_part["text"] == prompt and local["type"] == "localImage", turn
    assert Path(local["path"]).parent == cwd_of(stack) / "uploads" and read(local["path"]) == jpeg

    answer_text = await final_answer(user, await user.upload("document", png, caption=f"[[mock:images]] {new_id('p')}",
                                                             file_name="diagram.png", mime_type="image/png"))
    assert answer_text.startswith(f"images: 1; image/png {len(png)} bytes"), answer_text

    before = uploads(stack)
    bmp = (await user.reply(await user.upload("document", b"BM" + b"\0" * 64, caption="look", file_name="x.bmp",
                                              mime_type="image/bmp")))["text"]
    assert "kind=invalid_request" in bmp and "image/bmp" in bmp and "image/jpeg, image/png" in bmp, bmp
    since = await user.upload("photo", os.urandom(BOT_LIMIT + 1), caption="too big")
    big = (await user.reply(since))["text"]
    assert "kind=file_too_large" in big and f"at most {BOT_LIMIT} bytes (file_max_bytes)" in big, big
    assert not await tg.calls("getFile", since=since)  # refused on Telegram's word, before any download
    assert uploads(stack) == before


@pytest.mark.case("P2-08")
async def test_hostile_uploads(stack: Stack, tg: FakeTelegram) -> None:
    """hostile names (`../../x`, a NUL, 300 characters, absolute and Windows paths, dot names) are saved inside
    uploads/ under a clean name; uploads past the bot's or the node's limit are refused naming the limit, leaving
    nothing; an upload while the node or the manager restarts ends in a clear error or a completed upload; no
    temporary file is ever left where codex would read it"""
    user, cwd = await chat_on_node(tg), cwd_of(stack)
    folder = cwd / "uploads"
    hostile = ["../../x", "a\x00b.txt", "A" * 300 + ".txt", "/etc/passwd", "C:\\Windows\\evil.txt", "..", ".bashrc",
               "ok\nname\t.txt"]
    for name in hostile:
        body = f"{name!r} {new_id('h')}".encode()
        text = (await user.reply(await user.upload("document", body, file_name=name)))["text"]
        assert text.startswith("Saved "), (name, text)
        saved = Path(text.split(" as ", 1)[1].split(f" on {NODE}.", 1)[0])
        assert saved.parent == folder and read(saved) == body, (name, saved)
        assert "\0" not in saved.name and "\n" not in saved.name and not saved.name.startswith(".") \
            and len(saved.name.encode()) <= 200, (name, saved.name)
    assert not (cwd.parent / "x").exists() and not (stack.node_dir(NODE).parent / "x").exists()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no part left behind

    before = uploads(stack)
    # Past the node's limit in its fourth chunk: the upload ends there and its part is removed.
    over_node = (await user.reply(await user.upload("document", b"n" * (NODE_LIMIT + 1), file_name="n.bin")))["text"]
    assert "kind=file_too_large" in over_node and f"over the node's limit of {NODE_LIMIT} bytes" in over_node, over_node
    over_bot = (await user.reply(await user.upload("document", b"b" * (BOT_LIMIT + 1), file_name="b.bin")))["text"]
    assert "kind=file_too_large" in over_bot and f"at most {BOT_LIMIT} bytes" in over_bot, over_bot
    assert uploads(stack) == before  # nothing saved, and no part left

    payload, expected, node = os.urandom(MULTI), uploads(stack), stack.procs[NODE]
    for restart, kinds in ((lambda: stack.restart_node(NODE), ("kind=node_offline", "kind=not_found")),
                           (stack.restart_manager, ("kind=manager_unavailable", "kind=node_offline"))):
        name = f"during-{new_id('r')}.bin"
        assert stack.toxics is not None
        # Each bot->manager call slowed, so the restart falls after the first of the file's three chunks.
        async with stack.toxics.latency(stack.bot_manager_link, 300):
            seen = len(node.log_lines("file_op"))
            since = await user.upload("document", payload, file_name=name)
            await node.wait_log("file_op", timeout=20, seen=seen)
            await restart()
        text = (await user.reply(since, timeout=40))["text"]
        if text.startswith("Saved "):
            assert (folder / name).read_bytes() == payload, text
            expected[name] = payload
        else:  # cut off: nothing under its name, at most a hidden part that no one is told of
            assert any(k in text for k in kinds) and not (folder / name).exists(), text
        await stack.wait_online(NODE)
        after = f"after-{new_id('r')}.txt"
        text = (await user.reply(await user.upload("document", b"again\n", file_name=after), timeout=40))["text"]
        assert text.startswith(f"Saved {after}") and (folder / after).read_bytes() == b"again\n", text
        expected[after] = b"again\n"
    # Every file under a name is whole and one the user was told of; anything else is a hidden part.
    found = uploads(stack)
    assert {n: b for n, b in found.items() if not n.startswith(".")} == expected
    assert all(n.startswith(".upload-") and n.endswith(".part") for n in found if n.startswith(".")), sorted(found)



@pytest.mark.case("P2-07")
async def test_voice(stack: Stack, tg: FakeTelegram) -> None:
    """a voice note is transcribed at the node's model provider (/v1/audio/transcriptions with the node's
    transcribe_model), the transcript is shown, and it runs as the prompt; on a node without transcription the user
    reads which setting turns it on; a voice note over the limit is refused naming it"""
    user = await chat_on_node(tg)
    before = (await stack.upstream("GET", "/_mock/stats"))["by_behavior"].get("transcription", 0)
    words = f"list the files here {new_id('v')}"
    since = await user.upload("voice", words.encode(), duration=3)
    assert (await user.reply(since))["text"] == f"🎙 {words}"
    await user.until_shown(lambda m: without_usage(m["text"]).rstrip() == f"mock reply: {words}", 60)  # codex ran it
    assert (await stack.upstream("GET", "/_mock/stats"))["by_behavior"]["transcription"] == before + 1
    served = [line for line in stack.procs["upstream"].log_lines("transcription") if STT_MODEL in line]
    assert served, "the node did not ask the provider with its transcribe_model"

    big = (await user.reply(await user.upload("voice", b"v" * (MAX_FILE_BYTES + 1))))["text"]  # goes in one frame
    assert "kind=file_too_large" in big and f"at most {MAX_FILE_BYTES} bytes" in big, big

    await stack.add_node("p2m-off")  # transcribe_model unset: voice notes are off there
    off = tg.user(Stack.ADMIN, next(_chats))
    assert (await off.reply(await off.say("/node p2m-off")))["text"] == "Node p2m-off selected for this chat."
    text = (await off.reply(await off.upload("voice", b"hello there")))["text"]
    assert "kind=not_configured" in text and "voice notes are off on node p2m-off: set" in text \
        and "transcribe_model" in text, text
