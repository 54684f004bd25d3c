"""Telegram's parse_mode HTML, as the real Bot API applies it: the visible text and its entities, or the error
Telegram answers, word for word.

A port of tdlib's `parse_html` and the trim in `fix_formatted_text` (td/telegram/MessageEntity.cpp), which the
Bot API server runs on every text with parse_mode HTML: only Telegram's tags, entities closed in order, the
four named character references and numeric ones; error offsets are in bytes of the UTF-8 text, entity offsets
and lengths in UTF-16 code units. Hand-written because no maintained Python package reproduces Telegram's
parser and its error texts; Python's html.parser accepts what Telegram refuses.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

Json = dict[str, Any]
TAGS = frozenset({"a", "b", "strong", "i", "em", "s", "strike", "del", "u", "ins", "tg-spoiler", "tg-emoji",
                  "tg-time", "span", "pre", "code", "blockquote"})
SIMPLE = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "s": "strikethrough",
          "strike": "strikethrough", "del": "strikethrough", "u": "underline", "ins": "underline",
          "tg-spoiler": "spoiler"}
SPACES = b" \t\r\n\v\0"  # tdlib's is_space: the NUL that ends its string counts
NAMED = {b"lt": "<", b"gt": ">", b"amp": "&", b"quot": '"'}


class EntityError(ValueError):
    """Telegram's own text, to follow "Bad Request: can't parse entities: "."""


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _at(b: bytes, i: int) -> int:
    return b[i] if i < len(b) else 0  # tdlib reads a NUL-terminated string


def _entity(b: bytes, pos: int) -> tuple[str, int] | None:
    """A character reference at `pos` (which holds '&'): the character and the position after it."""
    end, code = pos + 1, 0
    if _at(b, pos + 1) == ord("#"):
        end += 1
        hexa = _at(b, pos + 2) == ord("x")
        end += hexa
        digits = b"0123456789abcdefABCDEF" if hexa else b"0123456789"
        while _at(b, end) and _at(b, end) in digits:
            code = code * (16 if hexa else 10) + int(chr(b[end]), 16)
            end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return None
        char = chr(code)
    else:
        while chr(_at(b, end)).isascii() and chr(_at(b, end)).isalpha():
            end += 1
        named = NAMED.get(b[pos + 1:end])
        if named is None:
            return None
        char = named
    return char, end + 1 if _at(b, end) == ord(";") else end


def _checked_link(url: str) -> str:
    """A text_link's URL, or "" where Telegram drops the link and keeps the text."""
    if "://" not in url and not url.startswith(("tg:", "mailto:")):
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme in ("http", "https", "ton") and parts.netloc:
        return url
    return url if parts.scheme in ("tg", "mailto") else ""


