"""
The attack cases: hostile images (enlarged animations, a lying GIF, a JPEG of repeated scans)
and hostile clients (trickled uploads, slow and idle readers, two Host headers), each while
normal traffic runs. See docs/reliability.md for what each must show.
"""

from __future__ import annotations

import os
import socket
import time

from . import inputs
from .common import (ATTACK_ANSWER_LIMIT, NORMAL_FILES, NORMAL_HIT, Context, Guard, Result,
                     answer_label, judge_normal, judge_rss, repeat_concurrently)
from .harness import HOST, MiB, NormalTraffic, Proxy, fetch, raw_request


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
        started = time.monotonic()
        got = fetch(proxy.port, f"/media/attack/source.{ext}?{query}&q={1 + i % 100}",
                    timeout=ctx.scale(35, 45))
        latency = time.monotonic() - started
        time.sleep(0.05)
        return got + (latency,)

    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal:
        time.sleep(1.0)
        start = time.monotonic()
        answers = repeat_concurrently(attack, clients, ctx.scale(4, 8), 100)
        end = time.monotonic()
        time.sleep(0.5)
    for status, headers, data, _ in answers:
        label, problem = answer_label(status, headers, data)
        result.attack[label] += 1
        if problem and problem not in result.problems:
            result.problems.append(problem)
    slowest = max(latency for *_, latency in answers)
    result.figures["slowest attack answer"] = f"{slowest:.1f} s"
    if slowest > ATTACK_ANSWER_LIMIT:
        result.problems.append(f"an attack request took {slowest:.1f} s to answer "
                               f"(> {ATTACK_ANSWER_LIMIT:g} s: its CPU is not bounded)")
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
    repeats = ctx.scale(2000, 5000)
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
