"""A Markdown answer as Telegram messages: parsed by markdown-it-py, written in the HTML subset Telegram reads
(parse_mode HTML), and split so that each message fits Telegram's 4,096 characters after entity parsing.

Why HTML and not MarkdownV2: in HTML only `<`, `>` and `&` need escaping, everywhere, so escaping cannot miss
a context; MarkdownV2 reserves 18 characters with different rules inside code, links and text.

Why a renderer of our own on top of the parser: markdown-it-py's HTML renderer writes `<p>`, `<h1>`, `<ul>`,
`<li>`, which Telegram refuses ("Unsupported start tag"). Markdown is parsed by markdown-it-py (CommonMark);
this module only maps its tokens to the tags Telegram has. The converters on PyPI that target Telegram
(telegramify-markdown, chatgpt-md-converter, md2tgmd) either send entity arrays, escape with regular
expressions, or split without knowing where a code block ends; the split here has to reopen a code block,
so it works on styled runs, not on finished strings.

The model: an answer is a list of `Run`s, each a piece of text with the tags that apply to it. A message is any
slice of runs: its HTML closes every tag at its end and reopens them in the next message, so a cut may fall
inside a code block or a bold phrase and both messages still parse.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markdown_it.token import Token

MAX_TEXT = 4096          # Telegram's limit for one message, in characters after entity parsing
EMPTY_ANSWER = "(Codex finished without a text reply.)"
SAFE_URL = re.compile(r"(?i)^(https?|tg|mailto):")  # a javascript: link would be refused or dropped by Telegram
LANGUAGE = re.compile(r"^[A-Za-z0-9_+#.-]{1,32}$")
BULLET = "•"
RULE = "──────────"

Tag = tuple[str, str]  # (tag, argument): ("b", ""), ("a", url), ("pre", language), ("blockquote", "")

_md = MarkdownIt("commonmark").enable(["table", "strikethrough"])


@dataclass(frozen=True)
class Run:
    text: str
    tags: tuple[Tag, ...] = ()
    after_heading: bool = False  # a block boundary that would leave a heading alone at the end of a message


@dataclass(frozen=True)
class Part:
    """One message: `html` goes with parse_mode HTML; `plain` is the same text without formatting, sent instead
    if Telegram ever cannot parse `html`, so the answer is never lost."""

    html: str
    plain: str


@dataclass(frozen=True)
class Answer:
    parts: list[Part]
    document: bytes | None = None  # the whole Markdown answer, when it would take more messages than allowed
    total_parts: int = 0           # how many messages the whole answer would take


def plain_part(text: str) -> Part:
    return Part(html.escape(text, quote=False), text)


# ---- Markdown -> runs -----------------------------------------------------------------------------------

@dataclass
class _Writer:
    """Walks markdown-it's token stream; `blocks` are the top-level blocks, each a list of runs."""

    blocks: list[tuple[list[Run], bool]] = field(default_factory=list)  # runs, and whether it is a heading
    runs: list[Run] = field(default_factory=list)
    tags: list[Tag] = field(default_factory=list)
    lists: list[list[str | int]] = field(default_factory=list)  # per open list: [kind, next number]
    links: list[tuple[bool, str, int]] = field(default_factory=list)  # per open link: tag pushed, href, runs before
    marked: bool = False  # a list marker was just written: the item's first block starts on its line
    table: list[list[str]] | None = None

    def emit(self, text: str, *extra: Tag) -> None:
        if text:
            self.runs.append(Run(text, (*self.tags, *extra)))
            self.marked = False

    def new_line(self) -> None:
        """A nested block starts on a line of its own, unless it is the first thing in a list item."""
        if self.runs and not self.marked and not self.runs[-1].text.endswith("\n"):
            self.emit("\n")

    def end_block(self, heading: bool = False) -> None:
        if self.runs:
            self.blocks.append((self.runs, heading))
        self.runs = []

    def block(self, tok: Token) -> None:
        kind = tok.type
        if kind in ("paragraph_open", "heading_open", "blockquote_open", "fence", "code_block", "hr",
                    "html_block", "table_open") and not tok.hidden:
            self.new_line()
        if kind == "heading_open":
            self.tags.append(("b", ""))
        elif kind == "blockquote_open":
            self.tags.append(("blockquote", ""))
        elif kind in ("heading_close", "blockquote_close"):
            self.tags.pop()
        elif kind in ("bullet_list_open", "ordered_list_open"):
            self.lists.append([kind, int(tok.attrGet("start") or 1)])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            self.lists.pop()
        elif kind == "list_item_open":
            self.new_line()
            current = self.lists[-1]
            marker = f"{tok.info or current[1]}." if current[0] == "ordered_list_open" else BULLET
            current[1] = int(current[1]) + 1
            self.emit("  " * (len(self.lists) - 1) + marker + " ")
            self.marked = True
        elif kind in ("fence", "code_block"):
            language = tok.info.split()[0] if tok.info.strip() else ""
            self.emit(tok.content.rstrip("\n") or " ", ("pre", language if LANGUAGE.match(language) else ""))
        elif kind == "hr":
            self.emit(RULE)
        elif kind == "html_block":
            self.emit(tok.content.rstrip("\n"))  # not Telegram markup: shown as the model wrote it
        elif kind == "table_open":
            self.table = []
        elif kind == "tr_open" and self.table is not None:
            self.table.append([])
        elif kind == "table_close" and self.table is not None:
            self.emit(_table(self.table), ("pre", ""))
            self.table = None
        elif kind == "inline":
            if self.table is not None and self.table:
                self.table[-1].append(_plain_inline(tok))
            else:
                self.inline(tok.children or [])
        if tok.level == 0 and tok.nesting <= 0:
            self.end_block(heading=kind == "heading_close")

    def inline(self, children: list[Token]) -> None:
        for child in children:
            kind = child.type
            if kind in ("text", "html_inline"):  # inline HTML is not Telegram markup: shown as written
                self.emit(child.content)
            elif kind in ("softbreak", "hardbreak"):
                self.emit("\n")
            elif kind == "code_inline":
                self.emit(child.content, ("code", ""))
            elif kind in ("strong_open", "em_open", "s_open"):
                self.tags.append(({"strong_open": "b", "em_open": "i", "s_open": "s"}[kind], ""))
            elif kind in ("strong_close", "em_close", "s_close"):
                self.tags.pop()
            elif kind == "link_open":
                href = str(child.attrGet("href") or "")
                self.links.append((bool(SAFE_URL.match(href)), href, len(self.runs)))
                if self.links[-1][0]:
                    self.tags.append(("a", href))
            elif kind == "link_close":
                pushed, href, before = self.links.pop()
                if pushed:
                    self.tags.pop()
                if len(self.runs) == before:  # `[](x)` has no text to show: shown as written
                    self.emit(f"[]({href})")
            elif kind == "image":
                src, alt = str(child.attrGet("src") or ""), _plain_children(child.children or []) or "image"
                if SAFE_URL.match(src):
                    self.emit(alt, ("a", src))
                else:
                    self.emit(f"{alt} ({src})")
            elif child.content:
                self.emit(child.content)