def parse_html(source: str) -> tuple[str, list[Json]]:
    """The visible text and its entities (sorted by offset), or EntityError with Telegram's message."""
    b = source.encode()
    out: list[str] = []
    utf16, entities = 0, list[Json]()
    stack: list[tuple[str, str, int, int]] = []  # tag, argument, utf16 offset, len(out) at the start
    i = 0
    while i < len(b):
        c = b[i]
        if c == ord("&") and (ref := _entity(b, i)) is not None:
            out.append(ref[0])
            utf16 += utf16_len(ref[0])
            i = ref[1]
            continue
        if c != ord("<"):
            j = i + 1
            while j < len(b) and b[j] not in b"<&":
                j += 1
            chunk = b[i:j].decode()
            out.append(chunk)
            utf16 += utf16_len(chunk)
            i = j
            continue
        begin = i
        i += 1
        if _at(b, i) != ord("/"):
            while _at(b, i) not in SPACES and _at(b, i) != ord(">"):
                i += 1
            if _at(b, i) == 0:
                raise EntityError(f"Unclosed start tag at byte offset {begin}")
            tag = b[begin + 1:i].decode(errors="replace").lower()
            if tag not in TAGS:
                raise EntityError(f'Unsupported start tag "{tag}" at byte offset {begin}')
            argument = ""
            while _at(b, i) != ord(">"):
                while _at(b, i) and _at(b, i) in SPACES:
                    i += 1
                if _at(b, i) == ord(">"):
                    break
                name_start = i
                while _at(b, i) not in SPACES and _at(b, i) not in b"=>/\"'":
                    i += 1
                name = b[name_start:i].decode(errors="replace")
                if not name:
                    raise EntityError(f'Empty attribute name in the tag "{tag}" at byte offset {begin}')
                while _at(b, i) and _at(b, i) in SPACES:
                    i += 1
                if _at(b, i) != ord("="):
                    if _at(b, i) == 0:
                        raise EntityError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                    if tag == "blockquote" and name == "expandable":
                        argument = "1"
                    continue
                i += 1
                while _at(b, i) and _at(b, i) in SPACES:
                    i += 1
                if _at(b, i) == 0:
                    raise EntityError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                if _at(b, i) not in b"'\"":
                    token_start = i
                    while _at(b, i) and (chr(b[i]).isascii() and chr(b[i]).isalnum() or b[i] in b".-"):
                        i += 1
                    value = b[token_start:i].decode().lower()
                    if _at(b, i) not in SPACES and _at(b, i) != ord(">"):
                        raise EntityError(f"Unexpected end of name token at byte offset {token_start}")
                else:
                    quote, chars = b[i], []
                    i += 1
                    while _at(b, i) not in (quote, 0):
                        if b[i] == ord("&") and (ref := _entity(b, i)) is not None:
                            chars.append(ref[0].encode())
                            i = ref[1]
                            continue
                        chars.append(b[i:i + 1])
                        i += 1
                    if _at(b, i) == quote:
                        i += 1
                    value = b"".join(chars).decode(errors="replace")
                if _at(b, i) == 0:
                    raise EntityError(f"Unclosed start tag at byte offset {begin}")
                if tag == "a" and name == "href":
                    argument = value
                elif tag == "code" and name == "class" and value.startswith("language-"):
                    argument = value[9:]
                elif tag == "span" and name == "class" and value.startswith("tg-"):
                    argument = value[3:]
                elif (tag == "tg-emoji" and name == "emoji-id") or (tag == "tg-time" and name == "format"):
                    argument = value
                elif tag == "blockquote" and name == "expandable":
                    argument = "1"
            if tag == "span" and argument != "spoiler":
                raise EntityError(f'Tag "span" must have class "tg-spoiler" at byte offset {begin}')
            stack.append((tag, argument, utf16, len(out)))
            i += 1
            continue
        # an end tag
        if not stack:
            raise EntityError(f"Unexpected end tag at byte offset {begin}")
        while _at(b, i) not in SPACES and _at(b, i) != ord(">"):
            i += 1
        end_tag = b[begin + 2:i].decode(errors="replace").lower()
        while _at(b, i) and _at(b, i) in SPACES:
            i += 1
        if _at(b, i) != ord(">"):
            raise EntityError(f"Unclosed end tag at byte offset {begin}")
        i += 1
        tag, argument, start, out_start = stack.pop()
        if end_tag and end_tag != tag:
            raise EntityError(f'Unmatched end tag at byte offset {begin}, expected "</{tag}>", found "</{end_tag}>"')
        if utf16 > start:
            _close(entities, tag, argument, start, utf16 - start, "".join(out[out_start:]))
    if stack:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return _trim("".join(out), sorted(entities, key=lambda e: (e["offset"], -e["length"])))


def _close(entities: list[Json], tag: str, argument: str, offset: int, length: int, inner: str) -> None:
    last = entities[-1] if entities else None
    same = last is not None and last["offset"] == offset and last["length"] == length
    if tag in SIMPLE or tag == "span":
        entities.append({"type": SIMPLE.get(tag, "spoiler"), "offset": offset, "length": length})
    elif tag == "tg-emoji":
        if not argument.isdigit() or int(argument) == 0:
            raise EntityError("Invalid custom emoji identifier specified")
        entities.append({"type": "custom_emoji", "offset": offset, "length": length, "custom_emoji_id": argument})
    elif tag == "a":
        url = _checked_link(argument or inner)
        if url:
            entities.append({"type": "text_link", "offset": offset, "length": length, "url": url})
    elif tag == "pre":
        if same and last is not None and last["type"] == "code" and last.get("language"):
            last["type"] = "pre"
        else:
            entities.append({"type": "pre", "offset": offset, "length": length})
    elif tag == "code":
        if same and last is not None and last["type"] == "pre" and argument:
            last["language"] = argument
        else:
            entities.append({"type": "code", "offset": offset, "length": length, **({"language": argument}
                                                                                     if argument else {})})
    elif tag == "blockquote":
        entities.append({"type": "expandable_blockquote" if argument else "blockquote", "offset": offset,
                         "length": length})
    # tg-time without a date makes no entity


def _trim(text: str, entities: list[Json]) -> tuple[str, list[Json]]:
    """Trailing whitespace goes, and leading spaces and newlines before the first entity; entities follow."""
    for e in entities:  # a code entity's language is the Bot API's only for pre
        if e["type"] == "code":
            e.pop("language", None)
    kept = text.rstrip(" \t\r\n\v\f")
    end16 = utf16_len(kept)
    out = []
    for e in entities:
        if e["offset"] >= end16:
            continue
        out.append({**e, "length": min(e["length"], end16 - e["offset"])})
    first = out[0]["offset"] if out else end16
    lead = 0
    while lead < len(kept) and kept[lead] in " \n" and utf16_len(kept[:lead + 1]) <= first:
        lead += 1
    shift = utf16_len(kept[:lead])
    return kept[lead:], [{**e, "offset": e["offset"] - shift} for e in out]
