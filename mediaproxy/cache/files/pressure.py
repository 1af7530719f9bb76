"""
Disk pressure for the file layer (:mod:`mediaproxy.cache.files`): how full the disk is and
the byte bound to keep under it.
"""

from __future__ import annotations

#: How much of the current size is kept per cleanup pass under disk pressure.
SHRINK = {"ok": 1.0, "warning": 0.8, "critical": 0.5}


def disk_pressure(free_percent: float, warning_percent: float, critical_percent: float) -> str:
    """``"critical"``, ``"warning"`` or ``"ok"`` for the free share of the disk."""
    if free_percent < critical_percent:
        return "critical"
    if free_percent < warning_percent:
        return "warning"
    return "ok"


def byte_limit(pressure: str, max_bytes: int, current: int) -> int:
    """The bound to keep under ``pressure``: ``max_bytes`` when the disk is fine, else a share
    (:data:`SHRINK`) of what the cache holds now, so each pass under pressure shrinks it."""
    if pressure == "ok":
        return max_bytes
    return int(min(max_bytes, current) * SHRINK[pressure])
