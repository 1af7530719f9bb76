"""
Where each key of a TOML document is written: ``key_lines(text)`` -> ``{path: line}``.

:mod:`tomllib` gives values, not positions, and a configuration error is only useful when it
says ``conf/x.toml:12:``. This is a small scanner over a document tomllib has already
accepted (so it need not report errors): ``[table]`` and ``[[array.of.tables]]`` headers,
``key = value`` lines with dotted and quoted keys, and the keys inside inline tables and
arrays, each recorded with the 1-based line where its name (or its table's header) starts.

A path is a tuple of key names, with the index of an element for arrays and arrays of tables:
``("alerts", "rules", 1, "expr")`` is ``expr`` in the second ``[[alerts.rules]]``. A path
that is only implied (``a`` of ``a.b = 1``, a super-table never written as a header) gets
the line where it is first implied. Standard library only.
"""

from __future__ import annotations

from bisect import bisect_right

Path = tuple  # of str and int

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Stuck(Exception):
    """The scanner met what it does not understand (it never should, on valid TOML)."""


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.lines: dict[Path, int] = {}
        self.arrays: dict[Path, int] = {}   # array-of-tables path -> index of its last element

    def line(self, pos: int) -> int:
        return bisect_right(self.starts, pos)

    def record(self, path: Path, pos: int) -> None:
        line = self.line(pos)
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    # -- lexical pieces -------------------------------------------------------------------

    def blank(self, pos: int) -> int:
        """Past spaces and tabs."""
        text = self.text
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        return pos

    def gap(self, pos: int) -> int:
        """Past whitespace, newlines and comments (between array elements, lines)."""
        text = self.text
        while pos < len(text):
            if text[pos] in " \t\r\n":
                pos += 1
            elif text[pos] == "#":
                end = text.find("\n", pos)
                pos = len(text) if end < 0 else end
            else:
                break
        return pos

    def string(self, pos: int) -> tuple[str, int]:
        """A string of any of the four kinds starting at ``pos``: (its value, position after)."""
        text = self.text
        quote = text[pos]
        if text.startswith(quote * 3, pos):
            end = text.find(quote * 3, pos + 3)
            if quote == '"':
                while text[end - 1] == "\\" and _escaped(text, end - 1):
                    end = text.find(quote * 3, end + 1)
            while text.startswith(quote, end + 3):   # up to two quotes may end the content
                end += 1
            return text[pos + 3:end], end + 3
        out, i = [], pos + 1
        while text[i] != quote:
            if quote == '"' and text[i] == "\\":
                c = text[i + 1]
                if c in "uU":
                    size = 4 if c == "u" else 8
                    out.append(chr(int(text[i + 2:i + 2 + size], 16)))
                    i += 2 + size
                    continue
                out.append(_ESCAPES.get(c, c))
                i += 2
                continue
            out.append(text[i])
            i += 1
        return "".join(out), i + 1

    def key(self, pos: int) -> tuple[list[tuple[str, int]], int]:
        """A dotted key: [(part, its position), ...] and the position after it."""
        text, parts = self.text, []
        while True:
            pos = self.blank(pos)
            start = pos
            if text[pos] in "\"'":
                name, pos = self.string(pos)
            else:
                while pos < len(text) and text[pos] in _BARE:
                    pos += 1
                name = text[start:pos]
            parts.append((name, start))
            pos = self.blank(pos)
            if pos < len(text) and text[pos] == ".":
                pos += 1
                continue
            return parts, pos

    # -- values ---------------------------------------------------------------------------

    def value(self, pos: int, path: Path) -> int:
        text = self.text
        pos = self.blank(pos)
        c = text[pos]
        if c == "{":
            return self.inline_table(pos + 1, path)
        if c == "[":
            return self.array(pos + 1, path)
        if c in "\"'":
            return self.string(pos)[1]
        while pos < len(text) and text[pos] not in ",]}\n#":
            pos += 1
        return pos

    def inline_table(self, pos: int, path: Path) -> int:
        text, last = self.text, -1
        while True:
            pos = self.gap(pos)
            last = _advanced(last, pos)
            if text[pos] == "}":
                return pos + 1
            if text[pos] == ",":
                pos += 1
                continue
            parts, pos = self.key(pos)
            full = path + tuple(name for name, _ in parts)
            for n, (_, start) in enumerate(parts):
                self.record(full[:len(path) + n + 1], start)
            pos = self.value(pos + 1, full)   # past "="

    def array(self, pos: int, path: Path) -> int:
        text, index, last = self.text, 0, -1
        while True:
            pos = self.gap(pos)
            last = _advanced(last, pos)
            if text[pos] == "]":
                return pos + 1
            if text[pos] == ",":
                pos += 1
                continue
            self.record(path + (index,), pos)
            pos = self.value(pos, path + (index,))
            index += 1

    # -- the document -----------------------------------------------------------------------

    def resolve(self, names: list[str], new_element: bool) -> Path:
        """A header's names as a path: an array of tables on the way stands for its last
        element; ``new_element`` ([[header]]) adds one to the array the header names."""
        path: Path = ()
        for n, name in enumerate(names):
            path += (name,)
            last = n == len(names) - 1
            if last and new_element:
                index = self.arrays.get(path, -1) + 1
                self.arrays[path] = index
                path += (index,)
            elif path in self.arrays:
                path += (self.arrays[path],)
        return path

    def document(self) -> dict[Path, int]:
        text, pos, table, last = self.text, 0, (), -1
        while True:
            pos = self.gap(pos)
            if pos >= len(text):
                return self.lines
            last = _advanced(last, pos)
            if text[pos] == "[":
                double = text.startswith("[[", pos)
                parts, pos = self.key(pos + (2 if double else 1))
                pos += 2 if double else 1
                table = self.resolve([name for name, _ in parts], double)
                self.record(table, parts[0][1])
                continue
            parts, pos = self.key(pos)
            full = table + tuple(name for name, _ in parts)
            for n, (_, start) in enumerate(parts):
                self.record(full[:len(table) + n + 1], start)
            pos = self.value(pos + 1, full)


def _advanced(last: int, pos: int) -> int:
    """``pos``, after checking that a loop moved on since ``last`` (no endless loop, whatever
    the text)."""
    if pos <= last:
        raise _Stuck(pos)
    return pos


def _escaped(text: str, pos: int) -> bool:
    """Whether the backslash at ``pos`` escapes what follows (an odd run of backslashes)."""
    run = 0
    while pos >= 0 and text[pos] == "\\":
        run += 1
        pos -= 1
    return run % 2 == 1


def key_lines(text: str) -> dict[Path, int]:
    """``{path: line}`` for every key, table and array element of the TOML ``text`` (which
    must be valid TOML: parse it with tomllib first). Should the scanner ever misread a valid
    document, it returns what it found before: an error then names fewer lines, but a valid
    file never fails to load because of this."""
    scanner = _Scanner(text)
    try:
        return scanner.document()
    except (_Stuck, IndexError, ValueError):
        return scanner.lines


def path_of(key: str) -> Path:
    """A dotted configuration key as a path: ``alerts.rules[1].expr`` ->
    ``("alerts", "rules", 1, "expr")``."""
    out: list = []
    for part in key.split("."):
        name, bracket, rest = part.partition("[")
        out.append(name)
        while bracket:
            number, _, rest = rest.partition("]")
            out.append(int(number))
            _, bracket, rest = rest.partition("[")
    return tuple(out)
