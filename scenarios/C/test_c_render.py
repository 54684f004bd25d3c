"""C, readable answers (P2-01, P2-02): Markdown from codex reaches Telegram as formatting, split and filed as
needed. The whole chain runs (bot, manager, node, codex, mock model); the fake Bot API parses parse_mode HTML
as Telegram does, so the entities asserted here are the ones Telegram would have computed."""
from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from harness.ends.answers import HOSTILE, long_markdown
from harness.ends.telegram import FakeTelegram, TelegramUser
from harness.ends.upstream import prompt_key
from harness.stack.stack import Stack
from runtime.protocol import new_id

NODE = "c2"
MAX_PARTS = 7  # below the bot's default (8), so P2-02's document proves the setting is read
BOT_SETTINGS = {"answer_max_parts": MAX_PARTS}
LIMIT = 4096
PARSE_ERROR = "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0"
_chats = itertools.count(720_001)


async def fresh_chat(tg: FakeTelegram) -> TelegramUser:
    """A new chat of the admin's, with NODE picked through /node and its button, as a user would; with /result
    replace, so the answer's first part is edited into the placeholder (/result send, the default, is P1-12's)."""
    user = tg.user(Stack.ADMIN, next(_chats))
    listing = await user.sent(await user.say("/node"))
    [choice] = [b["callback_data"] for row in listing["reply_markup"]["inline_keyboard"] for b in row
                if b["callback_data"].endswith(f":{NODE}")]
    assert "selected" in (await user.alert(await user.tap(listing["message_id"], choice)))["text"]
    assert (await user.reply(await user.say("/result replace")))["text"].startswith("Result mode set to replace")
    return user


async def ask(user: TelegramUser, prompt: str, done: Any, timeout: float = 60.0) -> tuple[int, list[dict[str, Any]]]:
    """Send a turn; once a bot message satisfies `done`, the call sequence before it and the bot's messages from
    the placeholder on (the placeholder itself holds the first part by then)."""
    since = await user.say(prompt)
    placeholder = await user.sent(since)
    assert placeholder["text"].startswith("⏳"), placeholder
    await user.until_shown(lambda m: m["message_id"] >= placeholder["message_id"] and "⏳" not in m["text"]
                           and done(m), timeout)
    return since, [m for m in await user.messages() if m["from_bot"] and m["message_id"] >= placeholder["message_id"]]


def covered(message: dict[str, Any], entity: dict[str, Any]) -> str:
    """The text an entity covers: offsets count UTF-16 code units."""
    units = message["text"].encode("utf-16-le")
    return units[2 * entity["offset"]:2 * (entity["offset"] + entity["length"])].decode("utf-16-le")


def entity(message: dict[str, Any], kind: str, text: str) -> dict[str, Any]:
    found = [e for e in message["entities"] if e["type"] == kind and covered(message, e) == text]
    assert found, f"no {kind} entity over {text!r}; entities: {[(e, covered(message, e)) for e in message['entities']]}"
    return found[0]


async def refused_entities(tg: FakeTelegram, user: TelegramUser, since: int) -> list[dict[str, Any]]:
    return [c for c in await tg.calls(chat_id=user.chat_id, since=since)
            if "can't parse entities" in str(c["response"].get("description", ""))]


def visible_lines(markdown: str) -> list[str]:
    """long_markdown's lines as a reader sees them, derived without the bot's renderer: the oracle for splits."""
    out = []
    for line in markdown.splitlines():
        if line.startswith("```"):
            continue
        line = re.sub(r"^#+ ", "", re.sub(r"^- ", "• ", line))
        line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line).replace("**", "").replace("`", "")
        line = re.sub(r"\*([^*]+)\*", r"\1", line).rstrip()
        if line.strip():
            out.append(line)
    return out


USAGE_LINE = "🔢 "  # the turn's token usage under the answer (P1-13): not the answer's own text


