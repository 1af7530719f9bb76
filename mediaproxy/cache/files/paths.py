"""
Names and atomic writes of the file layer (:mod:`mediaproxy.cache.files`): a cache key's parts
as file names (:func:`escape_part`, :class:`KeyPath`) and :func:`atomic_write` with its
temporary names and directory fsync.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import unquote

from attrs import frozen

_MAX_PART = 200
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def escape_part(part: str) -> str:
    """A key part as a file name: ``[A-Za-z0-9_-]`` as is, anything else ``%XX`` of its UTF-8
    bytes; ``""`` is ``%``. Reversible (:func:`unescape_part`), never ``.`` or ``..``."""
    out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode(
        "utf-8", "surrogatepass")) for c in part)
    return out or "%"


def unescape_part(name: str) -> str:
    return "" if name == "%" else unquote(name, errors="surrogatepass")


@frozen
class KeyPath:
    """Where the entry of one cache key lives."""

    tenant: str
    source: str
    variant: str

    @classmethod
    def of(cls, key: str) -> "KeyPath":
        """Raises ValueError for a key that is not three ``:``-separated parts."""
        parts = key.rsplit(":", 2)
        if len(parts) != 3:
            raise ValueError(f"not a cache key of three parts: {key!r}")
        escaped = cls(*(escape_part(p) for p in parts))
        if max(len(escaped.tenant), len(escaped.source), len(escaped.variant)) > _MAX_PART:
            raise ValueError(f"key part too long for a file name: {key!r}")
        return escaped

    def directory(self, results: Path) -> Path:
        return results / self.tenant / self.source[:2] / self.source

    def key(self) -> str:
        return ":".join(unescape_part(p) for p in (self.tenant, self.source, self.variant))


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def atomic_write(path: Path, data: bytes, mtime: float | None = None) -> None:
    """Write ``data`` to ``path`` so that ``path`` is at every moment absent, the old file or
    the whole new one: temporary file in the same directory, fsync, rename, fsync directory."""
    temp = _temp_name(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        _unlink(temp)
        raise
    _fsync_dir(path.parent)
