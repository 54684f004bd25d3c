"""Canned Markdown answers the mock model gives (markers `[[mock:markdown]]`, `[[mock:long_markdown=N]]`).

Deterministic, so a scenario rebuilds the exact answer it expects from the same call.
"""
from __future__ import annotations

# Text that looks like markup but is not Telegram's: a renderer must show it as written.
HOSTILE = ("Not markup: <b>not bold</b> <script>x</script> a < b && c > d &amp; _*[]()~ "
           "and an unbalanced ` backtick, **unclosed bold and [half a link](")


def rich_markdown(key: str) -> str:
    """Every construct P2-01 names, plus hostile text; `key` (the prompt) is in it, so a chat's answer is its own."""
    return f"""# Answer for {key}

Some **bold words**, some *italic words*, and `inline_code()` in a sentence.
See [the docs](https://example.com/docs?a=1&b=2) for more.

## A list

- first item with **bold**
- second item with `code`
  - a nested item
1. numbered one
2. numbered two

> a quoted line

```python
def greet(name: str) -> str:
    return f"<hello> {{name}} & welcome"
```

{HOSTILE}
"""


def long_markdown(size: int, key: str) -> str:
    """At least `size` characters: sections of paragraphs, lists and code blocks, and one code block longer than a
    Telegram message, so a split has to fall inside a fence."""
    out = [f"# Long answer for {key}\n"]
    n = 0
    while sum(map(len, out)) < size:
        n += 1
        out.append(f"## Section {n}\n\nParagraph {n} explains **step {n}** with `value_{n}` and a "
                   f"[reference](https://example.com/s/{n}). " + "More words to read. " * 12 + "\n")
        out.append("".join(f"- point {n}.{i}: *detail* number {i}\n" for i in range(1, 6)))
        if n % 4 == 2:  # a code block over 4,096 characters
            body = "".join(f"    total_{i} = compute({n}, {i}, '<{i}>') & mask  # line {n}.{i}\n" for i in range(120))
            out.append(f"```python\ndef big_{n}():\n{body}```\n")
        else:
            out.append(f"```bash\necho 'section {n}' && ls -la /tmp/{n}\n```\n")
    return "\n".join(out)