def lines_of(parts: list[dict[str, Any]]) -> list[str]:
    return [line.rstrip() for p in parts for line in p["text"].split("\n")
            if line.strip() and not line.startswith(USAGE_LINE)]


def block_ends(markdown: str) -> set[str]:
    """Visible lines after which a block ends (a blank line or a closing fence follows in the source)."""
    src = markdown.splitlines()
    ends = set()
    for i, line in enumerate(src[:-1]):
        if line.strip() and not line.startswith("```") and (not src[i + 1].strip() or src[i + 1] == "```"):
            ends.update(visible_lines(line))
    return ends


def ends_in_code(message: dict[str, Any]) -> bool:
    size = len(message["text"].encode("utf-16-le")) // 2
    return any(e["type"] == "pre" and e["offset"] + e["length"] == size for e in message["entities"])


def starts_in_code(message: dict[str, Any]) -> bool:
    return any(e["type"] == "pre" and e["offset"] == 0 for e in message["entities"])


@pytest.mark.case("P2-01")
async def test_markdown_answer_rendered(stack: Stack, tg: FakeTelegram) -> None:
    """a Markdown answer arrives as Telegram entities; hostile text shows as written; no "can't parse entities\""""
    user = await fresh_chat(tg)
    key = f"render {new_id('p')}"
    since, [answer] = await ask(user, f"{key} [[mock:markdown]]", lambda m: "Answer for" in m["text"])
    text = answer["text"]
    entity(answer, "bold", f"Answer for {key}")                       # a heading
    entity(answer, "bold", "A list")
    entity(answer, "bold", "bold words")
    entity(answer, "italic", "italic words")
    entity(answer, "code", "inline_code()")
    assert entity(answer, "text_link", "the docs")["url"] == "https://example.com/docs?a=1&b=2"
    pre = entity(answer, "pre", 'def greet(name: str) -> str:\n    return f"<hello> {name} & welcome"')
    assert pre.get("language") == "python", pre
    entity(answer, "blockquote", "a quoted line")
    for line in ("• first item with bold", "  • a nested item", "1. numbered one", "2. numbered two"):
        assert f"\n{line}\n" in text, (line, text)
    # Hostile text is shown as written (`&amp;` is Markdown for `&`), and no entity touches it.
    hostile = HOSTILE.replace("&amp;", "&")
    assert hostile in text, text
    start = len(text[:text.index(hostile)].encode("utf-16-le")) // 2
    assert all(e["offset"] + e["length"] <= start for e in answer["entities"]), answer["entities"]
    final = [c for c in await tg.calls("editMessageText", user.chat_id, since) if c["params"].get("parse_mode")]
    assert final and final[-1]["params"]["parse_mode"] == "HTML" and final[-1]["status"] == 200, final
    # The user's own words come back in the mock's echo: Markdown-looking input is no risk either.
    echo = "<b>x</b> _*[]()~ a < b & c ``` unbalanced ` and <i>"
    since, [reply] = await ask(user, echo, lambda m: m["text"].startswith("mock reply:"))
    assert "<b>x</b>" in reply["text"] and "a < b & c" in reply["text"] and "<i>" in reply["text"], reply
    assert not await refused_entities(tg, user, 0), "the bot sent text Telegram could not parse"


@pytest.mark.case("P2-01")
async def test_unparsable_answer_goes_as_plain_text(stack: Stack, tg: FakeTelegram) -> None:
    """Telegram refuses the entities once for an edit and once for a send: those parts go again as plain text"""
    user = await fresh_chat(tg)
    key = f"fallback {new_id('p')}"
    markdown = long_markdown(9000, key)
    expected = visible_lines(markdown)
    for method in ("editMessageText", "sendMessage"):
        await tg.fault(method, status=400, description=PARSE_ERROR, with_parse_mode=True)
    since, parts = await ask(user, f"{key} [[mock:long_markdown=9000]]", lambda m: expected[-1] in m["text"])
    assert lines_of(parts) == expected, "the answer was not delivered whole, in order"
    assert len(parts) >= 3 and not parts[0]["entities"] and not parts[1]["entities"], parts[:2]
    assert all(p["entities"] for p in parts[2:]), "a part without a refusal lost its formatting"
    refused = await refused_entities(tg, user, since)
    assert sorted(c["method"] for c in refused) == ["editMessageText", "sendMessage"], refused
    assert all(c["params"]["parse_mode"] == "HTML" for c in refused)
    fallbacks = stack.procs["bot"].log_lines("tg_parse_fallback")
    assert {m for m in ("editMessageText", "sendMessage") if any(f"method={m}" in line for line in fallbacks)} == \
        {"editMessageText", "sendMessage"}, fallbacks
    assert not (await tg.get("faults"))["faults"], "a fault was left unused"


