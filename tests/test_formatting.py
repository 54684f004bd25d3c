"""The bot's Markdown rendering against the fake Bot API's port of Telegram's HTML parser: whatever codex writes,
every message parses (no "can't parse entities"), fits after parsing, and the split loses no text.
Also pins the parser's error texts to Telegram's own."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.ends.answers import HOSTILE, long_markdown, rich_markdown
from harness.ends.tg_entities import EntityError, parse_html
from runtime.bot import formatting

# Markdown's and HTML's special characters, weighted up, with words, newlines and non-BMP characters.
PIECES = st.sampled_from(["*", "**", "_", "`", "```", "```python\n", "~~", "[", "]", "(", ")", "<", ">", "&", "&amp;",
                          "&#x27;", "<b>", "</i>", "# ", "- ", "1. ", "> ", "|", "---", "\n", "\n\n", "    ", "\\",
                          "![a](b)", "[l](https://e.com/?a=1&b=\"2\")", "😀", "é", "word", " ", "\t", "\x00"])
MARKDOWN = st.one_of(st.lists(PIECES, max_size=80).map("".join), st.text(max_size=300))


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def check(markdown: str, limit: int) -> list[formatting.Part]:
    answer = formatting.answer(markdown, max_parts=10_000, limit=limit)
    for part in answer.parts:
        text, _ = parse_html(part.html)  # raises EntityError on anything Telegram would refuse
        assert len(text) <= limit, (len(text), part.html)
        assert text.strip() == part.plain.strip(), (text, part.plain)
    source = markdown.strip() or formatting.EMPTY_ANSWER
    whole = "".join(r.text for r in formatting.runs(source))
    if not whole.strip():  # nothing visible (an empty code block): the answer is shown as written
        whole = source[:limit]
    assert _squash("".join(p.plain for p in answer.parts)) == _squash(whole), "the split lost or repeated text"
    return answer.parts


@settings(max_examples=400, deadline=None, derandomize=True, database=None)  # the same examples every run
@given(MARKDOWN, st.sampled_from([40, 200, 4096]))
def test_any_markdown_renders_to_html_telegram_parses(markdown: str, limit: int) -> None:
    check(markdown, limit)


def test_rich_answer_keeps_hostile_text_as_written() -> None:
    [part] = check(rich_markdown("k"), 4096)
    text, entities = parse_html(part.html)
    assert HOSTILE.replace("&amp;", "&") in text
    assert {e["type"] for e in entities} >= {"bold", "italic", "code", "text_link", "pre", "blockquote"}


def test_long_answer_reopens_code_blocks() -> None:
    parts = check(long_markdown(20_000, "k"), 4096)
    assert 5 <= len(parts) <= 8
    reopened = [p for p in parts[1:] if p.html.startswith('<pre><code class="language-python">')]
    assert reopened, "a split inside a code block must reopen it with its language"


@pytest.mark.parametrize(("html", "error"), [
    ("<p>x</p>", 'Unsupported start tag "p" at byte offset 0'),
    ("a < b", 'Unsupported start tag "" at byte offset 2'),
    ("é<b>x</i>", 'Unmatched end tag at byte offset 6, expected "</b>", found "</i>"'),
    ("<b>x", 'Can\'t find end tag corresponding to start tag "b"'),
    ("x</b>", "Unexpected end tag at byte offset 1"),
    ("<b", "Unclosed start tag at byte offset 0"),
    ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
])
def test_fake_parser_answers_as_telegram(html: str, error: str) -> None:
    with pytest.raises(EntityError) as exc:
        parse_html(html)
    assert str(exc.value) == error


def test_fake_parser_entities_count_utf16() -> None:
    text, entities = parse_html('😀 <b>x</b> <pre><code class="language-py">&lt;y&gt;</code></pre> <a href="https://e.com">l</a>')
    assert text == "😀 x <y> l"
    assert entities == [{"type": "bold", "offset": 3, "length": 1},
                        {"type": "pre", "offset": 5, "length": 3, "language": "py"},
                        {"type": "text_link", "offset": 9, "length": 1, "url": "https://e.com"}]
