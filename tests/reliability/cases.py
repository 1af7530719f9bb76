"""
Every case of the reliability suite: an attack or a fault, run against a real proxy process in
front of a real backend process while normal traffic runs, judged by the criteria of
docs/reliability.md:

* attacks: every attack request answered cleanly (a 200 with a decodable image, or a 4xx/503
  with the JSON error body; never another 5xx, never a dropped connection or a timeout), the
  proxy's peak RSS under 1 GiB, and every normal request a correct 200 within 5 s;
* faults: no 500, no dropped connection, no wrong or partial answer, service back within 2 s
  of the origin (breaker-open answers under 50 ms), cache faults invisible to clients.

A case returns a :class:`Result`: the figures and the verdict. ``quick`` scales a case down
for CI (shorter phases, fewer clients); the figures of docs/reliability.md come from the
full run.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import attrs
from PIL import Image

from . import inputs
from .harness import (DROPPED, GiB, HOST, MiB, TIMEOUT, NormalTraffic, Origin, Proxy, Sampler,
                      fetch, image_width, percentile, raw_request)

RSS_LIMIT = 1 * GiB
#: The proxy is SIGKILLed above this RSS, to protect the machine the suite runs on; the case
#: then fails with "RSS cap".
RSS_CAP = 3 * GiB
NORMAL_WITHIN = 5.0
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


# -- the attacks ------------------------------------------------------------------------------

def image_attack(ctx: Context, name: str, description: str, body: bytes, query: str,
                 ext: str, clients: int = 4, settings: dict | None = None) -> Result:
    """``clients`` attackers asking for ``query`` of ``body`` again and again for a while
    (each request on a fresh connection, at most 40 s each) while normal traffic runs."""
    result = Result(name, description)
    origin = ctx.origin({**NORMAL_FILES, f"/media/attack/source.{ext}": body})
    proxy = ctx.proxy(origin, settings)
    fetch(proxy.port, NORMAL_HIT)
    result.figures["input"] = inputs.describe(body)

    def attack(i):                                # a new variant each time: never a cache hit
        got = fetch(proxy.port, f"/media/attack/source.{ext}?{query}&q={1 + i % 100}",
                    timeout=ctx.scale(35, 45))
        time.sleep(0.05)
        return got

    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal:
        time.sleep(1.0)
        start = time.monotonic()
        answers = repeat_concurrently(attack, clients, ctx.scale(4, 8), 100)
        end = time.monotonic()
        time.sleep(0.5)
    for status, headers, data in answers:
        label, problem = answer_label(status, headers, data)
        result.attack[label] += 1
        if problem and problem not in result.problems:
            result.problems.append(problem)
    result.figures["attack seconds"] = f"{end - start:.1f}"
    judge_normal(result, normal, start, end)
    judge_rss(result, sampler)
    return result


def case_gif_enlarge(ctx: Context, fmt: str = "gif", frames: int = 24) -> Result:
    return image_attack(
        ctx, f"gif-{frames}f-enlarge-{fmt}",
        f"{frames}-frame 400x300 GIF at w=6000&enlarge=1&fmt={fmt}",
        inputs.flat_gif(frames), f"w=6000&enlarge=1&fmt={fmt}", "gif")


def case_gif_lying_screen(ctx: Context) -> Result:
    return image_attack(
        ctx, "gif-lying-screen", "GIF whose screen says 100x100, 2nd frame 8000x6000, w=200",
        inputs.lying_screen_gif(), "w=200&fmt=webp", "gif")


def case_webp_enlarge(ctx: Context, fmt: str = "") -> Result:
    query = "w=5000&enlarge=1" + (f"&fmt={fmt}" if fmt else "")
    return image_attack(ctx, "webp-24f-enlarge" + (f"-{fmt}" if fmt else ""),
                        f"24-frame animated WebP at {query}", inputs.flat_webp(24), query,
                        "webp")


def case_jpeg_rescan(ctx: Context) -> Result:
    repeats = ctx.scale(1000, 5000)
    return image_attack(
        ctx, "jpeg-rescan",
        f"progressive 3000x3000 JPEG, one refinement scan repeated {repeats} times, 4 at once",
        inputs.rescan_jpeg(repeats), "w=200&fmt=jpeg", "jpg")


def _socket(port: int, rcvbuf: int | None = None) -> socket.socket | None:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    try:
        s.connect((HOST, port))
    except OSError:
        s.close()
        return None
    return s


def _status_of(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0].split()
    return line[1].decode(errors="replace") if len(line) > 1 else "garbage"


def hold_sockets(ctx: Context, result: Result, proxy: Proxy, normal: NormalTraffic,
                 request: bytes, count: int, seconds: float, trickle: bytes = b"",
                 rcvbuf: int | None = None) -> tuple[float, float]:
    """Open ``count`` connections that send ``request`` and then, once a second, ``trickle``
    (nothing when empty), reading nothing, for ``seconds``; count how each ended: answered
    (its status), closed without an answer (dropped), refused, or still open at the end."""
    socks = []
    start = time.monotonic()
    for _ in range(count):
        s = _socket(proxy.port, rcvbuf)
        if s is None:
            result.attack["refused"] += 1
            continue
        try:
            s.sendall(request)
        except OSError:
            result.attack["dropped"] += 1
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    ended: dict[socket.socket, str] = {}
    deadline = start + seconds
    while time.monotonic() < deadline:
        for s in socks:
            if s in ended:
                continue
            if trickle:
                try:
                    s.send(trickle)
                except BlockingIOError:
                    pass
                except OSError:
                    ended[s] = "dropped"
                    continue
            if not rcvbuf:                            # slow readers read nothing at all
                try:
                    data = s.recv(4096)
                    ended[s] = _status_of(data) if data else "dropped"
                except BlockingIOError:
                    pass
                except OSError:
                    ended[s] = "dropped"
        time.sleep(1.0)
    end = time.monotonic()
    for s in socks:
        result.attack[ended.get(s, "open at end")] += 1
        s.close()
    return start, end


def case_slow_post(ctx: Context) -> Result:
    count = ctx.scale(200, 560)
    result = Result("slow-post-bodies",
                    f"{count} clients send a POST's headers, then trickle its body 1 B/s")
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin)
    fetch(proxy.port, NORMAL_HIT)
    request = (b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Type: text/plain\r\n"
               b"Content-Length: 100000\r\n\r\n")
    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal:
        time.sleep(1.0)
        start, end = hold_sockets(ctx, result, proxy, normal, request, count,
                                  ctx.scale(8, 20), trickle=b"x")
        fds = max((s[2] for s in sampler.samples), default=0)
    result.figures["peak fds"] = str(fds)
    for label in ("dropped",):
        if result.attack[label]:
            result.problems.append(f"{result.attack[label]} connections dropped unanswered")
    judge_normal(result, normal, start, end)
    judge_rss(result, sampler)
    return result


def case_slow_readers_passthrough(ctx: Context) -> Result:
    count = ctx.scale(20, 50)
    result = Result("slow-readers-passthrough",
                    f"{count} clients download a 64 MB pass-through body and read nothing")
    origin = ctx.origin({**NORMAL_FILES, "/big.bin": os.urandom(64 * MiB)})
    proxy = ctx.proxy(origin)
    fetch(proxy.port, NORMAL_HIT)
    request = b"GET /big.bin HTTP/1.1\r\nHost: shop.test\r\n\r\n"
    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal:
        time.sleep(1.0)
        start, end = hold_sockets(ctx, result, proxy, normal, request, count,
                                  ctx.scale(6, 15), rcvbuf=4096)
    judge_normal(result, normal, start, end)
    judge_rss(result, sampler)
    return result


def case_idle_readers_cached(ctx: Context) -> Result:
    count = ctx.scale(30, 100)
    result = Result("idle-readers-cached",
                    f"{count} clients ask for a ~12 MB cached result and read nothing")
    origin = ctx.origin({**NORMAL_FILES, "/media/attack/noise.jpg": inputs.big_noise_jpeg()})
    proxy = ctx.proxy(origin, {"cache.memory.max_item_bytes": 32 * MiB})
    path = "/media/attack/noise.jpg?w=2000&fmt=png"
    status, _, body = fetch(proxy.port, path, timeout=60)
    result.figures["result bytes"] = str(len(body))
    if status != 200:
        result.problems.append(f"warming the 12 MB result answered {status}")
    fetch(proxy.port, NORMAL_HIT)
    request = f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode()
    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal:
        time.sleep(1.0)
        start, end = hold_sockets(ctx, result, proxy, normal, request, count,
                                  ctx.scale(6, 15), rcvbuf=4096)
    judge_normal(result, normal, start, end)
    judge_rss(result, sampler)
    return result


def case_headers(ctx: Context) -> Result:
    """Two Host headers must be a 400; the Server header must not name a version."""
    result = Result("two-hosts-and-server-header",
                    "a request with two Host headers; the Server header of every answer")
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin)
    with Guard(proxy) as sampler:
        for path in ("/api/ok", NORMAL_HIT):
            data = raw_request(proxy.port, f"GET {path} HTTP/1.1\r\nHost: a.test\r\n"
                               "Host: b.test\r\nConnection: close\r\n\r\n".encode())
            status = _status_of(data) if data else "dropped"
            result.attack[f"two Host: {status}"] += 1
            if status != "400":
                result.problems.append(f"two Host headers on {path} answered {status}, not 400")
        servers = set()
        for path in ("/api/ok", NORMAL_HIT, "/media/missing.jpg?w=10"):
            _, headers, _ = fetch(proxy.port, path)
            servers.add(headers.get("server", ""))
        result.figures["Server"] = ", ".join(sorted(servers))
        if any(any(c.isdigit() for c in s) for s in servers):
            result.problems.append(f"the Server header names a version: {sorted(servers)}")
    judge_rss(result, sampler)
    result.normal = {"requests": 0, "success": 1.0, "p99": 0.0}
    return result


# -- the faults -------------------------------------------------------------------------------

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
    if wrong:
        result.problems.append(f"{wrong} wrong or partial normal answers")
    bad = [o for o in normal.outcomes if o.status in (DROPPED, TIMEOUT, 500)]
    if bad:
        result.problems.append(f"{len(bad)} normal requests dropped, timed out or 500")
    if hits is not None:
        judge_normal(result, hits, down, up)


def case_backend_killed(ctx: Context) -> Result:
    result = Result("backend-killed", "backend SIGKILLed, restarted on the same port")
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin)
    fetch(proxy.port, NORMAL_HIT)
    outage = ctx.scale(4, 8)
    with Guard(proxy) as sampler, NormalTraffic(proxy.port, clients=2) as normal, \
            NormalTraffic(proxy.port, clients=2, mix=("hit",)) as hits, \
            Prober(proxy.port) as prober:
        time.sleep(1.5)
        down = time.monotonic()
        origin.kill()
        time.sleep(outage)
        origin.start()
        up = time.monotonic()
        recovery = prober.first_ok_after(up)
        time.sleep(2.0)
    late = [s for s in prober.seen if down + outage / 2 <= s[0] < up and s[1] != 200]
    fast = percentile([s[3] for s in late], 99)
    result.figures["outage p99 (2nd half)"] = f"{fast * 1000:.0f} ms"
    if late and fast > BREAKER_OPEN_LIMIT:
        result.problems.append(f"answers while the backend is down take {fast * 1000:.0f} ms "
                               f"(p99) > {BREAKER_OPEN_LIMIT * 1000:.0f} ms")
    judge_fault(result, prober, normal, down, up, recovery, hits)
    judge_rss(result, sampler)
    return result


def case_backend_slow(ctx: Context) -> Result:
    result = Result("backend-slow", "backend answers after 5 s for a while, then normally")
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin)
    fetch(proxy.port, NORMAL_HIT)
    with Guard(proxy) as sampler, NormalTraffic(proxy.port, clients=2) as normal, \
            NormalTraffic(proxy.port, clients=2, mix=("hit",)) as hits, \
            Prober(proxy.port) as prober:
        time.sleep(1.5)
        down = time.monotonic()
        origin.set_mode("slow", 5.0)
        time.sleep(ctx.scale(6, 12))
        origin.set_mode("normal")
        up = time.monotonic()
        recovery = prober.first_ok_after(up)
        time.sleep(2.0)
    judge_fault(result, prober, normal, down, up, recovery, hits)
    judge_rss(result, sampler)
    return result


def case_backend_flapping(ctx: Context) -> Result:
    """The origin alternates 502 and 200; sources that saw a 502 must not stay refused (a
    negative-cached 502) once the origin is healthy again."""
    result = Result("backend-flapping", "backend alternates 502 and 200, then heals; "
                    "10 sources asked during the flapping must all be served again")
    sources = {f"/media/flap/{i}.jpg": inputs.normal_jpeg((400, 300), (i * 20, 80, 160))
               for i in range(10)}
    origin = ctx.origin({**NORMAL_FILES, **sources})
    proxy = ctx.proxy(origin)
    fetch(proxy.port, NORMAL_HIT)
    with Guard(proxy) as sampler, NormalTraffic(proxy.port, clients=2) as normal, \
            NormalTraffic(proxy.port, clients=2, mix=("hit",)) as hits, \
            Prober(proxy.port) as prober:
        time.sleep(1.0)
        down = time.monotonic()
        origin.set_mode("flap")
        for path in sources:                       # each source meets the flapping origin
            status, headers, body = fetch(proxy.port, f"{path}?w=100")
            label, problem = answer_label(status, headers, body)
            result.attack[f"flap source: {label}"] += 1
            if problem and problem not in result.problems:
                result.problems.append(problem)
        time.sleep(ctx.scale(4, 10))
        origin.set_mode("normal")
        up = time.monotonic()
        recovery = prober.first_ok_after(up)
        healed, pending = None, set(sources)
        deadline = up + 30
        while pending and time.monotonic() < deadline:
            for path in list(pending):
                if fetch(proxy.port, f"{path}?w=100")[0] == 200:
                    pending.discard(path)
            if pending:
                time.sleep(0.1)
        healed = None if pending else time.monotonic() - up
        time.sleep(1.0)
    result.figures["flapped sources served again"] = (
        f"{healed:.2f} s" if healed is not None else f"{len(pending)} still refused after 30 s")
    if healed is None or healed > RECOVERY_LIMIT:
        result.problems.append("sources refused during the flapping stay refused "
                               "(negative-cached 502)")
    judge_fault(result, prober, normal, down, up, recovery, hits)
    judge_rss(result, sampler)
    return result


def case_redis_killed(ctx: Context) -> Result:
    from tests.redis_server import start_server

    result = Result("redis-killed", "Redis SIGKILLed, restarted on the same port")
    redis = start_server(ctx.tmp / "redis")
    ctx.cleanups.append(redis.stop)
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin, {"cache.redis.url": redis.url, "cache.redis.timeout": 0.5})
    fetch(proxy.port, NORMAL_HIT)
    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal, \
            Prober(proxy.port) as prober:
        time.sleep(1.5)
        down = time.monotonic()
        redis.kill()
        time.sleep(ctx.scale(4, 8))
        redis.restart()
        up = time.monotonic()
        back, deadline = None, up + 30
        while time.monotonic() < deadline:         # Redis in use again: new keys appear
            if redis.command("DBSIZE"):
                back = time.monotonic() - up
                break
            time.sleep(0.05)
        time.sleep(1.5)
    result.figures["Redis written again"] = f"{back:.2f} s" if back is not None else "never"
    if back is None:
        result.problems.append("the proxy never wrote to Redis again")
    judge_fault(result, prober, normal, down, up, "n/a (a cache)")
    judge_normal(result, normal, down, time.monotonic())
    judge_rss(result, sampler)
    return result


def _mount_tmpfs(ctx: Context, size: str) -> Path | None:
    """A small tmpfs of its own (a real filesystem that fills up and can be remounted read-only);
    needs root. ``None`` when it cannot be mounted."""
    target = ctx.tmp / "cachefs"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True)
    if done.returncode:
        return None
    ctx.cleanups.append(lambda: subprocess.run(["umount", "-l", str(target)]))
    return target


def _remount(target: Path, mode: str) -> int:
    """Remount ``target`` ``ro`` or ``rw``; the kernel refuses ``ro`` while a file on it is
    open for writing (EBUSY), so try again every 20 ms, at most 250 times; the attempts."""
    for attempt in range(1, 251):
        if not subprocess.run(["mount", "-o", f"remount,{mode}", str(target)],
                              capture_output=True).returncode:
            return attempt
        time.sleep(0.02)
    raise RuntimeError(f"could not remount {target} {mode}")


def _fill(directory: Path) -> int:
    """Write until the filesystem says ENOSPC; the bytes written."""
    written = 0
    with open(directory / "filler", "wb") as f:
        block = b"\0" * MiB
        for _ in range(10_000):
            try:
                f.write(block)
                f.flush()
                written += len(block)
            except OSError:
                break
    return written


def cache_disk_case(ctx: Context, name: str, fault: str) -> Result:
    result = Result(name, f"the file cache's disk {fault} under load")
    mount = _mount_tmpfs(ctx, "16m")
    if mount is None:
        result.problems.append("not run: mounting a tmpfs needs root")
        return result
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin, {"cache.file.dir": str(mount / "cache"),
                               "cache.memory.enabled": False})
    fetch(proxy.port, NORMAL_HIT)
    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal, \
            Prober(proxy.port) as prober:
        time.sleep(1.5)
        down = time.monotonic()
        if fault == "full":
            result.figures["filler"] = f"{_fill(mount) / MiB:.0f} MiB"
        else:
            result.figures["remount attempts"] = str(_remount(mount, "ro"))
        time.sleep(ctx.scale(4, 8))
        if fault == "full":
            (mount / "filler").unlink()
        else:
            _remount(mount, "rw")
        up = time.monotonic()
        time.sleep(2.0)
    result.figures["entries after"] = str(sum(1 for p in (mount / "cache").rglob("*")
                                              if p.is_file()))
    judge_fault(result, prober, normal, down, up, "n/a (a cache)")
    judge_normal(result, normal, down, time.monotonic())
    judge_rss(result, sampler)
    return result


def case_disk_full(ctx: Context) -> Result:
    return cache_disk_case(ctx, "cache-disk-full", "is full (a 16 MiB tmpfs filled to ENOSPC)")


def case_disk_readonly(ctx: Context) -> Result:
    return cache_disk_case(ctx, "cache-disk-read-only", "is remounted read-only")


def case_sigkill_mid_write(ctx: Context) -> Result:
    """SIGKILL the proxy while it renders and stores big results, several times over the same
    file cache, then ask for every URL again: each answer must be whole and right."""
    rounds = ctx.scale(2, 4)
    result = Result("sigkill-mid-write",
                    f"proxy SIGKILLed {rounds} times while writing ~7 MB results to its file "
                    "cache, then every URL asked again")
    origin = ctx.origin({**NORMAL_FILES, "/media/attack/noise.jpg": inputs.big_noise_jpeg()})
    settings = {"cache.file.dir": str(ctx.tmp / "filecache")}
    widths = list(range(1500, 1500 + ctx.scale(8, 16)))
    rnd = random.Random(12)
    asked = set()
    proxy = None
    for n in range(rounds):
        proxy = ctx.proxy(origin, settings, name=f"proxy{n}")
        killer = threading.Timer(rnd.uniform(1.0, 2.5), proxy.kill)
        killer.start()

        def work(i, proxy=proxy):
            if not proxy.alive():                   # killed: this round is over
                return None
            width = widths[i % len(widths)]
            got = fetch(proxy.port, f"/media/attack/noise.jpg?w={width}&fmt=png", timeout=30)
            return got + (width,)

        answers = repeat_concurrently(work, 4, 3.0, len(widths))
        killer.join()
        for status, headers, body, width in answers:
            asked.add(width)
            result.attack[f"during: {status}"] += 1
            if status == 200 and image_width(body) != width:
                result.problems.append("a wrong or partial answer before the kill")
    proxy = ctx.proxy(origin, settings, name="proxy-final")
    sources = Counter()
    with Guard(proxy) as sampler:
        for width in sorted(asked):
            status, headers, body = fetch(proxy.port, f"/media/attack/noise.jpg?w={width}"
                                          f"&fmt=png", timeout=60)
            sources[headers.get("x-cache", "?")] += 1
            if status != 200 or image_width(body) != width:
                result.problems.append(f"after restart w={width}: {status}, "
                                       f"{len(body)} bytes, not a whole {width} px image")
            result.attack[f"after: {status}"] += 1
    result.figures["after restart X-Cache"] = ", ".join(f"{k} {v}" for k, v in sources.items())
    result.normal = {"requests": 0, "success": 1.0, "p99": 0.0}
    judge_rss(result, sampler)
    return result


def case_overload(ctx: Context) -> Result:
    """4x the transforms the proxy can do, offered at a steady rate: hits unaffected, the excess
    shed with 503 Retry-After, service back once the overload stops."""
    seconds = ctx.scale(10, 60)
    result = Result("overload-4x", f"4x the measured transform capacity for {seconds} s")
    origin = ctx.origin({**NORMAL_FILES, "/media/attack/noise.jpg": inputs.big_noise_jpeg()})
    proxy = ctx.proxy(origin)
    fetch(proxy.port, NORMAL_HIT)
    counter = iter(range(10_000_000))
    lock = threading.Lock()

    def cold(timeout=30):
        with lock:
            width = 100 + next(counter) % 1500
        start = time.monotonic()
        got = fetch(proxy.port, f"/media/attack/noise.jpg?w={width}&fmt=webp", timeout=timeout)
        return got, time.monotonic() - start

    measured = repeat_concurrently(lambda i: cold(), 2, 4.0, 200)
    capacity = sum(1 for (s, _, _), _ in measured if s == 200) / 4.0
    rate = max(4 * capacity, 1.0)
    result.figures["capacity"] = f"{capacity:.1f}/s, offered {rate:.1f}/s"
    in_flight = 512
    answers, pool = [], threading.BoundedSemaphore(in_flight)

    def one():
        try:
            answers.append(cold())
        finally:
            pool.release()

    with Guard(proxy) as sampler, \
            NormalTraffic(proxy.port, clients=2, mix=("hit", "pass")) as normal:
        time.sleep(1.0)
        start = time.monotonic()
        sent = 0
        while time.monotonic() < start + seconds:
            target = start + sent / rate
            time.sleep(max(0.0, target - time.monotonic()))
            if not pool.acquire(timeout=1.0):
                result.attack["client pool full (not sent)"] += 1
                continue
            threading.Thread(target=one, daemon=True).start()
            sent += 1
        end = time.monotonic()
        recovered_after = None                       # a fresh transform served again
        while time.monotonic() < end + 60:
            (status, _, _), latency = cold(timeout=30)
            if status == 200:
                recovered_after = time.monotonic() - end
                break
            time.sleep(0.1)
        drain = time.monotonic() + 40                # wait for the answers in flight
        for _ in range(in_flight):
            if not pool.acquire(timeout=max(0.0, drain - time.monotonic())):
                break
    for (status, headers, body), _ in answers:
        label, problem = answer_label(status, headers, body)
        if status == 503 and "retry-after" not in headers:
            problem = "a 503 without Retry-After"
        result.attack[label] += 1
        if problem and problem not in result.problems:
            result.problems.append(problem)
    shed = sum(v for k, v in result.attack.items() if k.startswith("503"))
    result.figures["shed"] = f"{shed / max(1, len(answers)):.0%}"
    result.figures["recovered"] = (f"{recovered_after:.2f} s after" if recovered_after is not None
                                   else "never")
    if recovered_after is None:
        result.problems.append("no transform succeeded after the overload")
    elif recovered_after > OVERLOAD_RECOVERY_LIMIT:
        result.problems.append(f"a transform took {recovered_after:.1f} s to succeed after "
                               f"the overload (> {OVERLOAD_RECOVERY_LIMIT:g} s)")
    judge_normal(result, normal, start, end, kinds=("hit", "pass"))
    judge_rss(result, sampler)
    return result


def case_soak(ctx: Context, seconds: float | None = None) -> Result:
    seconds = seconds or ctx.scale(30, 600)
    result = Result("soak", f"{seconds / 60:g} min of mixed traffic: RSS growth, fds, p99 drift")
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin, {"cache.memory.max_bytes": 32 * MiB})
    fetch(proxy.port, NORMAL_HIT)
    warm = min(60.0, seconds / 5)
    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal:
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
    after_warm = [s for s in sampler.samples if s[0] >= start + warm]
    if not after_warm:
        result.problems.append("no samples")
        return result
    rss0, fd0 = after_warm[0][1], after_warm[0][2]
    rss1, fd1 = after_warm[-1][1], after_warm[-1][2]
    growth = (rss1 - rss0) / rss0
    window = warm
    first = [o.latency for o in normal.between(start + warm, start + warm + window)]
    last = [o.latency for o in normal.between(end - window, end)]
    p_first, p_last = percentile(first, 99), percentile(last, 99)
    result.figures.update({
        "RSS after warm-up -> end": f"{rss0 / MiB:.0f} -> {rss1 / MiB:.0f} MiB ({growth:+.1%})",
        "fds": f"{fd0} -> {fd1}",
        "p99 first/last window": f"{p_first * 1000:.0f} / {p_last * 1000:.0f} ms",
    })
    if growth >= 0.10:
        result.problems.append(f"RSS grew {growth:.1%} >= 10 %")
    if fd1 > fd0 + 5:
        result.problems.append(f"fds grew {fd0} -> {fd1}")
    if p_last > 2 * p_first + 0.05:
        result.problems.append("p99 drifted: more than twice the first window's")
    judge_normal(result, normal, start, end)
    judge_rss(result, sampler)
    return result


def case_fuzz(ctx: Context) -> Result:
    from .fuzz import run as run_fuzz

    seconds = ctx.scale(15, 60)
    result = Result("fuzz-decode-guard",
                    f"coverage-guided fuzzing of imaging.probe/render for {seconds} s")
    found = run_fuzz(seconds, ctx.tmp / "fuzz")
    result.figures.update(found.figures)
    result.attack.update(found.counts)
    result.problems.extend(found.problems)
    result.normal = {"requests": 0, "success": 1.0, "p99": 0.0}
    return result


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
