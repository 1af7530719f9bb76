"""
The link check of the documentation (``tox -e docs``, ``./dev docs``, and
tests/test_docs_links.py in the suite): every link in ``docs/*.md``, ``README.md`` and
``plugins/*/README.md`` must resolve.

* A relative link (``configuration.md``, ``../conf/mediaproxy.toml``, ``#anchor``,
  ``operations.md#metrics``) must name a file or folder of the checkout, and its anchor a heading
  of that Markdown file, slugged as GitHub slugs them (lower case, punctuation dropped, spaces
  to hyphens, ``-1``, ``-2`` for repeats), or an explicit ``<a id=...>``/``<a name=...>``.
* An external link (``http://``, ``https://``) is checked for its syntax only (a scheme and a
  host, no spaces): no network, so the check is the same offline and in CI. ``mailto:`` is
  accepted as is.

Links inside fenced code blocks and inline code spans are not links and are skipped.

Run as ``python tests/doclinks.py`` (prints each broken link as ``file:line: target: why``;
exit status 1 when there is one).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
#: [text](target "title") and ![alt](target); the text may hold one level of brackets
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: [label]: target, a reference definition on a line of its own
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.I)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_ANCHOR = re.compile(r"<a\s[^>]*?(?:id|name)=\"([^\"]+)\"", re.I)


def documents(root: Path = ROOT) -> list[Path]:
    """The files checked: docs/*.md, README.md, plugins/*/README.md."""
    return sorted([*root.glob("docs/*.md"), root / "README.md",
                   *root.glob("plugins/*/README.md")])


def _unfenced(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opening = _FENCE.match(line)
        if opening:
            if fence is None:
                fence = opening.group(1)
            elif opening.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    for number, line in _unfenced(text):
        yield number, _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: the rendered text (links as their text, code
    spans as their content) in lower case, every character but letters, digits, ``_``, ``-``
    and spaces dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown text offers: its headings' slugs (repeats numbered) and
    explicit HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _unfenced(text):
        found.update(_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str):
    """(line number, target) of every link of a Markdown text."""
    for number, line in _prose_lines(text):
        for pattern in (_INLINE, _HTML):
            for target in pattern.findall(line):
                yield number, target
        reference = _REFERENCE.match(line)
        if reference:
            yield number, reference.group(1)


def problem(source: Path, target: str, root: Path = ROOT,
            cache: dict[Path, set[str]] | None = None) -> str | None:
    """Why ``target``, linked from ``source``, does not resolve; None when it does."""
    cache = {} if cache is None else cache
    parts = urlsplit(target)
    if parts.scheme in ("http", "https"):
        if not parts.netloc or " " in target or not re.fullmatch(r"[\w.-]+(:\d+)?",
                                                                parts.netloc):
            return "not a well-formed http(s) URL"
        return None
    if parts.scheme == "mailto":
        return None
    if parts.scheme:
        return f"an unexpected scheme {parts.scheme!r}"
    path, _, fragment = target.partition("#")
    destination = (source.parent / unquote(path)).resolve() if path else source
    if not destination.exists():
        return "no such file"
    if root not in destination.parents and destination != root:
        return "outside the checkout"
    if fragment:
        if destination.suffix != ".md" or destination.is_dir():
            return "an anchor into a file that is not Markdown"
        if destination not in cache:
            cache[destination] = anchors(destination.read_text(encoding="utf-8"))
        if unquote(fragment) not in cache[destination]:
            return f"no heading or anchor #{fragment} in {destination.relative_to(root)}"
    return None


def check(root: Path = ROOT) -> list[str]:
    """Every broken link of the documentation, as ``file:line: target: why``."""
    out, cache = [], {}
    for source in documents(root):
        for number, target in links(source.read_text(encoding="utf-8")):
            why = problem(source, target, root, cache)
            if why is not None:
                out.append(f"{source.relative_to(root)}:{number}: {target}: {why}")
    return out


def main() -> int:
    broken = check()
    for line in broken:
        print(line)
    count = sum(1 for source in documents() for _ in links(source.read_text(encoding="utf-8")))
    print(f"{len(broken)} broken of {count} links in {len(documents())} files")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