@pytest.mark.case("P2-02")
async def test_long_answer_split(stack: Stack, tg: FakeTelegram) -> None:
    """a 20,000+ character answer: parts within 4,096 characters after parsing, cut between blocks or inside a
    code block at a line end, the code block closed and reopened"""
    user = await fresh_chat(tg)
    key = f"long {new_id('p')}"
    markdown = long_markdown(20_000, key)
    expected, ends = visible_lines(markdown), block_ends(markdown)
    since, parts = await ask(user, f"{key} [[mock:long_markdown=20000]]", lambda m: expected[-1] in m["text"])
    assert len(markdown) >= 20_000 and 5 <= len(parts) <= MAX_PARTS, [len(p["text"]) for p in parts]
    assert all(len(p["text"]) <= LIMIT for p in parts), [len(p["text"]) for p in parts]
    assert lines_of(parts) == expected, "lines were lost, repeated or cut in the middle"
    in_code = 0
    for before, after in itertools.pairwise(parts):
        last = lines_of([before])[-1]
        if last in ends:
            assert not re.fullmatch(r"Long answer for .*|Section \d+", last), f"a heading ends a part: {last!r}"
            continue  # between blocks
        assert ends_in_code(before), f"a part ends inside a block that is not code: {last!r}"
        assert starts_in_code(after), "a code block was cut and not reopened"
        in_code += 1
    assert in_code >= 1, "the answer's long code blocks should have been split inside (and reopened)"
    reopened = [p for p in parts if starts_in_code(p)]
    assert all(p["entities"][0].get("language") == "python" for p in reopened), reopened
    sends = await tg.calls("sendMessage", user.chat_id, since)
    assert [c["params"].get("parse_mode") for c in sends[1:]] == ["HTML"] * (len(parts) - 1), sends
    assert not await refused_entities(tg, user, since)


@pytest.mark.case("P2-02")
async def test_answer_past_max_parts_is_a_document(stack: Stack, tg: FakeTelegram) -> None:
    """past answer_max_parts: the first part inline, then the whole answer as one .md document"""
    user = await fresh_chat(tg)
    key = f"huge {new_id('p')}"
    prompt = f"{key} [[mock:long_markdown=28000]]"  # 28,422 characters: 8 messages
    markdown = long_markdown(28_000, prompt_key(prompt))
    _, messages = await ask(user, prompt, lambda m: m.get("document") is not None)
    # The usage line (P1-13) goes under the first part, or alone after it when that part is full.
    first, doc = [m for m in messages if not m["text"].startswith(USAGE_LINE)]
    assert first["text"].startswith(f"Long answer for {key}") and first["entities"], first
    head = lines_of([first])
    assert head == visible_lines(markdown)[:len(head)] and len(first["text"]) <= LIMIT
    document = doc["document"]
    assert document["file_name"].endswith(".md") and document["file_size"] == len(markdown.encode()), document
    assert (await tg.file(document["file_id"])).decode() == markdown, "the document is not the whole answer"
    parts = int(re.search(r"take (\d+) messages", doc["text"])[1])  # type: ignore[index]
    assert parts == MAX_PARTS + 1, doc["text"]  # one more than allowed: the bot's default would have sent 8 messages
