"""
Every case of the reliability suite, in the order the runner runs them: an attack or a fault
against a real proxy process in front of a real backend process while normal traffic runs
(:mod:`.attacks`, :mod:`.faults`, :mod:`.load`, judged by :mod:`.common`). ``quick`` marks the
CI subset; a case scales itself down when :attr:`Context.quick` is set.
"""

from __future__ import annotations

from typing import Callable

import attrs

from .attacks import (case_gif_enlarge, case_gif_lying_screen, case_headers,
                      case_idle_readers_cached, case_jpeg_rescan, case_slow_post,
                      case_slow_readers_passthrough, case_webp_enlarge)
from .common import Context, Result
from .faults import (case_backend_flapping, case_backend_killed, case_backend_slow,
                     case_disk_full, case_disk_readonly, case_redis_killed,
                     case_sigkill_mid_write)
from .load import case_fuzz, case_overload, case_soak

__all__ = ["CASES", "Case", "Context", "Result"]


@attrs.frozen
class Case:
    name: str
    run: Callable[[Context], Result]
    quick: bool
    kind: str


CASES = [
    Case("gif-enlarge-gif", lambda c: case_gif_enlarge(c, "gif"), True, "attack"),
    Case("gif-enlarge-webp", lambda c: case_gif_enlarge(c, "webp"), False, "attack"),
    Case("gif-100f-enlarge", lambda c: case_gif_enlarge(c, "gif", 100), False, "attack"),
    Case("gif-lying-screen", case_gif_lying_screen, True, "attack"),
    Case("webp-enlarge", lambda c: case_webp_enlarge(c), False, "attack"),
    Case("webp-enlarge-webp", lambda c: case_webp_enlarge(c, "webp"), True, "attack"),
    Case("jpeg-rescan", case_jpeg_rescan, True, "attack"),
    Case("slow-post", case_slow_post, True, "attack"),
    Case("slow-readers", case_slow_readers_passthrough, False, "attack"),
    Case("idle-readers-cached", case_idle_readers_cached, False, "attack"),
    Case("headers", case_headers, True, "attack"),
    Case("backend-killed", case_backend_killed, True, "fault"),
    Case("backend-slow", case_backend_slow, False, "fault"),
    Case("backend-flapping", case_backend_flapping, False, "fault"),
    Case("redis-killed", case_redis_killed, False, "fault"),
    Case("disk-full", case_disk_full, False, "fault"),
    Case("disk-read-only", case_disk_readonly, False, "fault"),
    Case("sigkill-mid-write", case_sigkill_mid_write, True, "fault"),
    Case("overload", case_overload, True, "load"),
    Case("soak", case_soak, False, "load"),
    Case("fuzz", case_fuzz, False, "fuzz"),
]
