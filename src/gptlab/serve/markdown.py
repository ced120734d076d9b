"""A small, safe Markdown renderer for the runs browser: the subset report.md uses (headings,
paragraphs, pipe tables, fenced code, block quotes, lists, inline code, bold, links, images).

Every piece of text is HTML-escaped before any tag is added, so no HTML in a file reaches the
page: a `<script>` in a report is shown as text. Links keep only http(s) addresses; an image is
a path relative to the report, left for the page to load through the runs API (`data-src`).
"""

from __future__ import annotations

import html
import posixpath
import re

INLINE = re.compile(
    r"`(?P<code>[^`]+)`"
    r"|!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)"
    r"|\[(?P<text>[^\]]+)\]\((?P<href>[^)\s]+)\)"
    r"|\*\*(?P<bold>[^*]+)\*\*"
)
FENCE = re.compile(r"^\s*```")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
PLAIN = re.compile(r"^(?!\s*$|\s*```|#{1,6}\s|>|\s*\||\s*[-*] )")  # a paragraph goes on


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def image_path(src: str, base: str) -> str | None:
    """The runs-folder path of an image `src` relative to the report in folder `base`; None
    for anything else (an address, an absolute path, a way out of the folder)."""
    if ":" in src or src.startswith("/") or "\\" in src:
        return None
    path = posixpath.normpath(posixpath.join(base, src)) if base else posixpath.normpath(src)
    return None if path == ".." or path.startswith(("../", "/")) else path


def inline(text: str, base: str) -> str:
    """One line's inline markup, every text escaped."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(esc(text[pos : m.start()]))
        pos = m.end()
        if m["code"] is not None:
            out.append(f"<code>{esc(m['code'])}</code>")
        elif m["src"] is not None:
            path = image_path(m["src"], base)
            out.append(f'<img data-src="{esc(path)}" alt="{esc(m["alt"])}">' if path else esc(m[0]))
        elif m["href"] is not None:
            href = m["href"]
            if href.startswith(("http://", "https://")):
                link = f'<a href="{esc(href)}" rel="noopener noreferrer" target="_blank">'
                out.append(f"{link}{inline(m['text'], base)}</a>")
            else:  # a file of the run: its name, as text
                out.append(f"<code>{esc(m['text'])}</code>")
        else:
            out.append(f"<strong>{inline(m['bold'], base)}</strong>")
    return "".join(out) + esc(text[pos:])


def table(rows: list[str], base: str) -> str:
    """A pipe table: header row, separator row, body rows (`\\|` is a literal bar)."""

    def cells(row: str) -> list[str]:
        parts = CELL_SPLIT.split(row.strip().strip("|"))
        return [inline(p.strip().replace("\\|", "|"), base) for p in parts]

    head = "".join(f"<th>{c}</th>" for c in cells(rows[0]))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(r)) + "</tr>" for r in rows[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def is_separator(line: str) -> bool:
    return bool(re.fullmatch(r"\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?\s*", line))


def take(lines: list[str], i: int, keep: re.Pattern[str]) -> tuple[list[str], int]:
    """The lines from `i` on that match `keep`, and the index after them."""
    j = i
    while j < len(lines) and keep.match(lines[j]):
        j += 1
    return lines[i:j], j


def render_markdown(text: str, base: str = "") -> str:
    """`text` as HTML; `base` is the report's folder in the runs folder (for its images)."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            j = i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            out.append(f"<pre><code>{esc(chr(10).join(lines[i + 1 : j]))}</code></pre>")
            i = j + 1
        elif m := HEADING.match(line):
            n = len(m[1])
            out.append(f"<h{n}>{inline(m[2], base)}</h{n}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and is_separator(lines[i + 1]):
            rows, i = take(lines, i, re.compile(r"^\s*\|"))
            out.append(table(rows, base))
        elif line.startswith(">"):
            quoted, i = take(lines, i, re.compile(r"^>"))
            inner = render_markdown("\n".join(q[1:].removeprefix(" ") for q in quoted), base)
            out.append(f"<blockquote>{inner}</blockquote>")
        elif re.match(r"^\s*[-*] ", line):
            items, i = take(lines, i, re.compile(r"^\s*[-*] "))
            lis = "".join(f"<li>{inline(x.lstrip()[2:], base)}</li>" for x in items)
            out.append(f"<ul>{lis}</ul>")
        elif line.strip():
            para, i = take(lines, i + 1, PLAIN)  # the first line, whatever it starts with
            out.append(f"<p>{' '.join(inline(p, base) for p in [line, *para])}</p>")
        else:
            i += 1
    return "\n".join(out)
