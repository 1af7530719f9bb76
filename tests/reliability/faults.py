"""
The fault cases: the backend killed, slow and flapping, Redis killed, the cache disk full and
read-only, the proxy SIGKILLed mid-write; each under steady load, measured by the
:class:`~.common.Prober`. See docs/reliability.md for what each must show.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from . import inputs
from .common import (BREAKER_OPEN_LIMIT, NORMAL_FILES, NORMAL_HIT, RECOVERY_LIMIT, Context,
                     Guard, Prober, Result, answer_label, judge_fault, judge_normal, judge_rss,
                     repeat_concurrently)
from .harness import DROPPED, MiB, NormalTraffic, fetch, image_width, percentile


def case_backend_killed(ctx: Context) -> Result:
    result = Result("backend-killed", "backend SIGKILLed, restarted on the same port")
    origin = ctx.origin(NORMAL_FILES)
    # One process: each worker has a breaker of its own, and though they probe at the same
    # moments (the clock's open_for periods), a worker whose probe failed just before the
    # backend came back refuses until its next period while another already serves, which
    # this case counts as errors after the recovery (docs/reliability.md, "Several workers").
    proxy = ctx.proxy(origin, {"server.workers": 1})
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
        result.problems.append(
            "the sources asked during the flapping are refused "
            + ("for over 30 s" if healed is None else f"for {healed:.1f} s")
            + " after the backend healed (a remembered 502 or an open breaker)")
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


def cache_disk_case(ctx: Context, name: str, fault: str, description: str) -> Result:
    """``fault``: ``"full"`` (filled to ENOSPC) or ``"read-only"`` (remounted ro)."""
    result = Result(name, f"the file cache's disk {description} under load")
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
    return cache_disk_case(ctx, "cache-disk-full", "full",
                           "is full (a 16 MiB tmpfs filled to ENOSPC)")


def case_disk_readonly(ctx: Context) -> Result:
    return cache_disk_case(ctx, "cache-disk-read-only", "read-only", "is remounted read-only")


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
        killed = threading.Event()                # set before the signal: no request after it

        def kill(proxy=proxy, killed=killed):
            killed.set()
            proxy.kill()

        killer = threading.Timer(rnd.uniform(1.0, 2.5), kill)
        killer.start()

        def work(i, proxy=proxy, killed=killed):
            if killed.is_set():                     # killed: this round is over
                return None
            width = widths[i % len(widths)]
            got = fetch(proxy.port, f"/media/attack/noise.jpg?w={width}&fmt=png", timeout=30)
            return got + (width, killed.is_set())

        answers = repeat_concurrently(work, 4, 3.0, len(widths))
        killer.join()
        for status, headers, body, width, at_kill in answers:
            asked.add(width)
            if status == DROPPED and at_kill:
                result.attack["during: dropped by the kill"] += 1
                continue
            label, problem = answer_label(status, headers, body)
            result.attack[f"during: {label}"] += 1
            if problem and problem not in result.problems:
                result.problems.append(f"before the kill: {problem}")
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