def _plain_children(children: list[Token]) -> str:
    return "".join(c.content if c.type not in ("softbreak", "hardbreak") else " " for c in children)


def _plain_inline(tok: Token) -> str:
    return _plain_children(tok.children or []).strip()


def _table(rows: list[list[str]]) -> str:
    """A Markdown table as aligned monospace columns: Telegram has no table entity."""
    width = max(len(r) for r in rows)
    cols = [max((len(r[i]) for r in rows if i < len(r)), default=0) for i in range(width)]
    lines = [" | ".join(cell.ljust(cols[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    if len(lines) > 1:
        lines.insert(1, "-+-".join("-" * c for c in cols))
    return "\n".join(lines)


def runs(markdown: str) -> list[Run]:
    """The answer as runs: blocks joined by a blank line, every newline a run of its own (a place to cut)."""
    writer = _Writer()
    for tok in _md.parse(markdown.replace("\x00", "")):  # NUL ends a string inside Telegram's parser
        writer.block(tok)
    writer.end_block()
    out: list[Run] = []
    heading = False
    for block, is_heading in writer.blocks:
        if out:
            out.append(Run("\n\n", after_heading=heading))
        heading = is_heading
        for run in block:
            for i, line in enumerate(run.text.split("\n")):
                if i:
                    out.append(Run("\n", run.tags))
                if line:
                    out.append(Run(line, run.tags))
    return out


# ---- runs -> messages -----------------------------------------------------------------------------------

def _open(tag: Tag) -> str:
    name, arg = tag
    if name == "a":
        return f'<a href="{html.escape(arg, quote=True)}">'
    if name == "pre":
        return f'<pre><code class="language-{arg}">' if arg else "<pre>"
    return f"<{name}>"


def _close(tag: Tag) -> str:
    name, arg = tag
    return "</code></pre>" if name == "pre" and arg else f"</{name}>"


def to_html(part: list[Run]) -> str:
    out: list[str] = []
    open_: tuple[Tag, ...] = ()
    for run in part:
        same = 0
        while same < min(len(open_), len(run.tags)) and open_[same] == run.tags[same]:
            same += 1
        out += [_close(t) for t in reversed(open_[same:])] + [_open(t) for t in run.tags[same:]]
        out.append(html.escape(run.text, quote=False))
        open_ = run.tags
    out += [_close(t) for t in reversed(open_)]
    return "".join(out)


def _cut_rank(run: Run) -> int:
    """Where a message may end: 0 between blocks, 1 at a line end or after a heading, 2 nowhere better (a space
    or any character)."""
    if run.text == "\n\n":
        return 1 if run.after_heading else 0
    return 1 if run.text == "\n" else 2


def split(all_runs: list[Run], limit: int = MAX_TEXT) -> list[list[Run]]:
    """Messages of at most `limit` visible characters. A message ends at its last block boundary in its second
    half, else at its last line end there, else at any line end, else at a space, else anywhere; the run it is
    cut at is dropped. Tags open at a cut are closed and reopened by to_html, each message on its own."""
    parts: list[list[Run]] = []
    queue = list(all_runs)
    while queue:
        size, end = 0, 0
        while end < len(queue) and size + len(queue[end].text) <= limit:
            size += len(queue[end].text)
            end += 1
        if end == len(queue):
            parts.append(queue)
            break
        sizes = [0]
        for run in queue[:end]:
            sizes.append(sizes[-1] + len(run.text))
        cut = next((i for rank in (0, 1) for i in range(end - 1, 0, -1)
                    if _cut_rank(queue[i]) == rank and sizes[i] >= limit // 2), None)
        if cut is None:
            cut = next((i for i in range(end - 1, 0, -1) if _cut_rank(queue[i]) < 2), None)
        if cut is not None:
            parts.append(queue[:cut])
            queue = queue[cut + 1:]
            continue
        # No line end fits: split the run that crosses the limit, at its last space if it has one.
        head, room = queue[end], limit - size
        space = head.text.rfind(" ", 0, room + 1)
        at = space if space > 0 else room
        parts.append([*queue[:end], Run(head.text[:at], head.tags)] if at > 0 else queue[:end])
        rest = head.text[at + 1:] if space > 0 else head.text[at:]
        queue = ([Run(rest, head.tags)] if rest else []) + queue[end + 1:]
    return [p for p in parts if "".join(r.text for r in p).strip()]


def answer(markdown: str, max_parts: int, limit: int = MAX_TEXT) -> Answer:
    """The messages for a final answer; past `max_parts`, only the first goes inline and the rest is a document."""
    text = markdown.strip() or EMPTY_ANSWER
    messages = split(runs(text), limit) or [[Run(text[:limit])]]
    parts = [Part(to_html(p), "".join(r.text for r in p)) for p in messages]
    if len(parts) > max_parts:
        return Answer(parts[:1], markdown.encode(), len(parts))  # as codex wrote it
    return Answer(parts, None, len(parts))
