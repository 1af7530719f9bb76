"""
What every reliability case is made of beyond the processes (:mod:`.harness`): the
:class:`Context` a case runs in, the :class:`Result` it returns, the judging of answers
against the criteria of docs/reliability.md, the :class:`Guard` that samples the proxy's RSS
and kills it above :data:`RSS_CAP`, and the :class:`Prober` of the fault cases.

The criteria:

* attacks: every attack request answered cleanly (a 200 with a whole image, or a 4xx/502/503/
  504 with the JSON error body or a placeholder image; never a 500, never a dropped
  connection or a timeout) and, for the image attacks, within 10 s; the proxy's peak RSS
  under 1 GiB, and every normal request a correct 200 within 5 s;
* faults: no 500, no dropped connection, no wrong or partial answer, service back within 2 s
  of the origin (breaker-open answers under 50 ms), cache faults invisible to clients.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import attrs
from PIL import Image

from . import inputs
from .harness import (DROPPED, GiB, MiB, TIMEOUT, NormalTraffic, Origin, Proxy, Sampler, fetch,
                      image_width, percentile)

RSS_LIMIT = 1 * GiB
#: The proxy is SIGKILLed above this RSS, to protect the machine the suite runs on; the case
#: then fails with "RSS cap".
RSS_CAP = 3 * GiB
NORMAL_WITHIN = 5.0
#: Seconds within which every attack image request must be answered (bounded CPU per
#: request: a refusal comes from the header, a served image costs what a normal one does).
ATTACK_ANSWER_LIMIT = 10.0
RECOVERY_LIMIT = 2.0
BREAKER_OPEN_LIMIT = 0.050
#: Seconds after a 4x overload stops within which a new transform must succeed.
OVERLOAD_RECOVERY_LIMIT = 5.0


@attrs.define
class Result:
    case: str
    description: str
    attack: Counter = attrs.Factory(Counter)
    normal: dict = attrs.Factory(dict)
    peak_rss: int = 0
    figures: dict = attrs.Factory(dict)
    problems: list = attrs.Factory(list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return "FAIL" if self.problems else "PASS"


@attrs.define
class Context:
    """What a case runs with: a fresh temp dir, the scale, and the processes it started
    (stopped by the runner even when the case raises)."""

    tmp: Path
    quick: bool
    started: list = attrs.Factory(list)
    cleanups: list = attrs.Factory(list)

    def scale(self, quick, full):
        return quick if self.quick else full

    def origin(self, files: dict[str, bytes]) -> Origin:
        root = self.tmp / "origin"
        for path, body in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        (root / "media").mkdir(parents=True, exist_ok=True)
        origin = Origin(root).start()
        self.started.append(origin)
        return origin

    def proxy(self, origin: Origin, settings: dict | None = None, name: str = "proxy") -> Proxy:
        workdir = self.tmp / name
        workdir.mkdir(exist_ok=True)
        proxy = Proxy(workdir, origin.port, settings).start()
        self.started.append(proxy)
        return proxy

    def close(self) -> None:
        for process in reversed(self.started):
            try:
                process.kill()
            except Exception:
                pass
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:
                pass


NORMAL_FILES = {"/media/normal/photo.jpg": inputs.normal_jpeg()}
NORMAL_HIT = "/media/normal/photo.jpg?w=200&fmt=webp"


# -- judging ----------------------------------------------------------------------------------

def _is_image(body: bytes) -> str:
    """``""`` when ``body`` is a whole image (the stream verified, no pixels decoded), else
    why not."""
    try:
        with Image.open(io.BytesIO(body)) as decoded:
            decoded.verify()
        return ""
    except Exception as e:
        return str(e) or type(e).__name__


def answer_label(status, headers: dict, body: bytes, image: bool = True) -> tuple[str, str]:
    """``(label, problem)`` of one answer to an attack or a fault: the label counts it in the
    table (``"422 too_many_frames"``), the problem (``""`` when clean) fails the case.

    Clean: a 200 whose body is an image; a 4xx, 502, 503 or 504 carrying the JSON error body
    or, for image requests, a placeholder image named by ``X-Placeholder``. Anything else
    (another 5xx, a dropped connection, a timeout) is a problem."""
    if status in (DROPPED, TIMEOUT):
        return status, status
    if status == 200:
        if not image:
            return "200", ""
        why = _is_image(body)
        return ("200", "") if not why else ("200 (not an image)",
                                            f"200 whose body is not an image ({why})")
    placeholder = headers.get("x-placeholder", "")
    error = ""
    if placeholder:
        label = f"{status} placeholder {placeholder}"
        clean = not _is_image(body)
    else:
        try:
            error = json.loads(body).get("error", "")
        except Exception:
            pass
        label = f"{status} {error}".strip()
        clean = bool(error)
    if status == 503 and "retry-after" in headers:
        label += " (Retry-After)"
    if status >= 500 and status not in (502, 503, 504):
        return label, f"{status} answer"
    if not 400 <= status < 600:
        return label, f"unexpected {status}"
    return label, "" if clean else f"{status} without a JSON error body or placeholder image"


def judge_normal(result: Result, normal: NormalTraffic, start: float, end: float,
                 kinds: tuple[str, ...] | None = None) -> None:
    outcomes = [o for o in normal.between(start, end) if kinds is None or o.kind in kinds]
    good = [o for o in outcomes if o.correct and o.latency <= NORMAL_WITHIN]
    result.normal = {
        "requests": len(outcomes),
        "success": len(good) / len(outcomes) if outcomes else 0.0,
        "p99": percentile([o.latency for o in outcomes], 99),
    }
    if not outcomes:
        result.problems.append("no normal request completed during the attack")
    elif len(good) < len(outcomes):
        bad = Counter(f"{o.kind}:{o.status}" + ("" if o.correct else " wrong")
                      for o in outcomes if not (o.correct and o.latency <= NORMAL_WITHIN))
        result.problems.append(f"normal traffic: {len(outcomes) - len(good)} of "
                               f"{len(outcomes)} not a correct 200 within {NORMAL_WITHIN:g} s "
                               f"({dict(bad)})")


def judge_rss(result: Result, sampler: Sampler) -> None:
    result.peak_rss = sampler.peak_rss
    if sampler.peak_rss >= RSS_CAP:
        result.problems.append(f"RSS reached the {RSS_CAP // GiB} GiB cap: proxy killed")
    elif sampler.peak_rss >= RSS_LIMIT:
        result.problems.append(f"peak RSS {sampler.peak_rss / MiB:.0f} MiB >= 1 GiB")


class Guard(Sampler):
    """A :class:`Sampler` that SIGKILLs the proxy above :data:`RSS_CAP` (the suite must not
    take the machine down with the proxy it measures)."""

    def __init__(self, proxy: Proxy):
        super().__init__(proxy.pid)
        self.proxy = proxy

    def _run(self) -> None:
        deadline = time.monotonic() + 3600
        while not self._stop.is_set() and time.monotonic() < deadline:
            got = self.sample()
            if got:
                self.samples.append((time.monotonic(), *got))
                self.peak_rss = max(self.peak_rss, got[0])
                if got[0] >= RSS_CAP:
                    self.proxy.kill()
            self._stop.wait(self.every)


def repeat_concurrently(work: Callable[[int], Any], clients: int, min_seconds: float,
                        max_each: int) -> list:
    """Run ``work(i)`` in ``clients`` threads, each repeating until ``min_seconds`` have passed
    (at least once, at most ``max_each`` times, until ``work`` returns ``None``); the results
    of every call."""
    results, lock = [], threading.Lock()
    deadline = time.monotonic() + min_seconds

    def loop(index):
        for n in range(max_each):
            got = work(index * max_each + n)
            if got is None:                         # the work says: no more
                break
            with lock:
                results.append(got)
            if time.monotonic() >= deadline:
                break

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class Prober:
    """Asks for a source the proxy has never fetched (``/media/gen/<n>.jpg``, the 800x600 photo
    under a new name, so every probe needs the backend) every ``every`` s, each probe in its
    own thread (a slow answer does not delay the next probe; at most 100 in flight), keeping
    (start, status, label, latency, problem) of each: the fault cases' view of the service."""

    def __init__(self, port: int, every: float = 0.1):
        self.port, self.every = port, every
        self.seen: list[tuple[float, Any, str, float, str]] = []
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(100)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._threads: list[threading.Thread] = []

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        for t in self._threads:
            t.join(20)

    def _run(self):
        deadline = time.monotonic() + 1800
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            n += 1
            if self._slots.acquire(timeout=1.0):
                t = threading.Thread(target=self._probe, args=(n,), daemon=True)
                self._threads.append(t)
                t.start()
            self._stop.wait(self.every)

    def _probe(self, n: int) -> None:
        try:
            width = 100 + n % 500
            start = time.monotonic()
            status, headers, body = fetch(
                self.port, f"/media/gen/{n}-{time.time_ns()}.jpg?w={width}&fmt=png",
                timeout=15)
            latency = time.monotonic() - start
            label, problem = answer_label(status, headers, body)
            if status == 200 and image_width(body) != width:
                problem = "wrong or partial image"
            self.seen.append((start, status, label, latency, problem))
        finally:
            self._slots.release()

    def first_ok_after(self, moment: float, limit: float = 30.0) -> float | None:
        """Seconds from ``moment`` to the start of the first 200 started after it (waits up
        to ``limit`` s for one)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for start, status, *_ in list(self.seen):
                if start >= moment and status == 200:
                    return start - moment
            time.sleep(0.05)
        return None


def judge_fault(result: Result, prober: Prober, normal: NormalTraffic, down: float, up: float,
                recovery: float | None | str, hits: NormalTraffic | None = None) -> None:
    """``recovery``: seconds from the fault's end to the first success (``None``: never), or a
    string when the fault must be invisible (a cache): then any error during it fails.
    ``hits``: clients asking for cache hits only, which must be served during the fault."""
    during = [s for s in prober.seen if down <= s[0] < up]
    invisible = isinstance(recovery, str)
    after = [s for s in prober.seen if s[0] >= up + (0 if invisible else recovery or 0)]
    for _, _, label, _, problem in prober.seen:
        result.attack[label] += 1
        if problem and problem not in result.problems:
            result.problems.append(problem)
    result.figures["probe errors during"] = str(sum(1 for s in during if s[1] != 200))
    result.figures["probe errors after recovery"] = str(sum(1 for s in after if s[1] != 200))
    if any(s[1] != 200 for s in after):
        result.problems.append("errors after the recovery")
    if invisible:
        result.figures["recovery"] = recovery
        if any(s[1] != 200 for s in during):
            result.problems.append("errors during a cache fault (a cache must fail invisibly)")
    elif recovery is None:
        result.figures["recovery"] = "never"
        result.problems.append("the service did not come back within 30 s")
    else:
        result.figures["recovery"] = f"{recovery:.2f} s"
        if recovery > RECOVERY_LIMIT:
            result.problems.append(f"recovery {recovery:.2f} s > {RECOVERY_LIMIT:g} s")
    wrong = sum(1 for o in normal.outcomes if o.status == 200 and not o.correct)
    wrong += sum(1 for s in prober.seen if s[4] == "wrong or partial image")
    result.figures["wrong or partial answers"] = str(wrong)
    if wrong:
        result.problems.append(f"{wrong} wrong or partial answers")
    bad = [o for o in normal.outcomes if o.status in (DROPPED, TIMEOUT, 500)]
    if bad:
        result.problems.append(f"{len(bad)} normal requests dropped, timed out or 500")
    if hits is not None:
        judge_normal(result, hits, down, up)
